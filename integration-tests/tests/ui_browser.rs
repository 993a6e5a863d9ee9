//! The management web UI in a real browser: Debian's chromium, headless, driven over the
//! Chrome DevTools Protocol (JSON over a websocket) from this test. It logs in through
//! the form, sees a queue that an AMQP client declares appear in the list without a
//! reload, publishes, gets and purges through the queue's page, checks that a phone's
//! width does not scroll the page sideways, and saves screenshots of the overview and
//! of a consumer group's picture to `target/ui-screenshots/`.
//!
//! `scripts/test.sh` installs chromium (`apt-get install -y chromium`) when it is missing.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::http::Http;
use common::*;
use futures_lite::StreamExt;
use integration_tests::{TestServer, unique_name};
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The bound on every wait for the page or the browser.
const WAIT: Duration = Duration::from_secs(10);
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (375, 740);

/// Headless chromium with a fresh profile, in a process group of its own: dropping it
/// (also when the test panics) kills the browser and every process it started, and
/// removes the profile.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    /// Starts chromium; returns it with its DevTools websocket address.
    fn launch() -> (Chromium, String) {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/test.sh, which installs Debian's chromium \
             package (apt-get install -y chromium)"
        );
        let profile = integration_tests::temp_data_dir("ui-chromium");
        std::fs::create_dir_all(&profile).expect("make chromium's profile directory");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                // Without these, chromium's calls home are refused on a closed network.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let mut browser = Chromium { child, profile };
        let stderr = browser.child.stderr.take().expect("chromium's stderr");
        // Chromium names its DevTools address on stderr. The rest is drained, so that it
        // never blocks on a full pipe, and echoed (the harness shows it on a failure).
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.strip_prefix("DevTools listening on ") {
                    Some(url) => {
                        let _ = found.send(url.trim().to_owned());
                    }
                    None => eprintln!("chromium: {line}"),
                }
            }
        });
        let url = address
            .recv_timeout(WAIT)
            .expect("chromium did not give its DevTools address within 10 s");
        (browser, url)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The renderers, GPU and utility processes are in the browser's group.
        let group = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A JavaScript string literal of `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string is JSON")
}

/// One tab of the browser, attached over the DevTools websocket.
struct Page {
    socket: WebSocket<TcpStream>,
    session: Option<String>,
    next_id: u64,
}

impl Page {
    /// Opens a tab in the browser whose DevTools websocket is `devtools`.
    fn open(devtools: &str) -> Page {
        let host = devtools
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws:// DevTools address");
        let stream = TcpStream::connect(host).expect("connect to chromium's DevTools");
        // A browser that stops answering fails the test instead of hanging it.
        stream.set_read_timeout(Some(WAIT)).expect("a read timeout");
        let (socket, _) = tungstenite::client(devtools, stream).expect("the DevTools handshake");
        let mut page = Page {
            socket,
            session: None,
            next_id: 0,
        };
        let target = page.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = page.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        page.session = attached["sessionId"].as_str().map(str::to_owned);
        assert!(page.session.is_some(), "no session: {attached}");
        // Focus and typing work as in a window that has the focus.
        page.call(
            "Emulation.setFocusEmulationEnabled",
            json!({ "enabled": true }),
        );
        page.viewport(DESKTOP);
        page
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium: {e}"));
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression (a promise is awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let reply = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(thrown) = reply.get("exceptionDetails") {
            panic!("{expression}: {thrown}");
        }
        reply["result"]["value"].clone()
    }

    /// Waits (at most [`WAIT`]) until `condition`, a JavaScript expression, is true.
    fn wait_until(&mut self, what: &str, condition: &str) {
        let deadline = Instant::now() + WAIT;
        while self.eval(condition) != Value::Bool(true) {
            if Instant::now() >= deadline {
                let shown = self.eval("document.body.innerText");
                panic!(
                    "not within {WAIT:?}: {what}\nthe page shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks, as a mouse does, the middle of the element `element` (JavaScript) finds.
    fn click(&mut self, element: &str) {
        let at = self.eval(&format!(
            "(() => {{ const el = {element}; if (!el) return null; \
             el.scrollIntoView({{ block: 'center' }}); const r = el.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            panic!("nothing to click: {element}");
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Types `text` into the element `element` (JavaScript) finds, as a keyboard does.
    fn type_into(&mut self, element: &str, text: &str) {
        self.eval(&format!("{element}.focus()"));
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Goes to `hash` within the app.
    fn show(&mut self, hash: &str) {
        self.eval(&format!("location.hash = {}", js(hash)));
    }

    /// Sets the window's size; a narrow one is a phone's.
    fn viewport(&mut self, (width, height): (u32, u32)) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 }),
        );
    }

    /// Saves the whole page, at the desktop's width, as a PNG at `file`.
    fn screenshot(&mut self, file: &Path) {
        let height = self
            .eval("document.documentElement.scrollHeight")
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(DESKTOP.1);
        self.viewport((DESKTOP.0, height.clamp(DESKTOP.1, 2400)));
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        self.viewport(DESKTOP);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot"))
            .expect("a base64 screenshot");
        std::fs::write(file, png).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }

    /// Whether the page is no wider than the window (tables scroll in their own box).
    fn fits_width(&mut self) -> bool {
        self.eval("document.documentElement.scrollWidth <= window.innerWidth") == Value::Bool(true)
    }
}

/// `target/ui-screenshots/`, made if missing.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("make target/ui-screenshots");
    dir
}

/// The broker and the AMQP clients run on this runtime's threads while the test thread
/// drives the browser, which blocks on its websocket.
#[test]
fn the_web_ui_logs_in_lists_publishes_gets_purges_and_draws_groups() {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let server = rt.block_on(TestServer::start());
    let ui = format!(
        "http://{}/",
        server.management_addr().expect("the management API is on")
    );
    let (conn, ch) = rt.block_on(open(&server));

    // Steady traffic, so that the overview's rates have something to show: a message
    // every 20 ms through a queue whose consumer acks it; ended with the runtime.
    let traffic = unique_name("ui-traffic");
    rt.block_on(declare_queue(&ch, &traffic));
    let (pub_ch, sub_ch) = rt.block_on(async { (channel(&conn).await, channel(&conn).await) });
    let mut deliveries = rt.block_on(consume_with(
        &sub_ch,
        &traffic,
        "",
        BasicConsumeOptions::default(),
        lapin::types::FieldTable::default(),
    ));
    let feed = traffic.clone();
    rt.spawn(async move {
        for i in 0..3000 {
            publish(&pub_ch, "", &feed, format!("tick {i}").as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    rt.spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });

    let (_browser, devtools) = Chromium::launch();
    let mut page = Page::open(&devtools);
    page.call("Page.navigate", json!({ "url": ui }));
    page.wait_until(
        "the login form",
        "!!document.getElementById('login') && !document.getElementById('login').hidden",
    );

    // A wrong password is refused, and the form says so.
    page.type_into("document.getElementById('login-user')", "guest");
    page.type_into("document.getElementById('login-password')", "wrong");
    page.click("document.querySelector('#login button[type=submit]')");
    page.wait_until(
        "the login error",
        "document.getElementById('login-error').textContent.includes('Login failed')",
    );
    page.eval("document.getElementById('login-user').value = ''");
    page.type_into("document.getElementById('login-user')", "guest");
    page.type_into("document.getElementById('login-password')", "guest");
    page.click("document.querySelector('#login button[type=submit]')");
    page.wait_until(
        "the overview after logging in",
        "!document.getElementById('app').hidden && !!document.querySelector('.page-overview .stats')",
    );
    assert_eq!(
        page.eval("document.getElementById('who').textContent"),
        json!("guest (administrator)")
    );

    // A queue declared over AMQP, with a name that must be encoded in paths, shows up in
    // the list at a poll, without a reload.
    let queue = unique_name("ui q/#");
    page.show("#/queues");
    page.wait_until(
        "the queues list",
        "!!document.querySelector('.page-queues .pager span')",
    );
    rt.block_on(declare_queue(&ch, &queue));
    let link = format!(
        "[...document.querySelectorAll('.page-queues td a')].find(a => a.textContent === {})",
        js(&queue)
    );
    page.wait_until("the new queue in the list", &format!("!!{link}"));

    // The list sorts by a column's header, and again the other way round.
    let names = "[...document.querySelectorAll('.page-queues td a')].map(a => a.textContent)";
    let by_name = "[...document.querySelectorAll('.page-queues th button.sort')]\
                   .find(b => b.textContent.startsWith('Name'))";
    for (arrow, order) in [("▲", "<="), ("▼", ">=")] {
        page.click(by_name);
        page.wait_until(
            &format!("the list sorted by name {arrow}"),
            &format!(
                "(() => {{ const n = {names}; return {by_name}.textContent.endsWith({}) \
                 && n.length >= 2 && n.every((x, i) => i === 0 || n[i - 1] {order} x); }})()",
                js(arrow)
            ),
        );
    }
    // It filters by name as one types: only the new queue is left.
    page.type_into(
        "document.querySelector('.page-queues input.filter')",
        &queue,
    );
    page.wait_until(
        "the list filtered by name",
        &format!(
            "(() => {{ const n = {names}; return n.length === 1 && n[0] === {}; }})()",
            js(&queue)
        ),
    );
    page.click(&link);
    page.wait_until(
        "the queue's page",
        &format!(
            "location.hash === '#/queue/%2F/' + encodeURIComponent({}) \
             && !!document.querySelector('.page-queue .stats')",
            js(&queue)
        ),
    );

    // Publish through the page: the queue holds the message.
    let payload = "hello from the web UI";
    page.type_into("document.getElementById('publish-payload')", payload);
    page.click("document.querySelector('#publish-form button[type=submit]')");
    page.wait_until(
        "the publish confirmation",
        "document.getElementById('toasts').textContent.includes('routed')",
    );
    rt.block_on(wait_for_count(&ch, &queue, 1));

    // Get it back (requeued): its payload is shown.
    page.click("document.querySelector('#get-form button[type=submit]')");
    page.wait_until(
        "the message got",
        &format!(
            "document.querySelector('#messages .payload')?.textContent === {}",
            js(payload)
        ),
    );
    rt.block_on(wait_for_count(&ch, &queue, 1));

    // At a phone's width the page does not scroll sideways.
    page.viewport(PHONE);
    assert!(page.fits_width(), "the queue page is wider than a phone");
    page.viewport(DESKTOP);

    // Purge: the first click asks, the second purges.
    page.click("document.getElementById('purge')");
    page.wait_until(
        "the purge button to ask",
        "document.getElementById('purge').classList.contains('armed')",
    );
    page.click("document.getElementById('purge')");
    rt.block_on(wait_for_count(&ch, &queue, 0));
    page.wait_until(
        "the purge confirmation",
        "document.getElementById('toasts').textContent.includes('Purged')",
    );

    // A consumer group on a partitioned queue: two members with prefetch 1, messages
    // spread round-robin over four partitions (published through the default exchange).
    let grouped = unique_name("ui-groups");
    rt.block_on(async {
        declare_queue_with(&ch, &grouped, table(&[("x-partitions", int(4))]))
            .await
            .expect("declare a partitioned queue");
        for i in 0..14 {
            publish(&ch, "", &grouped, format!("job {i}").as_bytes()).await;
        }
    });
    let members: Vec<_> = (0..2)
        .map(|_| {
            rt.block_on(async {
                let member = channel(&conn).await;
                prefetch(&member, 1).await;
                let consumer = consume_with(
                    &member,
                    &grouped,
                    "",
                    BasicConsumeOptions::default(),
                    table(&[("x-consumer-group", text("g"))]),
                )
                .await;
                (member, consumer)
            })
        })
        .collect();
    let api = Http::of(&server);
    let groups = format!("/api/queues/%2F/{grouped}/groups");
    let balanced = rt.block_on(integration_tests::wait_for(WAIT, || async {
        let shown = api.get(&groups).await.json();
        shown["groups"][0]["partition_states"]
            .as_array()
            .is_some_and(|ps| {
                ps.len() == 4
                    && ps
                        .iter()
                        .all(|p| p["owners"].as_array().map(Vec::len) == Some(1))
            })
    }));
    assert!(balanced, "{}", rt.block_on(api.get(&groups)).body);
    page.show(&format!("#/groups/%2F/{grouped}"));
    page.wait_until(
        "the group's picture",
        "document.querySelectorAll('svg.group-picture g.cell').length === 4 \
         && document.querySelectorAll('.group .members li').length === 2 \
         && !document.querySelector('svg.group-picture .free, svg.group-picture .draining')",
    );
    let dir = screenshot_dir();
    page.screenshot(&dir.join("consumer-group.png"));

    // Every other page draws what the API lists, at a phone's width without scrolling
    // the page sideways.
    for name in [
        "connections",
        "channels",
        "exchanges",
        "users",
        "vhosts",
        "policies",
        "groups",
    ] {
        page.show(&format!("#/{name}"));
        page.wait_until(
            &format!("the {name} page"),
            &format!(
                "!!document.querySelector('.page-{name} :is(table, .empty, svg.group-picture)')"
            ),
        );
        page.viewport(PHONE);
        assert!(page.fits_width(), "the {name} page is wider than a phone");
        page.viewport(DESKTOP);
    }

    // Definitions: the export counts what it downloaded; an import declares a queue.
    page.show("#/definitions");
    page.click("[...document.querySelectorAll('.page-definitions button')].find(b => b.textContent === 'Download definitions')");
    page.wait_until(
        "the exported definitions' counts",
        "[...document.querySelectorAll('.page-definitions td')].some(td => td.textContent === 'queues')",
    );
    let imported = unique_name("ui-imported");
    let definitions = json!({
        "queues": [{ "name": imported, "vhost": "/", "durable": true, "auto_delete": false, "arguments": {} }]
    });
    page.type_into(
        "document.querySelector('.page-definitions textarea')",
        &definitions.to_string(),
    );
    page.click("[...document.querySelectorAll('.page-definitions button')].find(b => b.textContent === 'Import')");
    page.wait_until(
        "the import confirmation",
        "document.getElementById('toasts').textContent.includes('Imported')",
    );
    assert_eq!(
        rt.block_on(api.get(&format!("/api/queues/%2F/{imported}")))
            .status,
        200
    );

    // A policy saved through the policies page's form is the broker's.
    page.show("#/policies");
    page.wait_until(
        "the policies page",
        "!!document.querySelector('.page-policies table, .page-policies .empty')",
    );
    page.eval("document.querySelector('.page-policies details').open = true");
    page.type_into(
        "document.querySelector('.page-policies input[name=name]')",
        "ui-limit",
    );
    page.type_into(
        "document.querySelector('.page-policies input[name=pattern]')",
        "^ui-",
    );
    page.type_into(
        "document.querySelector('.page-policies textarea')",
        r#"{"max-length": 100}"#,
    );
    page.click("document.querySelector('.page-policies button[type=submit]')");
    page.wait_until(
        "the saved policy in the list",
        "[...document.querySelectorAll('.page-policies td')].some(td => td.textContent === 'ui-limit')",
    );
    let policy = rt.block_on(api.get("/api/policies/%2F/ui-limit")).json();
    assert_eq!(
        policy["definition"],
        json!({ "max-length": 100 }),
        "{policy}"
    );
    // And an operator policy, through the second form on the page.
    let second = |what: &str| format!("document.querySelectorAll('.page-policies {what}')[1]");
    page.eval(&format!("{}.open = true", second("details")));
    page.type_into(&second("input[name=name]"), "ui-cap");
    page.type_into(&second("input[name=pattern]"), "^ui-");
    page.type_into(&second("textarea"), r#"{"max-length": 50}"#);
    page.click(&second("button[type=submit]"));
    page.wait_until(
        "the saved operator policy in the list",
        "[...document.querySelectorAll('.page-policies td')].some(td => td.textContent === 'ui-cap')",
    );
    let cap = rt
        .block_on(api.get("/api/operator-policies/%2F/ui-cap"))
        .json();
    assert_eq!(
        (&cap["definition"], &cap["apply-to"]),
        (&json!({ "max-length": 50 }), &json!("queues")),
        "{cap}"
    );

    // A hash naming no page, or one that does not decode, says so.
    for hash in ["#/constructor", "#/%E0%A4%A"] {
        page.show(hash);
        page.wait_until(
            &format!("no such page at {hash}"),
            "document.querySelector('main h1')?.textContent === 'No such page'",
        );
    }

    // Nothing the UI did was refused.
    assert_eq!(
        page.eval("document.querySelectorAll('#toasts .error').length"),
        json!(0),
        "{}",
        page.eval("document.getElementById('toasts').textContent")
    );

    // The overview, once its charts have a few polls behind them (without the toasts,
    // for the picture).
    page.eval("document.querySelectorAll('#toasts > div').forEach(t => t.remove())");
    page.show("#/overview");
    page.wait_until(
        "the overview's charts with three polls",
        "[...document.querySelectorAll('.page-overview polyline')] \
         .every(l => l.points.length >= 3) \
         && document.querySelectorAll('.page-overview polyline').length === 6",
    );
    page.viewport(PHONE);
    assert!(page.fits_width(), "the overview is wider than a phone");
    page.viewport(DESKTOP);
    page.screenshot(&dir.join("overview.png"));

    drop(members);
}
