//! Leader election against a scripted API server, in virtual time: creating the Lease, renewing
//! it, standing by, taking over an expired lease, releasing it on shutdown, and giving up
//! leadership (the process then stops) when renewals fail or another holder appears.

mod operator_fixtures;

use std::time::Duration;

use beeline::operator::leader::{ElectionConfig, LeaderElector, LeaderError, LEASE_NAME};
use operator_fixtures::{mock_client, respond_json, respond_status, respond_unreachable, ApiServer};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

const ME: &str = "beeline-operator-7d9f-abc123";
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/beeline-system/leases";

fn lease_path() -> String {
    format!("{LEASE_PATH}/{LEASE_NAME}")
}

fn lease(holder: Option<&str>, renew: &str, rv: &str, transitions: i32) -> Value {
    let mut spec = json!({
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": renew,
        "leaseTransitions": transitions,
    });
    if let Some(h) = holder {
        spec["holderIdentity"] = json!(h);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE_NAME, "namespace": "beeline-system", "resourceVersion": rv},
        "spec": spec,
    })
}

struct Election {
    api: ApiServer,
    leading: watch::Receiver<bool>,
    gauge: Gauge,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), LeaderError>>,
}

fn start_election() -> Election {
    let (client, api) = mock_client();
    let gauge = Gauge::default();
    let (tx, leading) = watch::channel(false);
    let shutdown = CancellationToken::new();
    let elector = LeaderElector::new(client, ElectionConfig::new("beeline-system", ME)).with_gauge(gauge.clone());
    let task = tokio::spawn(elector.run(tx, shutdown.clone()));
    Election { api, leading, gauge, shutdown, task }
}

impl Election {
    fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// GET the lease → answer with `lease` (or 404 when `None`).
    async fn serve_get(&mut self, lease: Option<&Value>) {
        let (_, responder) = self.api.expect("GET", &lease_path()).await;
        match lease {
            Some(l) => respond_json(responder, 200, l),
            None => respond_status(responder, 404, "NotFound", "leases \"beeline-operator-resource-lock\" not found"),
        }
    }

    /// Expects a PUT of the lease; answers with what was written at resourceVersion `new_rv`.
    async fn serve_put(&mut self, new_rv: &str) -> Value {
        let (seen, responder) = self.api.expect("PUT", &lease_path()).await;
        let mut stored = seen.body.clone();
        stored["metadata"]["resourceVersion"] = json!(new_rv);
        respond_json(responder, 200, &stored);
        seen.body
    }

    /// Creates the lease from scratch and checks we lead; returns the stored lease.
    async fn become_leader(&mut self) -> Value {
        self.serve_get(None).await;
        let (seen, responder) = self.api.expect("POST", LEASE_PATH).await;
        assert_eq!(seen.body["metadata"]["name"], LEASE_NAME);
        assert_eq!(seen.body["spec"]["holderIdentity"], ME);
        assert_eq!(seen.body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(seen.body["spec"]["leaseTransitions"], 0);
        let mut stored = seen.body.clone();
        stored["metadata"]["resourceVersion"] = json!("1");
        respond_json(responder, 201, &stored);
        self.leading.wait_for(|l| *l).await.unwrap();
        assert_eq!(self.gauge.get(), 1);
        stored
    }
}

#[tokio::test(start_paused = true)]
async fn creates_the_lease_renews_it_and_releases_it_on_shutdown() {
    let mut e = start_election();
    let created = e.become_leader().await;

    // Next period: renew with optimistic concurrency on the version we read.
    e.serve_get(Some(&created)).await;
    let renewed = e.serve_put("2").await;
    assert_eq!(renewed["metadata"]["resourceVersion"], "1", "the write is conditional on what was read");
    assert_eq!(renewed["spec"]["holderIdentity"], ME);
    assert_eq!(renewed["spec"]["acquireTime"], created["spec"]["acquireTime"], "renewal keeps the acquire time");
    assert_eq!(renewed["spec"]["leaseTransitions"], 0);
    assert!(e.is_leading());

    // Shutdown while leading: the lease is released so a standby does not wait for it to expire.
    e.shutdown.cancel();
    let mut stored = renewed.clone();
    stored["metadata"]["resourceVersion"] = json!("2");
    e.serve_get(Some(&stored)).await;
    let released = e.serve_put("3").await;
    assert!(released["spec"].get("holderIdentity").is_none(), "{released}");
    assert_eq!(released["spec"]["leaseDurationSeconds"], 1);
    e.task.await.unwrap().expect("a clean shutdown");
    assert!(!*e.leading.borrow());
    assert_eq!(e.gauge.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn stands_by_while_the_holder_renews_and_takes_over_once_it_stops() {
    let mut e = start_election();
    let start = Instant::now();
    // The other replica renews every period for 30 s: its record keeps changing, so we wait.
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(30) {
        n += 1;
        let renew = format!("2026-01-01T00:00:{n:02}.000000Z");
        e.serve_get(Some(&lease(Some("other"), &renew, &n.to_string(), 4))).await;
        assert!(!e.is_leading(), "must not lead while the holder renews");
    }
    // Then it stops renewing: the record stays the same. We take over only after the lease
    // duration (15 s) of our own observation, not earlier.
    let frozen = lease(Some("other"), "2026-01-01T00:00:59.000000Z", "99", 4);
    let frozen_since = Instant::now();
    let taken = loop {
        assert!(frozen_since.elapsed() < Duration::from_secs(60), "never took over the expired lease");
        let (seen, responder) = e.api.next().await;
        match (seen.method.as_str(), seen.path == lease_path()) {
            ("GET", true) => respond_json(responder, 200, &frozen),
            ("PUT", true) => {
                let mut stored = seen.body.clone();
                stored["metadata"]["resourceVersion"] = json!("100");
                respond_json(responder, 200, &stored);
                break seen.body;
            }
            _ => panic!("unexpected request {seen:?}"),
        }
    };
    assert!(frozen_since.elapsed() >= Duration::from_secs(15), "took over after {:?}", frozen_since.elapsed());
    assert_eq!(taken["metadata"]["resourceVersion"], "99", "the take-over is conditional on the expired record");
    assert_eq!(taken["spec"]["holderIdentity"], ME);
    assert_eq!(taken["spec"]["leaseTransitions"], 5);
    e.leading.wait_for(|l| *l).await.unwrap();
    assert_eq!(e.gauge.get(), 1);
    e.shutdown.cancel();
    drop(e.api); // the release finds no API; shutdown still completes
    e.task.await.unwrap().expect("a clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn losing_a_race_for_the_lease_is_not_leading() {
    let mut e = start_election();
    e.serve_get(None).await;
    let (_, responder) = e.api.expect("POST", LEASE_PATH).await;
    respond_status(responder, 409, "AlreadyExists", "leases \"beeline-operator-resource-lock\" already exists");
    e.serve_get(Some(&lease(Some("other"), "2026-01-01T00:00:00.000000Z", "1", 0))).await;
    // Still a candidate, and asks again next period.
    e.serve_get(Some(&lease(Some("other"), "2026-01-01T00:00:02.000000Z", "2", 0))).await;
    assert!(!e.is_leading());
    assert_eq!(e.gauge.get(), 0);
    e.shutdown.cancel();
    e.task.await.unwrap().expect("a standby shuts down cleanly");
}

#[tokio::test(start_paused = true)]
async fn gives_up_leadership_before_the_lease_can_expire_when_renewals_fail() {
    let mut e = start_election();
    e.become_leader().await;
    let last_renewal = Instant::now();
    // Every renewal attempt fails: errors, then no answer at all.
    let mut unanswered = Vec::new();
    let result = loop {
        assert!(last_renewal.elapsed() < Duration::from_secs(60), "never gave up leadership");
        tokio::select! {
            biased;
            r = &mut e.task => break r.unwrap(),
            (seen, responder) = e.api.next() => {
                assert_eq!(seen.method, "GET", "{seen:?}");
                if last_renewal.elapsed() < Duration::from_secs(5) {
                    respond_status(responder, 500, "InternalError", "etcdserver: request timed out");
                } else if last_renewal.elapsed() < Duration::from_secs(7) {
                    respond_unreachable(responder);
                } else {
                    // Hang: the elector must not wait past its renew deadline.
                    unanswered.push(responder);
                }
            }
        }
    };
    let err = result.expect_err("leadership must be given up");
    assert!(matches!(err, LeaderError::RenewDeadline { .. }), "{err:?}");
    assert!(err.to_string().contains("within the 10s renew deadline"), "{err}");
    // Given up within the renew deadline (plus one retry period), well before the 15 s lease
    // duration after which a standby may take over.
    assert!(last_renewal.elapsed() < Duration::from_secs(15), "gave up after {:?}", last_renewal.elapsed());
    assert!(!*e.leading.borrow());
    assert_eq!(e.gauge.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn stops_leading_when_another_replica_holds_the_lease() {
    let mut e = start_election();
    e.become_leader().await;
    // Someone (an admin, or a replica that saw our lease expire) now holds it.
    e.serve_get(Some(&lease(Some("other"), "2026-01-01T00:01:00.000000Z", "5", 1))).await;
    let err = e.task.await.unwrap().expect_err("losing the lease is an error: the process stops");
    match &err {
        LeaderError::Lost { holder, namespace, lease } => {
            assert_eq!((holder.as_str(), namespace.as_str(), lease.as_str()), ("other", "beeline-system", LEASE_NAME));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!*e.leading.borrow());
    assert_eq!(e.gauge.get(), 0);
}
