//! The management HTTP API (issue 16): RabbitMQ's paths, JSON shapes, status codes and
//! error bodies (docs/management-rabbitmq-facts.md), Basic authentication with the
//! users' tags, and changes made over HTTP acting on the broker as AMQP clients see it.
//!
//! Against RabbitMQ's own API: `WARREN_TEST_EXTERNAL_URI=amqp://guest:guest@127.0.0.1:5673/%2f
//! WARREN_TEST_EXTERNAL_HTTP=http://127.0.0.1:15673 cargo test -p integration-tests
//! --test management` (the lab node started with `PLUGINS=rabbitmq_management`).

mod common;

use common::http::Http;
use common::*;
use integration_tests::{TestServer, unique_name};
use serde_json::{Value, json};

/// The vhost name as a path segment.
fn enc(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_and_tags_decide_who_may_use_the_api() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let none = api.call("GET", "/api/whoami", None, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.challenge.as_deref(),
        Some("Basic realm=\"RabbitMQ Management\"")
    );
    let bad = api
        .call("GET", "/api/whoami", Some(("guest", "wrong")), None)
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.json(),
        json!({"error": "not_authorized", "reason": "Login failed"})
    );
    let me = api.get("/api/whoami").await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["name"], "guest");
    assert_eq!(me.json()["tags"], json!(["administrator"]));

    // A user without a management tag may not use the API; a `management` user sees
    // its own vhosts but may not administer.
    let (plain, mgmt) = (unique_name("plain"), unique_name("mgmt"));
    for (user, tags) in [(&plain, ""), (&mgmt, "management")] {
        let made = api
            .put(
                &format!("/api/users/{user}"),
                json!({ "password": "pw", "tags": tags }),
            )
            .await;
        assert_eq!(made.status, 201, "{made:?}");
    }
    let refused = api
        .call("GET", "/api/whoami", Some((&plain, "pw")), None)
        .await;
    assert_eq!(refused.status, 401);
    // RabbitMQ spells this one the British way.
    assert_eq!(
        refused.json(),
        json!({"error": "not_authorised", "reason": "Not management user"})
    );
    let mine = api
        .call("GET", "/api/vhosts", Some((&mgmt, "pw")), None)
        .await;
    assert_eq!(mine.status, 200);
    assert_eq!(mine.json(), json!([]), "no permissions, no vhosts");
    let users = api
        .call("GET", "/api/users", Some((&mgmt, "pw")), None)
        .await;
    assert_eq!(users.status, 401);
    for user in [&plain, &mgmt] {
        assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_vhosts_and_permissions_made_over_http_let_amqp_clients_in() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let (user, vhost) = (unique_name("api-user"), unique_name("api vhost/x"));
    let path = format!("/api/vhosts/{}", enc(&vhost));
    assert_eq!(
        api.put(&path, json!({ "description": "made over HTTP" }))
            .await
            .status,
        201
    );
    let shown = api.get(&path).await.json();
    assert_eq!(shown["name"], vhost.as_str());
    assert_eq!(shown["description"], "made over HTTP");
    // A PUT again replaces: the description it leaves out is cleared.
    assert_eq!(
        api.put(&path, json!({})).await.status,
        204,
        "again: changed"
    );
    assert_eq!(api.get(&path).await.json()["description"], "");
    assert_eq!(
        api.put(
            &format!("/api/users/{user}"),
            json!({ "password": "s3cret", "tags": ["monitoring"] })
        )
        .await
        .status,
        201
    );
    let permission = format!("/api/permissions/{}/{user}", enc(&vhost));
    assert_eq!(
        api.put(
            &permission,
            json!({ "configure": ".*", "write": ".*", "read": ".*" })
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.get(&permission).await.json(),
        json!({ "user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*" })
    );
    let uri = uri_with(&server, &user, "s3cret", &enc(&vhost), "");
    let conn = connect_uri(&uri).await.expect("the API's user logs in");
    let ch = channel(&conn).await;
    declare_queue(&ch, "q").await;
    drop(conn);
    // Deleting the vhost over HTTP takes its queue; the user stays.
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404);
    assert_eq!(
        api.get(&path).await.json(),
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    assert_eq!(api.get(&format!("/api/users/{user}")).await.status, 200);
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_put_over_http_applies_to_a_queue_at_once() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let (name, queue) = (unique_name("cap"), unique_name("capped"));
    let path = format!("/api/policies/%2F/{name}");
    let put = api
        .put(
            &path,
            json!({ "pattern": format!("^{queue}$"), "definition": { "max-length": 1 },
                    "apply-to": "queues", "priority": 3 }),
        )
        .await;
    assert_eq!(put.status, 201, "{put:?}");
    let shown = api.get(&path).await.json();
    assert_eq!(shown["definition"], json!({ "max-length": 1 }));
    assert_eq!(shown["priority"], 3);
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    declare_queue(&ch, &queue).await;
    for _ in 0..3 {
        publish(&ch, "", &queue, b"m").await;
    }
    wait_for_count(&ch, &queue, 1).await;
    let invalid = api
        .put(
            &path,
            json!({ "pattern": ".*", "definition": { "max-length": "x" } }),
        )
        .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["error"], "bad_request");
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_answer_as_rabbitmqs() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    for path in [
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
        "/api/health/checks/virtual-hosts",
        "/api/aliveness-test/%2F",
    ] {
        let answer = api.get(path).await;
        assert_eq!(
            (answer.status, answer.json()),
            (200, json!({"status": "ok"})),
            "{path}"
        );
    }
    let quorum = api.get("/api/health/checks/node-is-quorum-critical").await;
    assert_eq!(
        quorum.json(),
        json!({"status": "ok", "reason": "single node cluster"})
    );
    let port = server.addr().port();
    let listening = api
        .get(&format!("/api/health/checks/port-listener/{port}"))
        .await;
    assert_eq!(listening.json(), json!({"status": "ok", "port": port}));
    let missing = api.get("/api/health/checks/port-listener/1").await;
    assert_eq!(missing.status, 503);
    let body = missing.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["reason"], "No active listener");
    assert_eq!(body["missing"], 1);
    assert!(
        body["ports"]
            .as_array()
            .is_some_and(|p| p.contains(&json!(port)))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_page_sort_and_filter_as_rabbitmqs() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let prefix = unique_name("pv");
    for i in 0..3 {
        let path = format!("/api/vhosts/{prefix}-{i}");
        assert_eq!(api.put(&path, json!({})).await.status, 201);
    }
    let page = api
        .get(&format!(
            "/api/vhosts?page=2&page_size=1&name={prefix}&sort=name&sort_reverse=true"
        ))
        .await
        .json();
    assert_eq!(page["filtered_count"], 3);
    assert_eq!(page["page_count"], 3);
    assert_eq!(page["items"][0]["name"], format!("{prefix}-1"));
    let columns = api
        .get(&format!("/api/vhosts?page=1&name={prefix}-0&columns=name"))
        .await
        .json();
    assert_eq!(columns["items"], json!([{ "name": format!("{prefix}-0") }]));
    // Unpaged, `name` filters nothing (as RabbitMQ).
    let unpaged = api
        .get(&format!("/api/vhosts?name={prefix}-0&columns=name"))
        .await
        .json();
    assert!(
        unpaged.as_array().is_some_and(|all| all.len() >= 3),
        "{unpaged}"
    );
    let past = api.get("/api/vhosts?page=99").await;
    assert_eq!(past.status, 400);
    for i in 0..3 {
        assert_eq!(
            api.delete(&format!("/api/vhosts/{prefix}-{i}"))
                .await
                .status,
            204
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_go_out_and_come_back_over_http() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let user = unique_name("defs-user");
    assert_eq!(
        api.put(
            &format!("/api/users/{user}"),
            json!({ "password": "pw", "tags": "management" })
        )
        .await
        .status,
        201
    );
    let exported = api.get("/api/definitions").await.json();
    let users = exported["users"].as_array().cloned().unwrap_or_default();
    assert!(users.iter().any(|u| u["name"] == user.as_str()));
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
    let imported = api
        .call(
            "POST",
            "/api/definitions",
            Some(("guest", "guest")),
            Some(exported),
        )
        .await;
    assert!(matches!(imported.status, 201 | 204), "{imported:?}");
    let back = api.get(&format!("/api/users/{user}")).await;
    assert_eq!(back.status, 200, "the import brought the user back");
    let _: Value = back.json();
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
}
