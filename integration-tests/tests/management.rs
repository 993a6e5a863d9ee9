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
    // RabbitMQ HTML-escapes a policy's validation text.
    assert_eq!(
        invalid.json(),
        json!({ "error": "bad_request",
                "reason": "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n" })
    );
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404);
}

/// An operator policy caps a queue's limits below what its own policy asks for (the
/// lower value wins where both set a key), is shown on the queue and exported as a
/// runtime parameter, holds only limits, is an administrator's, and lets go when cleared.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_policy_caps_what_a_policy_asks_for() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let queue = unique_name("capped");
    let (policy, cap) = (unique_name("userp"), unique_name("cap"));
    let policy_path = format!("/api/policies/%2F/{policy}");
    let cap_path = format!("/api/operator-policies/%2F/{cap}");
    let set = api
        .put(
            &policy_path,
            json!({ "pattern": format!("^{queue}$"), "apply-to": "queues",
                    "definition": { "max-length": 10, "expires": 600000, "message-ttl": 500000 } }),
        )
        .await;
    assert_eq!(set.status, 201, "{set:?}");
    let cap_def = json!({ "pattern": format!("^{queue}$"), "apply-to": "queues", "priority": 1,
                          "definition": { "max-length": 5, "message-ttl": 1000000 } });
    let capped = api.put(&cap_path, cap_def.clone()).await;
    assert_eq!(capped.status, 201, "{capped:?}");
    assert_eq!(api.put(&cap_path, cap_def).await.status, 204);
    let shown = json!({
        "vhost": "/", "name": cap, "pattern": format!("^{queue}$"), "apply-to": "queues",
        "definition": { "max-length": 5, "message-ttl": 1000000 }, "priority": 1
    });
    assert_eq!(api.get(&cap_path).await.json(), shown);
    let listed = api.get("/api/operator-policies").await.json();
    assert!(
        listed.as_array().is_some_and(|all| all.contains(&shown)),
        "{listed}"
    );
    let in_vhost = api.get("/api/operator-policies/%2F").await.json();
    assert!(
        in_vhost.as_array().is_some_and(|all| all.contains(&shown)),
        "{in_vhost}"
    );
    // Kept apart from policies.
    let policies = api.get("/api/policies/%2F").await.json();
    assert!(
        policies
            .as_array()
            .is_some_and(|all| all.iter().all(|p| p["name"] != cap.as_str())),
        "{policies}"
    );

    let conn = server.connect().await;
    let ch = channel(&conn).await;
    declare_queue(&ch, &queue).await;
    for _ in 0..8 {
        publish(&ch, "", &queue, b"m").await;
    }
    wait_for_count(&ch, &queue, 5).await;
    // RabbitMQ fills a queue's policy fields from its stats, every few seconds.
    let queue_path = format!("/api/queues/%2F/{queue}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let fields = loop {
        let q = api.get(&queue_path).await.json();
        if q["operator_policy"].is_string() || std::time::Instant::now() > deadline {
            break json!({
                "policy": q["policy"],
                "operator_policy": q["operator_policy"],
                "effective_policy_definition": q["effective_policy_definition"],
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        fields,
        json!({
            "policy": policy, "operator_policy": cap,
            "effective_policy_definition": { "max-length": 5, "expires": 600000, "message-ttl": 500000 },
        })
    );

    let export = api.get("/api/definitions").await.json();
    let parameter = json!({
        "vhost": "/", "component": "operator_policy", "name": cap,
        "value": { "pattern": format!("^{queue}$"), "apply-to": "queues", "priority": 1,
                   "definition": { "max-length": 5, "message-ttl": 1000000 } }
    });
    assert!(
        export["parameters"]
            .as_array()
            .is_some_and(|all| all.contains(&parameter)),
        "{}",
        export["parameters"]
    );
    // And listed among the runtime parameters.
    assert_eq!(
        api.get(&format!("/api/parameters/operator_policy/%2F/{cap}"))
            .await
            .json(),
        parameter
    );
    let parameters = api.get("/api/parameters").await.json();
    assert!(
        parameters
            .as_array()
            .is_some_and(|all| all.contains(&parameter)),
        "{parameters}"
    );
    let nowhere = api
        .put(
            &format!("/api/operator-policies/no-such-vhost/{cap}"),
            json!({ "pattern": "x", "definition": { "max-length": 1 } }),
        )
        .await;
    assert_eq!(nowhere.status, 404, "{nowhere:?}");
    assert_eq!(nowhere.json()["reason"], "vhost_not_found");

    // Only limits, refused in words RabbitMQ does not HTML-escape here.
    let bad = api
        .put(
            &format!("/api/operator-policies/%2F/{cap}-bad"),
            json!({ "pattern": "x", "definition": { "alternate-exchange": "x" } }),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["reason"],
        "Validation failed\n\n[{<<\"alternate-exchange\">>,<<\"x\">>}] are not recognised policy settings\n"
    );
    // An administrator's: a policymaker may set policies, not operator policies.
    let maker = unique_name("maker");
    api.make_user(&maker, "policymaker").await;
    api.grant_all("%2F", &maker).await;
    let refused = api
        .call(
            "PUT",
            &format!("/api/operator-policies/%2F/{cap}-maker"),
            Some((&maker, "pw")),
            Some(json!({ "pattern": "x", "definition": { "max-length": 1 } })),
        )
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(refused.json()["reason"], "Not administrator user");
    assert_eq!(api.delete(&format!("/api/users/{maker}")).await.status, 204);

    // Cleared, the queue's own policy governs again.
    assert_eq!(api.delete(&cap_path).await.status, 204);
    assert_eq!(api.get(&cap_path).await.status, 404);
    assert_eq!(api.delete(&cap_path).await.status, 404);
    for _ in 0..8 {
        publish(&ch, "", &queue, b"m").await;
    }
    wait_for_count(&ch, &queue, 10).await;
    assert_eq!(api.delete(&policy_path).await.status, 204);
    assert_eq!(
        api.delete(&format!("/api/queues/%2F/{queue}")).await.status,
        204
    );
}

/// Global parameters hold any JSON under a name: set, replaced, read, listed, exported
/// and cleared as RabbitMQ has them, by a policymaker.
#[tokio::test(flavor = "multi_thread")]
async fn global_parameters_hold_any_json_by_name() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let name = unique_name("gp");
    let path = format!("/api/global-parameters/{name}");
    let value = json!({ "a": [1, "x", null], "b": { "c": true } });
    let made = api.put(&path, json!({ "value": value })).await;
    assert_eq!(made.status, 201, "{made:?}");
    let replaced = api.put(&path, json!({ "value": "s" })).await;
    assert_eq!(replaced.status, 204, "{replaced:?}");
    assert_eq!(
        api.get(&path).await.json(),
        json!({ "value": "s", "name": name })
    );
    let missing = api.put(&path, json!({})).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["reason"], "[{key_missing,value}]");
    let listed = api.get("/api/global-parameters").await.json();
    assert!(
        listed
            .as_array()
            .is_some_and(|all| all.contains(&json!({ "name": name, "value": "s" }))),
        "{listed}"
    );
    let export = api.get("/api/definitions").await.json();
    assert!(
        export["global_parameters"]
            .as_array()
            .is_some_and(|all| all.contains(&json!({ "name": name, "value": "s" }))),
        "{}",
        export["global_parameters"]
    );
    // A management user may not see them.
    let user = unique_name("mgmt");
    api.make_user(&user, "management").await;
    let refused = api
        .call("GET", "/api/global-parameters", Some((&user, "pw")), None)
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);

    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.delete(&path).await.status, 404);
    assert_eq!(api.get(&path).await.status, 404);
    // A definitions import sets them.
    let imported = api
        .call(
            "POST",
            "/api/definitions",
            Some(("guest", "guest")),
            Some(json!({ "global_parameters": [{ "name": name, "value": 7 }] })),
        )
        .await;
    assert!(
        imported.status == 204 || imported.status == 201,
        "{imported:?}"
    );
    assert_eq!(
        api.get(&path).await.json(),
        json!({ "value": 7, "name": name })
    );
    assert_eq!(api.delete(&path).await.status, 204);
}

/// A 3.x export whose policies mirror queues (`ha-mode`, the most common 3.x policy)
/// imports unchanged: a single node mirrors nothing, and the policies' other keys apply;
/// a bad mirroring value is refused in 3.x's words.
#[tokio::test(flavor = "multi_thread")]
async fn a_3x_export_with_mirroring_policies_imports() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let (policy, queue) = (unique_name("ha-all"), unique_name("mirrored"));
    let file = json!({ "policies": [{
        "vhost": "/", "name": policy, "pattern": format!("^{queue}$"), "apply-to": "queues",
        "priority": 0,
        "definition": { "ha-mode": "all", "ha-sync-mode": "automatic", "max-length": 2 }
    }] });
    let imported = api
        .call(
            "POST",
            "/api/definitions",
            Some(("guest", "guest")),
            Some(file),
        )
        .await;
    assert!(
        imported.status == 204 || imported.status == 201,
        "{imported:?}"
    );
    let path = format!("/api/policies/%2F/{policy}");
    assert_eq!(
        api.get(&path).await.json()["definition"],
        json!({ "ha-mode": "all", "ha-sync-mode": "automatic", "max-length": 2 })
    );
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    declare_queue(&ch, &queue).await;
    for _ in 0..4 {
        publish(&ch, "", &queue, b"m").await;
    }
    wait_for_count(&ch, &queue, 2).await;
    let bad = api
        .put(
            &path,
            json!({ "pattern": "x", "definition": { "ha-mode": "exactly", "ha-params": "2" } }),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["reason"],
        "Validation failed\n\nha-mode=\"exactly\" takes an integer, &lt;&lt;\"2\"&gt;&gt; given\n"
    );
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(
        api.delete(&format!("/api/queues/%2F/{queue}")).await.status,
        204
    );
}

/// A limit that is not a number, of an unknown name, or for a vhost or user that does
/// not exist is refused with RabbitMQ's status and words, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_limit_is_refused_in_rabbitmqs_words() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let vhost = unique_name("badlimits");
    let v = enc(&vhost);
    assert_eq!(
        api.put(&format!("/api/vhosts/{v}"), json!({})).await.status,
        201
    );
    let user = unique_name("limited");
    api.make_user(&user, "").await;
    let refusals = [
        (
            format!("/api/vhost-limits/{v}/max-queues"),
            json!({}),
            400,
            json!("[{key_missing,value}]"),
        ),
        (
            format!("/api/vhost-limits/{v}/max-queues"),
            json!({ "value": "x" }),
            400,
            json!("Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"),
        ),
        (
            format!("/api/vhost-limits/{v}/max-foo"),
            json!({ "value": 1 }),
            400,
            json!("Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,1}] in limits\n"),
        ),
        (
            format!("/api/vhost-limits/{v}/max-connections"),
            json!({ "value": 2.5 }),
            400,
            json!("Validation failed\n\nmax-connections should be a number, actually was 2.5\n"),
        ),
        (
            "/api/vhost-limits/no-such-vhost/max-queues".to_owned(),
            json!({ "value": 1 }),
            404,
            json!("vhost_not_found"),
        ),
        (
            // The vhost is looked for before the body is read.
            "/api/vhost-limits/no-such-vhost/max-foo".to_owned(),
            json!({}),
            404,
            json!("vhost_not_found"),
        ),
        (
            format!("/api/user-limits/{user}/max-channels"),
            json!({ "value": "a" }),
            400,
            json!("max-channels should be a number, actually was <<\"a\">>"),
        ),
        (
            format!("/api/user-limits/{user}/max-foo"),
            json!({ "value": 20 }),
            400,
            json!("Unrecognised terms [{<<\"max-foo\">>,20}] in user-limits"),
        ),
        (
            "/api/user-limits/no-such-user/max-channels".to_owned(),
            json!({ "value": 1 }),
            400,
            json!(["no_such_user", "no-such-user"]),
        ),
        (
            format!("/api/parameters/vhost-limits/{v}/limits"),
            json!({ "value": { "max-queues": 1, "max-bar": true } }),
            400,
            // As a runtime parameter's, HTML-escaped.
            json!(
                "Validation failed\n\nUnrecognised terms [{&lt;&lt;\"max-bar\"&gt;&gt;,true}] in limits\n"
            ),
        ),
    ];
    for (path, body, status, reason) in refusals {
        let refused = api.put(&path, body.clone()).await;
        assert_eq!(refused.status, status, "PUT {path} {body}: {refused:?}");
        assert_eq!(refused.json()["reason"], reason, "PUT {path} {body}");
    }
    // A definitions import names the entry it refuses.
    let imports = [
        (
            json!({ "policies": [{ "vhost": vhost, "name": "bad", "pattern": "x",
                                   "definition": { "max-length": "x" } }] }),
            format!(
                "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n ({vhost}/bad)"
            ),
        ),
        (
            json!({ "parameters": [{ "vhost": vhost, "component": "vhost-limits", "name": "limits",
                                     "value": { "max-foo": 1 } }] }),
            format!(
                "Validation failed\n\nUnrecognised terms [{{&lt;&lt;\"max-foo\"&gt;&gt;,1}}] in limits\n ({vhost}/vhost-limits/limits)"
            ),
        ),
    ];
    for (file, reason) in imports {
        let refused = api
            .call(
                "POST",
                "/api/definitions",
                Some(("guest", "guest")),
                Some(file.clone()),
            )
            .await;
        assert_eq!(refused.status, 400, "{file}: {refused:?}");
        assert_eq!(refused.json()["reason"], reason, "{file}");
    }
    assert_eq!(
        api.get(&format!("/api/vhost-limits/{v}")).await.json(),
        json!([])
    );
    assert_eq!(
        api.get(&format!("/api/user-limits/{user}")).await.json(),
        json!([])
    );
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
    assert_eq!(api.delete(&format!("/api/vhosts/{v}")).await.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn vhost_limits_are_runtime_parameters_of_the_vhost_limits_component() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let vhost = unique_name("limited");
    let v = enc(&vhost);
    assert_eq!(
        api.put(&format!("/api/vhosts/{v}"), json!({})).await.status,
        201
    );
    let set = api
        .put(
            &format!("/api/vhost-limits/{v}/max-queues"),
            json!({ "value": 10 }),
        )
        .await;
    assert_eq!(set.status, 204, "{set:?}");
    assert_eq!(
        api.get(&format!("/api/vhost-limits/{v}")).await.json(),
        json!([{ "vhost": vhost, "value": { "max-queues": 10 } }])
    );
    let as_parameter = json!({
        "value": { "max-queues": 10 }, "vhost": vhost,
        "component": "vhost-limits", "name": "limits"
    });
    assert_eq!(
        api.get(&format!("/api/parameters/vhost-limits/{v}"))
            .await
            .json(),
        json!([as_parameter])
    );
    assert_eq!(
        api.get(&format!("/api/parameters/vhost-limits/{v}/limits"))
            .await
            .json(),
        as_parameter
    );
    let all = api.get("/api/parameters").await.json();
    assert!(
        all.as_array().is_some_and(|ps| ps.contains(&as_parameter)),
        "{all}"
    );
    assert_eq!(api.get("/api/parameters/nosuch").await.json(), json!([]));

    // Setting the parameter replaces the vhost's limits; an unknown component is refused.
    let path = format!("/api/parameters/vhost-limits/{v}/limits");
    let replaced = api
        .put(&path, json!({ "value": { "max-connections": 5 } }))
        .await;
    assert_eq!(replaced.status, 204, "{replaced:?}");
    assert_eq!(
        api.get(&format!("/api/vhost-limits/{v}")).await.json(),
        json!([{ "vhost": vhost, "value": { "max-connections": 5 } }])
    );
    let unknown = api
        .put(
            &format!("/api/parameters/nosuch/{v}/x"),
            json!({ "value": {} }),
        )
        .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(
        unknown.json(),
        json!({ "error": "bad_request", "reason": "Validation failed\n\ncomponent nosuch not found\n" })
    );
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404);
    assert_eq!(
        api.get(&format!("/api/vhost-limits/{v}")).await.json(),
        json!([])
    );
    assert_eq!(
        api.get("/api/parameters/vhost-limits/no-such-vhost")
            .await
            .status,
        404
    );

    // Vhost limits are an administrator's: a policymaker of the vhost may not set them
    // as a parameter either (Warren's rule, as for /api/vhost-limits).
    if server.is_warren() {
        let maker = unique_name("maker");
        api.make_user(&maker, "policymaker").await;
        api.grant_all(&v, &maker).await;
        let refused = api
            .call(
                "PUT",
                &path,
                Some((&maker, "pw")),
                Some(json!({ "value": { "max-queues": 1 } })),
            )
            .await;
        assert_eq!(refused.status, 401, "{refused:?}");
        assert_eq!(api.delete(&format!("/api/users/{maker}")).await.status, 204);
    }

    // Parameters are for policymakers: a `management` user may not list them.
    let user = unique_name("mgmt");
    api.make_user(&user, "management").await;
    let refused = api
        .call("GET", "/api/parameters", Some((&user, "pw")), None)
        .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
    assert_eq!(api.delete(&format!("/api/vhosts/{v}")).await.status, 204);
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
async fn queue_pages_sort_by_depth_and_counters_as_by_name() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let vhost = unique_name("qsort");
    let v = enc(&vhost);
    assert_eq!(
        api.put(&format!("/api/vhosts/{v}"), json!({})).await.status,
        201
    );
    let granted = api
        .put(
            &format!("/api/permissions/{v}/guest"),
            json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await;
    assert!([201, 204].contains(&granted.status), "{granted:?}");
    // Named so that their names' order is not their depths' order.
    for (name, depth) in [("q-b", 1), ("q-a", 3), ("q-c", 2)] {
        let made = api
            .put(
                &format!("/api/queues/{v}/{name}"),
                json!({ "durable": false }),
            )
            .await;
        assert_eq!(made.status, 201, "{made:?}");
        for _ in 0..depth {
            let published = api
                .call(
                    "POST",
                    &format!("/api/exchanges/{v}/amq.default/publish"),
                    Some(("guest", "guest")),
                    Some(
                        json!({ "properties": {}, "routing_key": name, "payload": "m",
                                 "payload_encoding": "string" }),
                    ),
                )
                .await;
            assert_eq!(published.json(), json!({ "routed": true }));
        }
    }
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|q| q["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let sorted = |key: &str, reverse: bool| {
        let path = format!(
            "/api/queues/{v}?page=1&page_size=2&sort={key}&sort_reverse={reverse}&columns=name"
        );
        let api = &api;
        async move { api.get(&path).await.json() }
    };
    // The counts come with the next sample (RabbitMQ's: within 5 s).
    let counted = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        names(&sorted("messages", true).await) == ["q-a", "q-c"]
            && names(&sorted("message_stats.publish", false).await) == ["q-b", "q-c"]
    })
    .await;
    assert!(
        counted,
        "{} {}",
        sorted("messages", true).await,
        sorted("message_stats.publish", false).await
    );
    let by_name = sorted("name", false).await;
    assert_eq!(names(&by_name), ["q-a", "q-b"]);
    assert_eq!(by_name["filtered_count"], 3);
    assert_eq!(by_name["items"][0], json!({ "name": "q-a" }));
    assert_eq!(api.delete(&format!("/api/vhosts/{v}")).await.status, 204);
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

#[tokio::test(flavor = "multi_thread")]
async fn queues_and_exchanges_are_declared_listed_and_deleted_over_http() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let (x, q) = (unique_name("api-x"), unique_name("api-q"));
    // As rabbitmqadmin sends them: booleans as strings, extra keys.
    let exchange = json!({ "type": "topic", "durable": "true", "auto_delete": "false",
                           "internal": "false", "arguments": {}, "name": x, "vhost": "/" });
    let path = format!("/api/exchanges/%2F/{x}");
    assert_eq!(api.put(&path, exchange.clone()).await.status, 201);
    assert_eq!(api.put(&path, exchange).await.status, 204);
    let shown = api.get(&path).await.json();
    assert_eq!(
        (shown["type"].clone(), shown["durable"].clone()),
        (json!("topic"), json!(true))
    );
    let other = api
        .put(&path, json!({ "type": "fanout", "durable": true }))
        .await;
    assert_eq!(other.status, 400);
    assert_eq!(
        other.json()["reason"],
        format!(
            "inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'topic'"
        )
    );
    let queue = format!("/api/queues/%2F/{q}");
    assert_eq!(
        api.put(
            &queue,
            json!({ "durable": "false", "arguments": { "x-max-length": 3 } })
        )
        .await
        .status,
        201
    );
    let shown = api.get(&queue).await.json();
    assert_eq!(shown["durable"], false, "PUT's default is not durable");
    assert_eq!(shown["arguments"], json!({ "x-max-length": 3 }));
    assert_eq!(shown["type"], "classic");
    let bad = api
        .put(&queue, json!({ "arguments": { "x-max-length": 5 } }))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_request");
    for (body, reason) in [
        (json!({ "durable": "yes" }), json!(["not_boolean", "yes"])),
        (
            json!({ "arguments": { "x-max-length": "x" } }),
            json!(format!(
                "invalid arg 'x-max-length' for queue '{q}-2' in vhost '/': \"expected integer, got longstr\""
            )),
        ),
    ] {
        let refused = api.put(&format!("{queue}-2"), body).await;
        assert_eq!(refused.status, 400);
        assert_eq!(refused.json()["reason"], reason);
    }
    // Only the columns asked for; RabbitMQ leaves `messages` out until its first
    // statistics sample.
    let listed = api.get("/api/queues?columns=name,messages").await.json();
    let item = listed
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == q.as_str()).cloned())
        .unwrap_or_else(|| panic!("{q} not listed: {listed}"));
    assert!(
        item["messages"] == 0 || item.get("messages").is_none(),
        "{item}"
    );
    assert!(item.as_object().is_some_and(|o| o.len() <= 2), "{item}");
    let reserved = api.put("/api/queues/%2F/amq.mine", json!({})).await;
    assert_eq!(
        (reserved.status, reserved.json()),
        (
            401,
            json!({"error": "not_authorised", "reason": "Access refused."})
        )
    );
    let missing = api.put("/api/queues/no-such-vhost/q", json!({})).await;
    assert_eq!(
        (missing.status, missing.json()),
        (
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"})
        )
    );
    // A message makes `if-empty` refuse; a purge empties it.
    let published = api
        .call(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(("guest", "guest")),
            Some(json!({ "properties": {}, "routing_key": q, "payload": "m", "payload_encoding": "string" })),
        )
        .await;
    assert_eq!(published.json(), json!({ "routed": true }));
    let not_empty = api.delete(&format!("{queue}?if-empty=true")).await;
    assert_eq!(not_empty.status, 400);
    assert_eq!(
        not_empty.json()["reason"],
        format!("queue '{q}' in vhost '/' not empty")
    );
    assert_eq!(api.delete(&format!("{queue}/contents")).await.status, 204);
    assert_eq!(
        api.delete(&format!("{queue}?if-empty=true")).await.status,
        204
    );
    assert_eq!(api.get(&queue).await.status, 404);
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.delete(&path).await.status, 404);
    let system = api.delete("/api/exchanges/%2F/amq.direct").await;
    assert_eq!(system.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_published_and_got_over_http() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let q = unique_name("api-msgs");
    let queue = format!("/api/queues/%2F/{q}");
    assert_eq!(api.put(&queue, json!({})).await.status, 201);
    let publish = |body: Value| {
        api.call(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(("guest", "guest")),
            Some(body),
        )
    };
    let sent = publish(json!({
        "properties": { "delivery_mode": 2, "headers": { "a": 1, "b": "s" }, "content_type": "text/plain" },
        "routing_key": q, "payload": "hello world", "payload_encoding": "string"
    }))
    .await;
    assert_eq!((sent.status, sent.json()), (200, json!({ "routed": true })));
    let binary = publish(json!({
        "properties": {}, "routing_key": q, "payload": "/wA=", "payload_encoding": "base64"
    }))
    .await;
    assert_eq!(binary.json(), json!({ "routed": true }));
    let nowhere = publish(json!({
        "properties": {}, "routing_key": unique_name("nobody"), "payload": "x", "payload_encoding": "string"
    }))
    .await;
    assert_eq!(nowhere.json(), json!({ "routed": false }));
    let missing = publish(json!({ "routing_key": q, "payload": "x" })).await;
    assert_eq!(
        missing.json()["reason"],
        "[{key_missing,properties},{key_missing,payload_encoding}]"
    );
    let no_exchange = api
        .call(
            "POST",
            "/api/exchanges/%2F/no-such-x/publish",
            Some(("guest", "guest")),
            Some(json!({ "properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string" })),
        )
        .await;
    assert_eq!(
        (no_exchange.status, no_exchange.json()["reason"].clone()),
        (
            400,
            json!("404 NOT_FOUND - no exchange 'no-such-x' in vhost '/'")
        )
    );

    let get_path = format!("{queue}/get");
    let get = |ackmode: &str| {
        api.call(
            "POST",
            &get_path,
            Some(("guest", "guest")),
            Some(
                json!({ "count": "5", "ackmode": ackmode, "encoding": "auto", "truncate": 50000 }),
            ),
        )
    };
    let peeked = get("ack_requeue_true").await.json();
    assert_eq!(peeked[0]["payload"], "hello world");
    assert_eq!(peeked[0]["payload_encoding"], "string");
    assert_eq!(peeked[0]["payload_bytes"], 11);
    assert_eq!(peeked[0]["redelivered"], false);
    assert_eq!(peeked[0]["message_count"], 1);
    assert_eq!(
        peeked[0]["properties"]["headers"],
        json!({ "a": 1, "b": "s" })
    );
    assert_eq!(peeked[0]["properties"]["delivery_mode"], 2);
    assert_eq!(peeked[1]["payload"], "/wA=");
    assert_eq!(peeked[1]["payload_encoding"], "base64");
    assert_eq!(
        peeked[1]["properties"],
        json!([]),
        "no properties: RabbitMQ's []"
    );
    // Requeued: the next look sees them again, redelivered.
    let again = get("ack_requeue_true").await.json();
    assert_eq!(again[0]["redelivered"], true);
    let bad = api
        .call(
            "POST",
            &format!("{queue}/get"),
            Some(("guest", "guest")),
            Some(json!({ "count": 1, "ackmode": "ack_requeue_true", "encoding": "utf-9" })),
        )
        .await;
    assert_eq!(
        bad.json()["reason"],
        "Unsupported encoding. Please use auto or base64."
    );
    // A consumer's unacknowledged delivery shows in the queue's counts.
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    within(
        "basic.qos",
        ch.basic_qos(1, lapin::options::BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let delivery = next_delivery(&mut consumer).await;
    let counted = integration_tests::wait_for(BOUND, || async {
        let shown = api.get(&queue).await.json();
        shown["messages_unacknowledged"] == 1 && shown["messages_ready"] == 1
    })
    .await;
    assert!(counted, "{}", api.get(&queue).await.body);
    within("ack", delivery.acker.ack(Default::default()))
        .await
        .expect("ack");
    // The second delivery goes back when the connection closes.
    within("close", conn.close(200, "bye".into()))
        .await
        .expect("close");
    let back = integration_tests::wait_for(BOUND, || async {
        api.get(&queue).await.json()["messages_ready"] == 1
    })
    .await;
    assert!(back, "{}", api.get(&queue).await.body);
    let emptied = get("ack_requeue_false").await.json();
    assert_eq!(emptied.as_array().map(Vec::len), Some(1));
    assert_eq!(get("ack_requeue_false").await.json(), json!([]));
    assert_eq!(api.delete(&queue).await.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn bindings_are_made_and_removed_by_their_properties_key() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let (x, q) = (unique_name("bx"), unique_name("bq"));
    assert_eq!(
        api.put(
            &format!("/api/exchanges/%2F/{x}"),
            json!({ "type": "direct" })
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.put(&format!("/api/queues/%2F/{q}"), json!({}))
            .await
            .status,
        201
    );
    let pair = format!("/api/bindings/%2F/e/{x}/q/{q}");
    let made = api
        .call(
            "POST",
            &pair,
            Some(("guest", "guest")),
            Some(json!({ "routing_key": "rk a/b~c", "arguments": {} })),
        )
        .await;
    assert_eq!(made.status, 201);
    let with_args = api
        .call(
            "POST",
            &pair,
            Some(("guest", "guest")),
            Some(json!({ "routing_key": "k2", "arguments": { "foo": "bar" } })),
        )
        .await;
    assert_eq!(with_args.status, 201);
    let listed = api.get(&pair).await.json();
    let keys: Vec<String> = listed
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|b| b["properties_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(keys.contains(&"rk+a%2Fb%7Ec".to_owned()), "{keys:?}");
    let hashed = keys
        .iter()
        .find(|k| k.starts_with("k2~"))
        .cloned()
        .expect("a key with its arguments' hash");
    // The queue's bindings include the default exchange's.
    let of_queue = api
        .get(&format!("/api/queues/%2F/{q}/bindings"))
        .await
        .json();
    assert_eq!(of_queue.as_array().map(Vec::len), Some(3));
    assert_eq!(of_queue[0]["source"], "");
    // Looked up and removed by the key (its path segment quoted once more).
    let one = api.get(&format!("{pair}/rk%2Ba%252Fb%257Ec")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["routing_key"], "rk a/b~c");
    assert_eq!(api.get(&format!("{pair}/rk")).await.status, 404);
    assert_eq!(
        api.delete(&format!("{pair}/rk%2Ba%252Fb%257Ec"))
            .await
            .status,
        204
    );
    assert_eq!(api.delete(&format!("{pair}/{hashed}")).await.status, 204);
    assert_eq!(api.get(&pair).await.json(), json!([]));
    let missing = api
        .call(
            "POST",
            &format!("/api/bindings/%2F/e/{x}/q/no-such-q"),
            Some(("guest", "guest")),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (missing.status, missing.json()),
        (
            404,
            json!({"error": "not_found", "reason": "no queue 'no-such-q' in vhost '/'"})
        )
    );
    assert_eq!(
        api.delete(&format!("/api/queues/%2F/{q}")).await.status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/exchanges/%2F/{x}")).await.status,
        204
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_channels_and_consumers_are_listed_and_a_connection_closed() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let name = unique_name("api-conn");
    let properties =
        lapin::ConnectionProperties::default().with_connection_name(name.as_str().into());
    let conn = within(
        "connect",
        lapin::Connection::connect(server.uri(), properties),
    )
    .await
    .expect("connect");
    let ch = channel(&conn).await;
    let q = unique_name("api-consumed");
    declare_queue(&ch, &q).await;
    within(
        "basic.qos",
        ch.basic_qos(7, lapin::options::BasicQosOptions::default()),
    )
    .await
    .expect("qos");
    let _consumer = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "api-tag".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    // RabbitMQ lists a connection once its statistics are first emitted.
    let find = || async {
        let all = api.get("/api/connections").await.json();
        all.as_array().and_then(|all| {
            all.iter()
                .find(|c| c["user_provided_name"] == name.as_str())
                .cloned()
        })
    };
    let seen = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        find().await.is_some()
    })
    .await;
    assert!(seen, "the connection is listed");
    let listed = find().await.expect("listed");
    assert_eq!(listed["user"], "guest");
    assert_eq!(listed["vhost"], "/");
    assert_eq!(listed["protocol"], "AMQP 0-9-1");
    assert_eq!(listed["auth_mechanism"], "PLAIN");
    assert_eq!(
        listed["client_properties"]["connection_name"],
        name.as_str()
    );
    let conn_name = listed["name"].as_str().expect("a name").to_owned();
    let path = format!("/api/connections/{}", enc(&conn_name));
    assert_eq!(api.get(&path).await.json()["name"], conn_name.as_str());
    let channels_seen = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        let channels = api.get(&format!("{path}/channels")).await.json();
        channels[0]["prefetch_count"] == 7 && channels[0]["consumer_count"] == 1
    })
    .await;
    assert!(
        channels_seen,
        "{}",
        api.get(&format!("{path}/channels")).await.body
    );
    let consumers = api.get("/api/consumers/%2F").await.json();
    let mine = consumers
        .as_array()
        .and_then(|all| all.iter().find(|c| c["consumer_tag"] == "api-tag").cloned())
        .unwrap_or_else(|| panic!("consumer not listed: {consumers}"));
    assert_eq!(mine["queue"], json!({ "name": q, "vhost": "/" }));
    assert_eq!(mine["ack_required"], true);
    assert_eq!(
        mine["channel_details"]["connection_name"],
        conn_name.as_str()
    );
    // Closed with the reason given.
    let closed = api
        .call("DELETE", &path, Some(("guest", "guest")), None)
        .await;
    assert_eq!(closed.status, 204);
    let ended = integration_tests::wait_for(BOUND, || async { !conn.status().connected() }).await;
    assert!(ended, "the client saw its connection close");
    let gone = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        api.get(&path).await.status == 404
    })
    .await;
    assert!(gone, "the connection is no longer listed");
}

#[tokio::test(flavor = "multi_thread")]
async fn message_stats_count_publishes_deliveries_and_acks_with_rates() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let q = unique_name("api-stats");
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    declare_queue(&ch, &q).await;
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    for _ in 0..20 {
        publish(&ch, "", &q, b"counted").await;
    }
    let queue = format!("/api/queues/%2F/{q}");
    let counted = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        let shown = api.get(&queue).await.json();
        shown["message_stats"]["publish"] == 20 && shown["messages"] == 20
    })
    .await;
    assert!(counted, "{}", api.get(&queue).await.body);
    let overview = api.get("/api/overview").await.json();
    assert!(
        overview["message_stats"]["publish"].as_u64() >= Some(20),
        "{overview}"
    );
    assert!(
        overview["message_stats"]["confirm"].as_u64() >= Some(20),
        "{overview}"
    );
    // A rate shows once two samples saw the publishes apart.
    let rated = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        let shown = api.get("/api/vhosts/%2F").await.json();
        shown["message_stats"]["publish"].as_u64() >= Some(20)
    })
    .await;
    assert!(rated, "{}", api.get("/api/vhosts/%2F").await.body);
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    for _ in 0..20 {
        let delivery = next_delivery(&mut consumer).await;
        within("ack", delivery.acker.ack(Default::default()))
            .await
            .expect("ack");
    }
    let acked = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        let shown = api.get(&queue).await.json();
        let stats = &shown["message_stats"];
        stats["ack"] == 20 && stats["deliver_get"] == 20 && shown["messages"] == 0
    })
    .await;
    assert!(acked, "{}", api.get(&queue).await.body);
    let channels = api.get("/api/channels").await.json();
    let acks: u64 = channels
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|c| c["message_stats"]["ack"].as_u64())
                .sum()
        })
        .unwrap_or_default();
    assert!(acks >= 20, "{channels}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exchanges_count_messages_published_in_and_copies_routed_out() {
    let server = TestServer::start().await;
    let api = Http::of(&server);
    let conn = server.connect().await;
    let ch = channel(&conn).await;
    let (fanout, nowhere) = (unique_name("api-fan"), unique_name("api-nowhere"));
    let (q1, q2) = (unique_name("api-fan-q"), unique_name("api-fan-q"));
    declare_exchange_with(&ch, &fanout, lapin::ExchangeKind::Fanout, table(&[])).await;
    declare_exchange_with(&ch, &nowhere, lapin::ExchangeKind::Direct, table(&[])).await;
    for q in [&q1, &q2] {
        declare_queue(&ch, q).await;
        bind_queue(&ch, q, &fanout, "").await;
    }
    within("confirm.select", ch.confirm_select(Default::default()))
        .await
        .expect("confirms");
    for _ in 0..10 {
        publish(&ch, &fanout, "", b"twice").await;
    }
    for _ in 0..3 {
        publish(&ch, &nowhere, "k", b"unroutable").await;
    }
    for _ in 0..4 {
        publish(&ch, "", &q1, b"direct").await;
    }
    let stats_of = |name: &str| {
        let path = format!("/api/exchanges/%2F/{name}");
        let api = &api;
        async move { api.get(&path).await.json()["message_stats"].clone() }
    };
    let counted = integration_tests::wait_for(std::time::Duration::from_secs(15), || async {
        let (fan, none, default) = (
            stats_of(&fanout).await,
            stats_of(&nowhere).await,
            stats_of("amq.default").await,
        );
        fan["publish_in"] == 10
            && fan["publish_out"] == 20
            && none["publish_in"] == 3
            && none["publish_out"].as_u64().unwrap_or(0) == 0
            && default["publish_in"].as_u64() >= Some(4)
            && default["publish_out"].as_u64() >= Some(4)
    })
    .await;
    assert!(
        counted,
        "{} {} {}",
        stats_of(&fanout).await,
        stats_of(&nowhere).await,
        stats_of("amq.default").await
    );
    let fan = stats_of(&fanout).await;
    assert!(fan["publish_in_details"]["rate"].is_f64(), "{fan}");
    let listed = api.get("/api/exchanges/%2F").await.json();
    let shown = listed
        .as_array()
        .and_then(|all| all.iter().find(|x| x["name"] == fanout.as_str()))
        .unwrap_or_else(|| panic!("{fanout} not listed: {listed}"));
    assert_eq!(shown["message_stats"]["publish_out"], 20, "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_queues_groups_show_members_partitions_and_lag() {
    let server = TestServer::start().await;
    if !server.is_warren() {
        // Consumer groups over partitioned queues are Warren's own.
        return;
    }
    let api = Http::of(&server);
    let q = unique_name("api-groups");
    let (conn, ch) = open(&server).await;
    declare_queue_with(&ch, &q, table(&[("x-partitions", int(4))]))
        .await
        .expect("declare a partitioned queue");
    for i in 0..8 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut members = Vec::new();
    for _ in 0..2 {
        let (c, member) = open(&server).await;
        within(
            "basic.qos",
            member.basic_qos(1, lapin::options::BasicQosOptions::default()),
        )
        .await
        .expect("qos");
        let consumer = consume_with(
            &member,
            &q,
            "",
            lapin::options::BasicConsumeOptions::default(),
            table(&[("x-consumer-group", text("g"))]),
        )
        .await;
        members.push((c, member, consumer));
    }
    let path = format!("/api/queues/%2F/{q}/groups");
    let balanced = integration_tests::wait_for(BOUND, || async {
        let shown = api.get(&path).await.json();
        let group = &shown["groups"][0];
        group["members"].as_array().map(Vec::len) == Some(2)
            && group["partition_states"].as_array().is_some_and(|ps| {
                ps.len() == 4
                    && ps
                        .iter()
                        .all(|p| p["owners"].as_array().map(Vec::len) == Some(1))
            })
    })
    .await;
    assert!(balanced, "{}", api.get(&path).await.body);
    let shown = api.get(&path).await.json();
    assert_eq!(shown["type"], "partitioned");
    let group = &shown["groups"][0];
    assert_eq!(group["group"], "g");
    assert_eq!(group["partitions"], 4);
    let members_json = group["members"].as_array().cloned().unwrap_or_default();
    assert!(
        members_json
            .iter()
            .all(|m| m["details"]["consumer_tag"].is_string()),
        "{group}"
    );
    let assigned: usize = members_json
        .iter()
        .map(|m| m["assigned"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(assigned, 4, "every partition has one owner: {group}");
    // Each member holds one unacked delivery (prefetch 1); the rest wait.
    let states = group["partition_states"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let unacked: u64 = states.iter().filter_map(|p| p["unacked"].as_u64()).sum();
    let lag: u64 = states.iter().filter_map(|p| p["lag"].as_u64()).sum();
    assert_eq!(unacked + lag, 8, "{group}");
    assert_eq!(
        api.get("/api/queues/%2F/no-such-q/groups").await.status,
        404
    );
    drop((members, conn));
}
