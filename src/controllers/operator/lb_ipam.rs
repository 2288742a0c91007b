//! The LB-IPAM controller: gives `type: LoadBalancer` Services addresses from
//! `CiliumLoadBalancerIPPool`s.
//!
//! Thin I/O around the pure core in [`crate::ipam::lbipam`]:
//! - two reflectors cache the pools and (once the first pool exists: LB-IPAM is dormant until then,
//!   as in Cilium) every Service;
//! - nothing is computed before both caches have synced, so a restarted operator sees every address
//!   already handed out and adopts it instead of reshuffling;
//! - each change to a pool or a Service schedules one pass (debounced), which runs
//!   [`desired_state`] on the whole cache and [`plan`]s the status writes that differ from what the
//!   objects already say — a pass over its own output writes nothing;
//! - writes are server-side applies of the status subresource under the fixed field manager
//!   [`FIELD_MANAGER`]: a Service gets `status.loadBalancer.ingress` and the
//!   `cilium.io/IPAMRequestSatisfied` condition, a pool its count/conflict conditions. Releasing a
//!   Service applies an empty status, so server-side apply removes exactly the fields this manager
//!   owned and leaves anything another controller wrote since;
//! - failures are retried with exponential backoff; allocation failures and pool conflicts also
//!   become Events on the object.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::crds::cilium_load_balancer_ip_pool::CiliumLoadBalancerIPPool;
use crate::ipam::lbipam::{
    desired_state, DesiredCondition, DesiredState, LbIpamConfig, ServiceKey, ServiceOutcome, CONDITION_BLOCKS_VALID,
    CONDITION_POOL_CONFLICT, CONDITION_REQUEST_SATISFIED,
};

/// The field manager of every status this controller applies. Fixed, so an operator restart (or a
/// new leader) keeps owning what the previous one wrote.
pub const FIELD_MANAGER: &str = "beeline-operator-lbipam";
/// `reportingController` of the Events this controller publishes.
pub const REPORTING_CONTROLLER: &str = "beeline-operator-lbipam";

/// Event reasons (`kubectl describe` shows them).
pub mod event_reason {
    /// A Service's request cannot be satisfied (the note carries the condition's reason and message).
    pub const REQUEST_UNSATISFIED: &str = "LBIPAMRequestUnsatisfied";
    /// A Service got new addresses.
    pub const ADDRESSES_ASSIGNED: &str = "LBIPAMAddressesAssigned";
    /// A Service stopped qualifying and lost its addresses.
    pub const ADDRESSES_RELEASED: &str = "LBIPAMAddressesReleased";
    /// A pool overlaps another (or itself) and is disabled.
    pub const POOL_CONFLICT: &str = "PoolConflict";
    pub const POOL_CONFLICT_RESOLVED: &str = "PoolConflictResolved";
    /// A pool has a block that does not parse.
    pub const INVALID_BLOCK: &str = "InvalidBlock";
}

#[derive(Debug, thiserror::Error)]
pub enum LbIpamError {
    #[error("the {resource} reflector stopped before its first sync")]
    NeverSynced { resource: &'static str },
}

/// What the controller needs besides a client.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: LbIpamConfig,
    /// Quiet time after a change before a pass runs, so a burst of events costs one pass.
    pub debounce: Duration,
    /// First and longest delay before retrying a pass whose writes failed.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// `reportingInstance` of Events (the operator's pod name).
    pub instance: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: LbIpamConfig::default(),
            debounce: Duration::from_millis(100),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            instance: None,
        }
    }
}

impl Options {
    /// From the operator's configuration: the cluster's address families decide which families
    /// dual-stack Services get.
    pub fn from_config(config: &crate::config::Config, instance: Option<String>) -> Self {
        let lb = LbIpamConfig { ipv4: config.enable_ipv4, ipv6: config.enable_ipv6, ..LbIpamConfig::default() };
        Options { config: lb, instance, ..Options::default() }
    }
}

/// Prometheus metrics (registered under `lbipam_*` in the operator's registry).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Addresses added to Services' ingress.
    pub allocations: Counter,
    /// Addresses removed from Services' ingress.
    pub releases: Counter,
    /// Pools currently disabled by `cilium.io/PoolConflict`.
    pub conflicting_pools: Gauge,
    /// Handled Services whose `IPAMRequestSatisfied` is False.
    pub unsatisfied_services: Gauge,
    /// Status writes (Services and pools) and the ones that failed.
    pub status_writes: Counter,
    pub write_errors: Counter,
    /// Desired-state passes run.
    pub passes: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lbipam");
        r.register("allocations", "Addresses LB-IPAM assigned to Services", self.allocations.clone());
        r.register("releases", "Addresses LB-IPAM removed from Services", self.releases.clone());
        r.register(
            "conflicting_pools",
            "Pools disabled by an overlap with another pool",
            self.conflicting_pools.clone(),
        );
        r.register(
            "unsatisfied_services",
            "LoadBalancer Services whose address request is not satisfied",
            self.unsatisfied_services.clone(),
        );
        r.register("status_writes", "Status writes to Services and pools", self.status_writes.clone());
        r.register("write_errors", "Status writes that failed (retried)", self.write_errors.clone());
        r.register("passes", "Desired-state passes over all pools and Services", self.passes.clone());
    }
}

/// An Event to publish on the written object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// One status apply for a Service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceWrite {
    pub key: ServiceKey,
    /// The `status` to apply (only this manager's fields).
    pub status: serde_json::Value,
    /// resourceVersion of the Service the write was planned from, and what it was planned to say:
    /// the same plan against the same version is not repeated while the watch catches up.
    pub based_on: Option<String>,
    pub fingerprint: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub events: Vec<EventSpec>,
}

/// One status apply for a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolWrite {
    pub name: String,
    pub conditions: Vec<Condition>,
    pub based_on: Option<String>,
    pub fingerprint: String,
    pub events: Vec<EventSpec>,
}

/// Every write a pass must make, and the gauges it observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub services: Vec<ServiceWrite>,
    pub pools: Vec<PoolWrite>,
    pub conflicting_pools: i64,
    pub unsatisfied_services: i64,
}

fn ingress_ips(ingress: &[LoadBalancerIngress]) -> Vec<String> {
    ingress.iter().filter_map(|i| i.ip.clone()).collect()
}

fn live_ingress(svc: &Service) -> Vec<LoadBalancerIngress> {
    svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.clone()).unwrap_or_default()
}

fn live_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `desired` with its transition time: kept from `existing` while the status stays the same.
fn stamped(desired: &DesiredCondition, existing: &[Condition], now: &Time) -> Condition {
    desired
        .merge_into(existing, now)
        .into_iter()
        .find(|c| c.type_ == desired.type_)
        .expect("merge_into keeps the merged condition")
}

fn service_write(key: &ServiceKey, outcome: &ServiceOutcome, live: &Service, now: &Time) -> Option<ServiceWrite> {
    let conditions = live.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let current = live_ingress(live);
    let current_ips = ingress_ips(&current);
    let previous = live_condition(&conditions, CONDITION_REQUEST_SATISFIED);
    let mut events = Vec::new();
    let (status, wanted_ips) = match outcome {
        ServiceOutcome::Assign { ingress, condition } => {
            if *ingress == current && previous.is_some_and(|c| condition.matches(c)) {
                return None;
            }
            let changed_failure = previous.is_none_or(|p| {
                p.status != condition.status || p.reason != condition.reason || p.message != condition.message
            });
            if condition.status == "False" && changed_failure {
                events.push(EventSpec {
                    warning: true,
                    reason: event_reason::REQUEST_UNSATISFIED,
                    note: format!("{}: {}", condition.reason, condition.message),
                });
            }
            let status = json!({
                "loadBalancer": { "ingress": ingress },
                "conditions": [stamped(condition, &conditions, now)],
            });
            (status, ingress_ips(ingress))
        }
        ServiceOutcome::Release => {
            if previous.is_none() && current.is_empty() {
                return None;
            }
            (json!({}), Vec::new())
        }
    };
    let added: Vec<String> = wanted_ips.iter().filter(|ip| !current_ips.contains(ip)).cloned().collect();
    let removed: Vec<String> = current_ips.iter().filter(|ip| !wanted_ips.contains(ip)).cloned().collect();
    if !added.is_empty() {
        events.push(EventSpec {
            warning: false,
            reason: event_reason::ADDRESSES_ASSIGNED,
            note: format!("Assigned {}", added.join(", ")),
        });
    }
    if matches!(outcome, ServiceOutcome::Release) {
        events.push(EventSpec {
            warning: false,
            reason: event_reason::ADDRESSES_RELEASED,
            note: if removed.is_empty() {
                "No longer a LoadBalancer Service handled by LB-IPAM".into()
            } else {
                format!("No longer a LoadBalancer Service handled by LB-IPAM: released {}", removed.join(", "))
            },
        });
    }
    Some(ServiceWrite {
        key: key.clone(),
        status,
        based_on: live.metadata.resource_version.clone(),
        fingerprint: format!("{outcome:?}"),
        added,
        removed,
        events,
    })
}

fn pool_events(desired: &[DesiredCondition], live: &[Condition]) -> Vec<EventSpec> {
    let mut events = Vec::new();
    let was = |t: &str| live_condition(live, t).map(|c| c.status.as_str());
    for d in desired {
        let before = was(&d.type_);
        if before == Some(d.status) {
            continue;
        }
        match (d.type_.as_str(), d.status) {
            (CONDITION_POOL_CONFLICT, "True") => {
                events.push(EventSpec { warning: true, reason: event_reason::POOL_CONFLICT, note: d.message.clone() })
            }
            (CONDITION_POOL_CONFLICT, "False") if before == Some("True") => events.push(EventSpec {
                warning: false,
                reason: event_reason::POOL_CONFLICT_RESOLVED,
                note: d.message.clone(),
            }),
            (CONDITION_BLOCKS_VALID, "False") => {
                events.push(EventSpec { warning: true, reason: event_reason::INVALID_BLOCK, note: d.message.clone() })
            }
            _ => {}
        }
    }
    events
}

fn pool_write(
    name: &str,
    desired: &[DesiredCondition],
    live: &CiliumLoadBalancerIPPool,
    now: &Time,
) -> Option<PoolWrite> {
    let existing = live.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let ours_match = desired.iter().all(|d| live_condition(&existing, &d.type_).is_some_and(|c| d.matches(c)));
    if ours_match && existing.len() == desired.len() {
        return None;
    }
    Some(PoolWrite {
        name: name.to_owned(),
        conditions: desired.iter().map(|d| stamped(d, &existing, now)).collect(),
        based_on: live.metadata.resource_version.clone(),
        fingerprint: format!("{desired:?}"),
        events: pool_events(desired, &existing),
    })
}

/// The status writes that bring the live objects to `desired`: none for an object that already says
/// it (transition times aside).
pub fn plan(desired: &DesiredState, services: &[Service], pools: &[CiliumLoadBalancerIPPool], now: &Time) -> Plan {
    let live_services: BTreeMap<ServiceKey, &Service> =
        services.iter().map(|s| (ServiceKey::new(s.namespace().unwrap_or_default(), s.name_any()), s)).collect();
    let live_pools: BTreeMap<String, &CiliumLoadBalancerIPPool> = pools.iter().map(|p| (p.name_any(), p)).collect();
    let mut out = Plan::default();
    for (key, outcome) in &desired.services {
        if let ServiceOutcome::Assign { condition, .. } = outcome {
            if condition.status != "True" {
                out.unsatisfied_services += 1;
            }
        }
        if let Some(write) = live_services.get(key).and_then(|live| service_write(key, outcome, live, now)) {
            out.services.push(write);
        }
    }
    for (name, outcome) in &desired.pools {
        if outcome.conditions.iter().any(|c| c.type_ == CONDITION_POOL_CONFLICT && c.status == "True") {
            out.conflicting_pools += 1;
        }
        if let Some(write) = live_pools.get(name).and_then(|live| pool_write(name, &outcome.conditions, live, now)) {
            out.pools.push(write);
        }
    }
    out
}

/// Aborts a spawned task when dropped, so the reflectors end with the controller.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a reflector for `api` into a new store, notifying `changed` on every watch event.
fn spawn_reflector<K>(api: Api<K>, changed: Arc<Notify>, resource: &'static str) -> (Store<K>, TaskGuard)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // Managed fields are large and never read here.
        .modify(|o| o.managed_fields_mut().clear());
    let task = async move {
        let mut events = reflector::reflector(writer, stream).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::warn!(%error, resource, "watch failed; retrying with backoff"),
            }
        }
    };
    (store, TaskGuard(tokio::spawn(task.instrument(tracing::info_span!("lbipam_reflector", resource)))))
}

async fn ready<K>(store: &Store<K>, resource: &'static str, shutdown: &CancellationToken) -> Result<bool, LbIpamError>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    tokio::select! {
        r = store.wait_until_ready() => r.map(|_| true).map_err(|_| LbIpamError::NeverSynced { resource }),
        _ = shutdown.cancelled() => Ok(false),
    }
}

fn snapshot<K: Resource + Clone + 'static>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| (**o).clone()).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ObjectKey {
    Service(ServiceKey),
    Pool(String),
}

/// The shell around [`plan`]: applies writes, publishes Events, remembers what it wrote.
struct Writer {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    /// Per object: (resourceVersion the write was based on, fingerprint) of the last successful write.
    written: HashMap<ObjectKey, (Option<String>, String)>,
}

impl Writer {
    fn already_written(&self, key: &ObjectKey, based_on: &Option<String>, fingerprint: &str) -> bool {
        self.written.get(key).is_some_and(|(rv, fp)| rv == based_on && fp == fingerprint)
    }

    async fn publish(&self, reference: &ObjectReference, events: &[EventSpec]) {
        for e in events {
            let event = Event {
                type_: if e.warning { EventType::Warning } else { EventType::Normal },
                reason: e.reason.into(),
                // The Events API caps notes at 1 kB.
                note: Some(e.note.chars().take(1000).collect()),
                action: "AssignLoadBalancerIPs".into(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&event, reference).await {
                tracing::warn!(%error, reason = e.reason, object = ?reference.name, "could not publish Event");
            }
        }
    }

    /// Applies `plan`; false when some write failed.
    async fn apply(&mut self, plan: Plan) -> bool {
        let mut clean = true;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for w in plan.services {
            let key = ObjectKey::Service(w.key.clone());
            if self.already_written(&key, &w.based_on, &w.fingerprint) {
                continue;
            }
            let api: Api<Service> = Api::namespaced(self.client.clone(), &w.key.namespace);
            let body = json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": { "name": w.key.name, "namespace": w.key.namespace },
                "status": w.status,
            });
            self.metrics.status_writes.inc();
            match api.patch_status(&w.key.name, &params, &Patch::Apply(&body)).await {
                Ok(svc) => {
                    tracing::info!(service = %w.key, added = ?w.added, removed = ?w.removed, "service status applied");
                    self.metrics.allocations.inc_by(w.added.len() as u64);
                    self.metrics.releases.inc_by(w.removed.len() as u64);
                    self.written.insert(key, (w.based_on, w.fingerprint));
                    self.publish(&svc.object_ref(&()), &w.events).await;
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    tracing::debug!(service = %w.key, "service gone before its status was written");
                }
                Err(error) => {
                    clean = false;
                    self.metrics.write_errors.inc();
                    tracing::warn!(service = %w.key, %error, "applying service status failed; will retry");
                }
            }
        }
        for w in plan.pools {
            let key = ObjectKey::Pool(w.name.clone());
            if self.already_written(&key, &w.based_on, &w.fingerprint) {
                continue;
            }
            let api: Api<CiliumLoadBalancerIPPool> = Api::all(self.client.clone());
            let body = json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumLoadBalancerIPPool",
                "metadata": { "name": w.name },
                "status": { "conditions": w.conditions },
            });
            self.metrics.status_writes.inc();
            match api.patch_status(&w.name, &params, &Patch::Apply(&body)).await {
                Ok(pool) => {
                    tracing::info!(pool = %w.name, "pool status applied");
                    self.written.insert(key, (w.based_on, w.fingerprint));
                    self.publish(&pool.object_ref(&()), &w.events).await;
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    tracing::debug!(pool = %w.name, "pool gone before its status was written");
                }
                Err(error) => {
                    clean = false;
                    self.metrics.write_errors.inc();
                    tracing::warn!(pool = %w.name, %error, "applying pool status failed; will retry");
                }
            }
        }
        clean
    }

    /// Forgets writes for objects that no longer exist.
    fn retain(&mut self, services: &[Service], pools: &[CiliumLoadBalancerIPPool]) {
        if self.written.len() <= services.len() + pools.len() {
            return;
        }
        let live: std::collections::HashSet<ObjectKey> = services
            .iter()
            .map(|s| ObjectKey::Service(ServiceKey::new(s.namespace().unwrap_or_default(), s.name_any())))
            .chain(pools.iter().map(|p| ObjectKey::Pool(p.name_any())))
            .collect();
        self.written.retain(|k, _| live.contains(k));
    }
}

/// Runs LB-IPAM until `shutdown`. Returns an error only when a watch can never start.
pub async fn run(
    client: Client,
    options: Options,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), LbIpamError> {
    let changed = Arc::new(Notify::new());
    let (pools, _pool_task) =
        spawn_reflector(Api::<CiliumLoadBalancerIPPool>::all(client.clone()), changed.clone(), "pools");
    if !ready(&pools, "pools", &shutdown).await? {
        return Ok(());
    }
    // Dormant: no Service cache (and no writes) until a pool exists.
    while pools.is_empty() {
        tracing::debug!("no CiliumLoadBalancerIPPool yet: LB-IPAM dormant");
        tokio::select! {
            _ = changed.notified() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!("a CiliumLoadBalancerIPPool exists: LB-IPAM active");
    let (services, _service_task) = spawn_reflector(Api::<Service>::all(client.clone()), changed.clone(), "services");
    if !ready(&services, "services", &shutdown).await? {
        return Ok(());
    }

    let reporter = Reporter { controller: REPORTING_CONTROLLER.into(), instance: options.instance.clone() };
    let mut writer = Writer {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: metrics.clone(),
        written: HashMap::new(),
    };
    let mut retry: Option<Duration> = None;
    loop {
        let pool_objects = snapshot(&pools);
        let service_objects = snapshot(&services);
        let span = tracing::info_span!("lbipam_pass", pools = pool_objects.len(), services = service_objects.len());
        let clean = async {
            let desired = desired_state(&pool_objects, &service_objects, &options.config);
            let plan = plan(&desired, &service_objects, &pool_objects, &Time(Timestamp::now()));
            metrics.passes.inc();
            metrics.conflicting_pools.set(plan.conflicting_pools);
            metrics.unsatisfied_services.set(plan.unsatisfied_services);
            tracing::debug!(service_writes = plan.services.len(), pool_writes = plan.pools.len(), "planned");
            let clean = writer.apply(plan).await;
            writer.retain(&service_objects, &pool_objects);
            clean
        }
        .instrument(span)
        .await;
        retry = match (clean, retry) {
            (true, _) => None,
            (false, None) => Some(options.retry_min),
            (false, Some(d)) => Some((d * 2).min(options.retry_max)),
        };
        // Wait for a change (or the retry), then let the burst settle.
        let retry_sleep = tokio::time::sleep(retry.unwrap_or(Duration::MAX / 4));
        tokio::select! {
            _ = changed.notified() => {}
            _ = retry_sleep, if retry.is_some() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        tokio::select! {
            _ = tokio::time::sleep(options.debounce) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::cilium_load_balancer_ip_pool::{LbIpBlock, LbIpPoolSpec};
    use crate::ipam::lbipam::reason;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec, ServiceStatus};
    use kube::api::ObjectMeta;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn pool(name: &str, created: i64, cidr: &str) -> CiliumLoadBalancerIPPool {
        let spec = LbIpPoolSpec {
            blocks: vec![LbIpBlock { cidr: Some(cidr.into()), ..Default::default() }],
            ..Default::default()
        };
        let mut p = CiliumLoadBalancerIPPool::new(name, spec);
        p.metadata.creation_timestamp = Some(time(created));
        p.metadata.resource_version = Some("1".into());
        p
    }

    fn svc(name: &str, type_: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                creation_timestamp: Some(time(10)),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// What the apply of `plan` makes of the objects (status replaced by the applied fields, as for
    /// objects this manager alone writes).
    fn applied(services: &mut [Service], pools: &mut [CiliumLoadBalancerIPPool], plan: &Plan) {
        for w in &plan.services {
            let s = services.iter_mut().find(|s| s.name_any() == w.key.name).unwrap();
            s.status = Some(serde_json::from_value::<ServiceStatus>(w.status.clone()).unwrap());
        }
        for w in &plan.pools {
            let p = pools.iter_mut().find(|p| p.name_any() == w.name).unwrap();
            p.status =
                Some(crate::crds::cilium_load_balancer_ip_pool::LbIpPoolStatus { conditions: w.conditions.clone() });
        }
    }

    fn run_plan(pools: &[CiliumLoadBalancerIPPool], services: &[Service], now: i64) -> Plan {
        let desired = desired_state(pools, services, &LbIpamConfig::default());
        plan(&desired, services, pools, &time(now))
    }

    #[test]
    fn a_pass_over_its_own_output_writes_nothing_and_keeps_transition_times() {
        let mut pools = vec![pool("a", 1, "10.0.0.0/30")];
        let mut services = vec![svc("web", "LoadBalancer"), svc("internal", "ClusterIP")];
        let first = run_plan(&pools, &services, 100);
        assert_eq!(first.services.len(), 1, "only the LoadBalancer Service is written: {first:?}");
        assert_eq!(first.services[0].added, vec!["10.0.0.0".to_string()]);
        assert_eq!(first.pools.len(), 1);
        assert!(first.services[0].events.iter().any(|e| e.reason == event_reason::ADDRESSES_ASSIGNED));
        applied(&mut services, &mut pools, &first);

        let second = run_plan(&pools, &services, 200);
        assert!(second.services.is_empty() && second.pools.is_empty(), "fixed point: {second:?}");

        // A change that keeps the condition's status keeps its transition time.
        services.push(svc("api", "LoadBalancer"));
        let third = run_plan(&pools, &services, 300);
        assert_eq!(third.services.len(), 1);
        let pool_write = third.pools.iter().find(|p| p.name == "a").expect("counts changed");
        let used = pool_write.conditions.iter().find(|c| c.type_ == "cilium.io/IPsUsed").unwrap();
        assert_eq!(used.message, "2");
        assert_eq!(used.last_transition_time, time(100), "status Unknown unchanged: time kept");
    }

    #[test]
    fn unsatisfied_requests_and_conflicts_raise_warnings_once() {
        let mut pools = vec![pool("old", 1, "10.0.0.0/31"), pool("new", 2, "10.0.0.0/24")];
        let mut services = vec![svc("a", "LoadBalancer"), svc("b", "LoadBalancer"), svc("c", "LoadBalancer")];
        let first = run_plan(&pools, &services, 100);
        assert_eq!(first.conflicting_pools, 1);
        assert_eq!(first.unsatisfied_services, 1, "a /31 serves two of three");
        let new = first.pools.iter().find(|p| p.name == "new").unwrap();
        assert_eq!(new.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec![event_reason::POOL_CONFLICT]);
        let c = first.services.iter().find(|w| w.key.name == "c").unwrap();
        assert!(c.events.iter().any(|e| e.warning && e.note.starts_with(reason::OUT_OF_IPS)), "{c:?}");
        applied(&mut services, &mut pools, &first);
        assert!(run_plan(&pools, &services, 200).services.is_empty(), "no repeated writes or events");

        // The conflict goes away with the older pool: resolved, and `c` gets an address.
        pools.remove(0);
        let second = run_plan(&pools, &services, 300);
        let new = second.pools.iter().find(|p| p.name == "new").unwrap();
        assert_eq!(new.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec![event_reason::POOL_CONFLICT_RESOLVED]);
        assert_eq!(second.conflicting_pools, 0);
    }

    #[test]
    fn a_service_that_stops_qualifying_is_released_once() {
        let mut pools = vec![pool("a", 1, "10.0.0.0/24")];
        let mut services = vec![svc("web", "LoadBalancer")];
        let first = run_plan(&pools, &services, 100);
        applied(&mut services, &mut pools, &first);
        services[0].spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let second = run_plan(&pools, &services, 200);
        assert_eq!(second.services.len(), 1);
        let w = &second.services[0];
        assert_eq!(w.status, json!({}), "an empty apply drops what this manager owned");
        assert_eq!(w.removed, vec!["10.0.0.0".to_string()]);
        assert!(w.events.iter().any(|e| e.reason == event_reason::ADDRESSES_RELEASED));
        // After the apply (our fields gone), nothing more to do.
        services[0].status = None;
        assert!(run_plan(&pools, &services, 300).services.is_empty());
    }
}
