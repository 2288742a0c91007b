//! The agent's health-check node port servers (thin shell over
//! [`crate::services::health_check`]): one HTTP listener on `0.0.0.0:<healthCheckNodePort>` per
//! `externalTrafficPolicy: Local` LoadBalancer Service, opened and closed as the services
//! controller publishes new answers. Every path answers (load balancers probe `/` or `/healthz`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::services::HealthCheck;

/// Health-check port → answer, as the services controller last computed it.
pub type HealthChecks = BTreeMap<u16, HealthCheck>;

/// Keeps one listener per port of `checks` until `shutdown`. A port that cannot be bound (taken by
/// another process) is logged and retried on the next change.
pub async fn serve(mut checks: watch::Receiver<HealthChecks>, shutdown: CancellationToken) {
    let mut listeners: BTreeMap<u16, CancellationToken> = BTreeMap::new();
    loop {
        let wanted: Vec<u16> = checks.borrow_and_update().keys().copied().collect();
        listeners.retain(|port, stop| {
            let keep = wanted.contains(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for port in wanted {
            if listeners.contains_key(&port) {
                continue;
            }
            match tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await {
                Ok(listener) => {
                    let stop = shutdown.child_token();
                    listeners.insert(port, stop.clone());
                    let router = Router::new().fallback(answer).with_state((port, checks.clone()));
                    tracing::info!(port, "health-check node port listening");
                    tokio::spawn(async move {
                        let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
                        if let Err(error) = served.await {
                            tracing::warn!(port, %error, "health-check node port server failed");
                        }
                    });
                }
                Err(error) => tracing::warn!(port, %error, "cannot listen on the health-check node port"),
            }
        }
        tokio::select! {
            changed = checks.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    for stop in listeners.values() {
        stop.cancel();
    }
}

async fn answer(State((port, checks)): State<(u16, watch::Receiver<HealthChecks>)>) -> impl IntoResponse {
    let current = checks.borrow().get(&port).map(HealthCheck::response);
    // The port was just withdrawn: nothing to vouch for.
    let (status, body) = current.unwrap_or((503, String::new()));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::ObjectName;

    async fn get(port: u16) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.ok()?;
        let status = raw.split(' ').nth(1)?.parse().ok()?;
        Some((status, raw.split("\r\n\r\n").nth(1)?.to_string()))
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
    }

    /// Polls `port` (bounded: 100 × 20 ms) until `want` holds.
    async fn until(port: u16, want: impl Fn(&Option<(u16, String)>) -> bool) -> Option<(u16, String)> {
        let mut last = None;
        for _ in 0..100 {
            last = get(port).await;
            if want(&last) {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        last
    }

    #[tokio::test]
    async fn listeners_follow_the_published_answers() {
        let port = free_port();
        let hc = |n| HealthCheck {
            service: ObjectName { namespace: "default".into(), name: "web".into() },
            local_endpoints: n,
        };
        let (tx, rx) = watch::channel(HealthChecks::from([(port, hc(1))]));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(rx, shutdown.clone()));

        let got = until(port, |r| r.is_some()).await.expect("listening");
        assert_eq!(got.0, 200);
        assert_eq!(got.1, r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":1}"#);

        tx.send_replace(HealthChecks::from([(port, hc(0))]));
        assert_eq!(until(port, |r| r.as_ref().is_some_and(|r| r.0 == 503)).await.unwrap().0, 503);

        tx.send_replace(HealthChecks::new());
        assert_eq!(until(port, |r| r.is_none()).await, None, "the port is closed once withdrawn");
        shutdown.cancel();
        server.await.unwrap();
    }
}
