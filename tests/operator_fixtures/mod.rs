//! A scripted Kubernetes API for operator tests: a `kube::Client` backed by a `tower-test` mock,
//! and a verifier that takes the client's requests one by one, asserts what they are, and answers.
//! Use with `#[tokio::test(start_paused = true)]`: waits are in virtual time, so timeouts and lease
//! periods take no real time, and every wait here is bounded.

#![allow(dead_code)] // each test file uses a subset

use std::{collections::BTreeMap, time::Duration};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
pub type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// How long (virtual time) the verifier waits for the next request before failing the test.
const NEXT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub fn mock_client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

pub struct ApiServer {
    handle: Handle,
}

/// One request as the API server saw it.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.query.get("watch").map(String::as_str) == Some("true")
    }
}

impl ApiServer {
    /// The next request, with the means to answer it.
    pub async fn next(&mut self) -> (Seen, Responder) {
        let (request, responder) = tokio::time::timeout(NEXT_REQUEST_TIMEOUT, self.handle.next_request())
            .await
            .expect("the client sent no further request")
            .expect("the client was dropped while a request was expected");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        let query = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), percent_decode(v))
            })
            .collect();
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query,
            content_type: parts.headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()),
            body,
        };
        (seen, responder)
    }

    /// The next request, asserted to be `method path` (a watch or list is told apart by the query).
    pub async fn expect(&mut self, method: &str, path: &str) -> (Seen, Responder) {
        let (seen, responder) = self.next().await;
        assert_eq!((seen.method.as_str(), seen.path.as_str()), (method, path), "unexpected request: {seen:?}");
        (seen, responder)
    }

    /// Asserts the client sends nothing more: it must have been dropped (all clones).
    pub async fn expect_no_more_requests(mut self) {
        let next =
            tokio::time::timeout(NEXT_REQUEST_TIMEOUT, self.handle.next_request()).await.expect("client kept alive");
        if let Some((request, _)) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 query")
}

pub fn respond_json(responder: Responder, code: u16, body: &Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    responder.send_response(response);
}

/// A `metav1.Status` failure, as the API server sends for 403, 404, 409, 500...
pub fn respond_status(responder: Responder, code: u16, reason: &str, message: &str) {
    let status = json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    respond_json(responder, code, &status);
}

/// A watch response carrying `events` (`(type, object)`), after which the stream ends.
pub fn respond_watch(responder: Responder, events: &[(&str, Value)]) {
    let mut body = Vec::new();
    for (kind, object) in events {
        body.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap());
        body.push(b'\n');
    }
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    responder.send_response(response);
}

/// The client sees a transport error (connection refused, reset...).
pub fn respond_unreachable(responder: Responder) {
    responder.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
}
