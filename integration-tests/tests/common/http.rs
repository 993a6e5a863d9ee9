//! A client for the management HTTP API: Warren's own (an in-process broker's free
//! port), or RabbitMQ's, named by `WARREN_TEST_EXTERNAL_HTTP`
//! (e.g. `http://127.0.0.1:15673`), to check a test against the real thing.

use integration_tests::TestServer;
use serde_json::Value;

/// Where the management API of the broker under test is.
pub struct Http {
    base: String,
    agent: ureq::Agent,
}

/// One answer: status, `WWW-Authenticate` header, body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The Basic challenge, if any.
    pub challenge: Option<String>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics on anything else: the API answers JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Http {
    /// The API of `server`: the external one when `WARREN_TEST_EXTERNAL_HTTP` is set.
    pub fn of(server: &TestServer) -> Self {
        let base = match std::env::var("WARREN_TEST_EXTERNAL_HTTP") {
            Ok(base) if !server.is_warren() => base,
            _ => format!(
                "http://{}",
                server.management_addr().expect("the management API is on")
            ),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Self { base, agent }
    }

    /// Sends one request; `credentials` as Basic auth, `body` as JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        credentials: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> Answer {
        use base64::Engine as _;
        let url = format!("{}{path}", self.base);
        let agent = self.agent.clone();
        let method = method.to_owned();
        let auth = credentials.map(|(user, pass)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            format!("Basic {token}")
        });
        tokio::task::spawn_blocking(move || {
            let request = ureq::http::Request::builder()
                .method(method.as_str())
                .uri(&url)
                .header("content-type", "application/json");
            let request = match &auth {
                Some(auth) => request.header("authorization", auth),
                None => request,
            };
            let text = body.map(|b| b.to_string()).unwrap_or_default();
            let request = request.body(text).expect("a request");
            let mut response = agent
                .run(request)
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Answer {
                status: response.status().as_u16(),
                challenge,
                body: response.body_mut().read_to_string().unwrap_or_default(),
            }
        })
        .await
        .expect("the request's thread")
    }

    /// GET as guest.
    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, Some(("guest", "guest")), None).await
    }

    /// PUT as guest.
    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.call("PUT", path, Some(("guest", "guest")), Some(body))
            .await
    }

    /// DELETE as guest.
    pub async fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, Some(("guest", "guest")), None)
            .await
    }

    /// Makes user `name`, password `pw`, with `tags` (comma-separated).
    pub async fn make_user(&self, name: &str, tags: &str) {
        let made = self
            .put(
                &format!("/api/users/{name}"),
                serde_json::json!({ "password": "pw", "tags": tags }),
            )
            .await;
        assert_eq!(made.status, 201, "{made:?}");
    }

    /// Gives `user` every permission in the vhost whose path segment is `vhost`.
    pub async fn grant_all(&self, vhost: &str, user: &str) {
        let granted = self
            .put(
                &format!("/api/permissions/{vhost}/{user}"),
                serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }),
            )
            .await;
        assert_eq!(granted.status, 201, "{granted:?}");
    }
}
