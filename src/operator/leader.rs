//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics (the ones
//! Cilium's operator uses): a candidate takes the lease when it is free or when its record has not
//! changed for `leaseDurationSeconds` by the candidate's *own* clock (so clock skew between nodes
//! does not matter); the leader renews every `retry_period`, and stops leading when it has not
//! renewed for `renew_deadline` — before the lease can expire for the others — so two replicas never
//! act as leader at once. Writes use optimistic concurrency (`resourceVersion`), so two candidates
//! racing for a free lease cannot both win.
//!
//! Why not kube-lease-manager: it keeps reporting leadership while renewals fail (no renew
//! deadline), which allows two active operators during an API server partition.
//!
//! The decision is a pure function ([`decide`]); [`LeaderElector`] is the thin I/O loop around it.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    api::{ObjectMeta, PostParams},
    Api, Client,
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

/// The Lease the operator replicas compete for (Cilium's is `cilium-operator-resource-lock`).
pub const LEASE_NAME: &str = "beeline-operator-resource-lock";

/// Timings and identity; defaults are client-go's and Cilium's (15 s / 10 s / 2 s).
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per process: the pod name plus a random suffix, so a restarted pod is a new candidate.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            lease_name: LEASE_NAME.to_string(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the lease it observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No Lease object exists: create it, held by us.
    Create(LeaseSpec),
    /// We hold it: write a fresh `renewTime`.
    Renew(LeaseSpec),
    /// It is free or expired: take it over (one more transition).
    Take(LeaseSpec),
    /// Someone else holds it and it has not expired yet.
    Wait { holder: String, expires_in: Duration },
}

/// Decides the next step. `unchanged_since` is when this candidate first saw the lease's current
/// record (by its own clock); a record unchanged for the lease's duration is expired.
pub fn decide(
    observed: Option<&LeaseSpec>,
    unchanged_since: Instant,
    now: Instant,
    wall_now: Timestamp,
    config: &ElectionConfig,
) -> Step {
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let ours = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: Some(acquire.unwrap_or(MicroTime(wall_now))),
        renew_time: Some(MicroTime(wall_now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(spec) = observed else {
        return Step::Create(ours(None, 0));
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(holder) if holder == config.identity => Step::Renew(ours(spec.acquire_time.clone(), transitions)),
        None => Step::Take(ours(None, transitions + 1)),
        Some(holder) => {
            let their_duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(config.lease_duration, Duration::from_secs);
            let expires_at = unchanged_since + their_duration;
            if now >= expires_at {
                Step::Take(ours(None, transitions + 1))
            } else {
                Step::Wait { holder: holder.to_string(), expires_in: expires_at - now }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the lease {namespace}/{lease}: it is now held by {holder}")]
    Lost { namespace: String, lease: String, holder: String },
    #[error("could not renew the lease {namespace}/{lease} within the {deadline:?} renew deadline: {last_error}")]
    RenewDeadline { namespace: String, lease: String, deadline: Duration, last_error: String },
}

/// The outcome of one attempt to acquire or renew.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// We hold the lease (created, renewed or taken over).
    Holding,
    /// Another candidate holds it.
    HeldBy(String),
    /// Our write lost an optimistic-concurrency race; look again next period.
    Conflict,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The lease record as last seen, and when it was first seen in that state.
    observed: Option<(Option<LeaseSpec>, Instant)>,
    gauge: Option<Gauge>,
}

impl LeaderElector {
    pub fn new(client: Client, config: ElectionConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None, gauge: None }
    }

    /// Mirrors leadership into a gauge (1 while leading), e.g. `beeline_operator_is_leader`.
    pub fn with_gauge(mut self, gauge: Gauge) -> Self {
        self.gauge = Some(gauge);
        self
    }

    /// Campaigns until `shutdown`, publishing leadership on `leading`. Returns an error when
    /// leadership is lost (the caller stops the process, as Cilium's operator does); on shutdown
    /// while leading it releases the lease so a standby takes over without waiting for expiry.
    #[tracing::instrument(skip_all, fields(lease = %self.config.lease_name, identity = %self.config.identity))]
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) -> Result<(), LeaderError> {
        // While leading: when the last successful renewal attempt started.
        let mut renewed_at: Option<Instant> = None;
        let mut last_holder: Option<String> = None;
        loop {
            let started = Instant::now();
            // A hanging request must not stretch leadership past the renew deadline.
            let limit = match renewed_at {
                Some(t) => t + self.config.renew_deadline,
                None => started + self.config.lease_duration,
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout_at(limit, self.try_acquire_or_renew()) => match r {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the API server did not answer in time".to_string()),
                },
                _ = shutdown.cancelled() => return self.stop(renewed_at.is_some(), &leading).await,
            };
            match (renewed_at, outcome) {
                (was, Ok(Attempt::Holding)) => {
                    if was.is_none() {
                        tracing::info!("became the leader");
                        self.publish(&leading, true);
                    }
                    renewed_at = Some(started);
                }
                (Some(_), Ok(Attempt::HeldBy(holder))) => {
                    self.publish(&leading, false);
                    return Err(LeaderError::Lost {
                        namespace: self.config.namespace.clone(),
                        lease: self.config.lease_name.clone(),
                        holder,
                    });
                }
                (Some(t), failed) => {
                    let reason = match failed {
                        Err(e) => e,
                        _ => "write conflict".to_string(),
                    };
                    if Instant::now() >= t + self.config.renew_deadline {
                        self.publish(&leading, false);
                        return Err(LeaderError::RenewDeadline {
                            namespace: self.config.namespace.clone(),
                            lease: self.config.lease_name.clone(),
                            deadline: self.config.renew_deadline,
                            last_error: reason,
                        });
                    }
                    tracing::warn!(error = %reason, "renewing the lease failed; retrying");
                }
                (None, Ok(Attempt::HeldBy(holder))) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(%holder, "another operator is the leader; standing by");
                        last_holder = Some(holder);
                    }
                }
                (None, Ok(Attempt::Conflict)) => tracing::debug!("lost a race for the lease; retrying"),
                (None, Err(e)) => tracing::warn!(error = %e, "cannot read or acquire the lease; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.config.retry_period) => {}
                _ = shutdown.cancelled() => return self.stop(renewed_at.is_some(), &leading).await,
            }
        }
    }

    fn publish(&self, leading: &watch::Sender<bool>, is_leader: bool) {
        leading.send_replace(is_leader);
        if let Some(g) = &self.gauge {
            g.set(i64::from(is_leader));
        }
    }

    async fn stop(&mut self, was_leading: bool, leading: &watch::Sender<bool>) -> Result<(), LeaderError> {
        self.publish(leading, false);
        if was_leading {
            match tokio::time::timeout(Duration::from_secs(2), self.release()).await {
                Ok(Ok(())) => tracing::info!("released the lease"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease; it expires by itself"),
                Err(_) => tracing::warn!("releasing the lease timed out; it expires by itself"),
            }
        }
        Ok(())
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.config.lease_name).await?;
        let now = Instant::now();
        let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let unchanged_since = match &self.observed {
            Some((seen, since)) if *seen == spec => *since,
            _ => now,
        };
        self.observed = Some((spec.clone(), unchanged_since));
        let step = decide(spec.as_ref(), unchanged_since, now, Timestamp::now(), &self.config);
        let write = match step {
            Step::Wait { holder, .. } => return Ok(Attempt::HeldBy(holder)),
            Step::Create(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec.clone()),
                };
                self.api.create(&PostParams::default(), &lease).await.map(|_| spec)
            }
            Step::Renew(spec) | Step::Take(spec) => {
                // `current` is Some here; replacing it carries its resourceVersion (optimistic lock).
                let mut lease = current.unwrap_or_default();
                lease.spec = Some(spec.clone());
                self.api.replace(&self.config.lease_name, &PostParams::default(), &lease).await.map(|_| spec)
            }
        };
        match write {
            Ok(spec) => {
                self.observed = Some((Some(spec), Instant::now()));
                Ok(Attempt::Holding)
            }
            // AlreadyExists on create, or a stale resourceVersion on replace: another candidate won.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (client-go's ReleaseOnCancel): no holder, a 1 s duration.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.config.lease_name, &PostParams::default(), &lease).await.map(|_| ())
    }
}

/// This process's candidate identity: `<pod or host name>-<random>` (Cilium adds a random suffix
/// too), so a restarted process never mistakes its predecessor's lease for its own.
pub fn identity(pod_name: Option<&str>) -> String {
    use std::hash::{BuildHasher, Hasher};
    let base = pod_name
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| crate::runtime::hostname().unwrap_or_default());
    // RandomState is seeded from the OS per process: enough to tell two processes apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let suffix = format!("{:010x}", h.finish() & 0xff_ffff_ffff);
    if base.is_empty() {
        suffix
    } else {
        format!("{base}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ElectionConfig {
        ElectionConfig::new("kube-system", "me-1")
    }

    fn held_by(holder: Option<&str>, duration: Option<i32>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: duration,
            acquire_time: Some(MicroTime(Timestamp::from_second(1_000).unwrap())),
            renew_time: Some(MicroTime(Timestamp::from_second(1_005).unwrap())),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let t0 = Instant::now();
        let wall = Timestamp::from_second(2_000).unwrap();
        let secs = Duration::from_secs;
        struct Case {
            name: &'static str,
            observed: Option<LeaseSpec>,
            unchanged_for: Duration,
            want: &'static str,
            want_transitions: Option<i32>,
        }
        let cases = [
            Case {
                name: "no lease",
                observed: None,
                unchanged_for: secs(0),
                want: "create",
                want_transitions: Some(0),
            },
            Case {
                name: "ours",
                observed: Some(held_by(Some("me-1"), Some(15), 3)),
                unchanged_for: secs(1),
                want: "renew",
                want_transitions: Some(3),
            },
            Case {
                name: "released (no holder)",
                observed: Some(held_by(None, Some(1), 3)),
                unchanged_for: secs(0),
                want: "take",
                want_transitions: Some(4),
            },
            Case {
                name: "empty holder",
                observed: Some(held_by(Some(""), Some(15), 0)),
                unchanged_for: secs(0),
                want: "take",
                want_transitions: Some(1),
            },
            Case {
                name: "theirs, fresh",
                observed: Some(held_by(Some("other"), Some(15), 2)),
                unchanged_for: secs(14),
                want: "wait 1s",
                want_transitions: None,
            },
            Case {
                name: "theirs, unchanged for its whole duration",
                observed: Some(held_by(Some("other"), Some(15), 2)),
                unchanged_for: secs(15),
                want: "take",
                want_transitions: Some(3),
            },
            Case {
                name: "theirs, short duration of their own",
                observed: Some(held_by(Some("other"), Some(5), 2)),
                unchanged_for: secs(6),
                want: "take",
                want_transitions: Some(3),
            },
            Case {
                name: "theirs, no duration: ours applies",
                observed: Some(held_by(Some("other"), None, 0)),
                unchanged_for: secs(10),
                want: "wait 5s",
                want_transitions: None,
            },
        ];
        for c in cases {
            let step = decide(c.observed.as_ref(), t0, t0 + c.unchanged_for, wall, &config());
            let (kind, spec) = match &step {
                Step::Create(s) => ("create".to_string(), Some(s)),
                Step::Renew(s) => ("renew".to_string(), Some(s)),
                Step::Take(s) => ("take".to_string(), Some(s)),
                Step::Wait { holder, expires_in } => {
                    assert_eq!(holder, "other", "{}", c.name);
                    (format!("wait {}s", expires_in.as_secs()), None)
                }
            };
            assert_eq!(kind, c.want, "{}", c.name);
            assert_eq!(spec.and_then(|s| s.lease_transitions), c.want_transitions, "{}", c.name);
            if let Some(s) = spec {
                assert_eq!(s.holder_identity.as_deref(), Some("me-1"), "{}", c.name);
                assert_eq!(s.lease_duration_seconds, Some(15), "{}", c.name);
                assert_eq!(s.renew_time, Some(MicroTime(wall)), "{}", c.name);
                // Renewing keeps the original acquire time; creating or taking over starts a new one.
                let want_acquire = if kind == "renew" { Timestamp::from_second(1_000).unwrap() } else { wall };
                assert_eq!(s.acquire_time, Some(MicroTime(want_acquire)), "{}", c.name);
            }
        }
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        let a = identity(Some("beeline-operator-abc"));
        let b = identity(Some("beeline-operator-abc"));
        assert!(a.starts_with("beeline-operator-abc-"), "{a}");
        assert_ne!(a, b);
        assert!(!identity(None).is_empty());
    }
}
