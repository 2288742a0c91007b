//! The policy controller's watch loop: reflectors over CiliumNetworkPolicies, CiliumClusterwide-
//! NetworkPolicies, NetworkPolicies, Namespaces and CiliumIdentities, plus the local endpoints channel,
//! feed debounced passes of [`PolicyState::pass`]; the rows go to the policy tables of the map manager
//! and each CNP/CCNP gets its `Valid` condition.
//!
//! With the rules of [`crate::controllers::watch`], no pass runs before every reflector has listed once
//! and the endpoint manager has published its endpoints: the first pass lets the manager prune rows nobody wants.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::local_endpoints::LocalEndpointsRx;
use super::policy_state::{Enforcing, PolicyInputs, PolicyState, Validity};
use crate::controllers::watch::{snapshot, WatchError, Watches};
use crate::crds::cilium_endpoint::CiliumEndpoint;
use crate::crds::cilium_network_policy::{PolicyStatus, CONDITION_VALID};
use crate::crds::{CiliumClusterwideNetworkPolicy, CiliumIdentity, CiliumNetworkPolicy};
use crate::datapath::manager::maps::{Ipcache, PolicyEndpoints, PolicyMap};
use crate::datapath::manager::{Owner, TableHandle};
use crate::policy::PolicySource;

/// The policy tables the controller writes.
#[derive(Clone)]
pub struct PolicyTables {
    pub entries: TableHandle<PolicyMap>,
    pub endpoints: TableHandle<PolicyEndpoints>,
    /// The ipcache (the remote group's table): the policy owner's rows are the CIDR identities.
    pub ipcache: TableHandle<Ipcache>,
}

/// What the CLI reads through the agent API: the last pass's endpoints, selectors and policies.
#[derive(Clone, Debug, Default)]
pub struct PolicyView {
    pub endpoints: serde_json::Value,
    pub selectors: serde_json::Value,
    pub policies: serde_json::Value,
    /// Each local endpoint's enforcement by (namespace, pod): what its CiliumEndpoint shows.
    pub enforcing: BTreeMap<(String, String), Enforcing>,
}

pub type SharedPolicyView = Arc<Mutex<PolicyView>>;

pub struct PolicyController {
    pub state: PolicyState,
    pub owner: Owner,
    pub tables: PolicyTables,
    pub view: SharedPolicyView,
    pub debounce: Duration,
}

/// Runs until `shutdown`.
pub async fn run(
    client: Client,
    mut ctl: PolicyController,
    endpoints: LocalEndpointsRx,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let all = watcher::Config::default;
    let mut watches = Watches::new("policy");
    let cnps = watches.add("CiliumNetworkPolicy", Api::<CiliumNetworkPolicy>::all(client.clone()), all());
    let ccnps = watches.add(
        "CiliumClusterwideNetworkPolicy",
        Api::<CiliumClusterwideNetworkPolicy>::all(client.clone()),
        all(),
    );
    let knps = watches.add("NetworkPolicy", Api::<NetworkPolicy>::all(client.clone()), all());
    let namespaces = watches.add("Namespace", Api::<Namespace>::all(client.clone()), all());
    let identities = watches.add("CiliumIdentity", Api::<CiliumIdentity>::all(client.clone()), all());
    // Read to compare each endpoint's `status.policy` before writing it (and to write it again when
    // the endpoint API (re)creates the object).
    let ceps = watches.add("CiliumEndpoint", Api::<CiliumEndpoint>::all(client.clone()), all());
    // The endpoint manager publishes once it knows its endpoints (after a restart: restored ones),
    // so the first pass never prunes the rows of endpoints that are still there.
    watches.add_channel("LocalEndpoints", endpoints.clone());
    let mut passes: u64 = 0;
    watches
        .run(ctl.debounce, shutdown, || {
            let span = tracing::info_span!("policy_pass", pass = passes).entered();
            let (cnps, ccnps, knps, namespaces, identities) =
                (snapshot(&cnps), snapshot(&ccnps), snapshot(&knps), snapshot(&namespaces), snapshot(&identities));
            let eps = endpoints.borrow().clone();
            let inputs = PolicyInputs {
                cnps: &cnps,
                ccnps: &ccnps,
                knps: &knps,
                namespaces: &namespaces,
                identities: &identities,
                endpoints: &eps,
            };
            let out = ctl.state.pass(&inputs);
            ctl.tables.entries.replace_owner(&ctl.owner, out.rows.iter().map(|(k, v)| (*k, *v)));
            ctl.tables.endpoints.replace_owner(&ctl.owner, out.enforcement.iter().map(|(k, v)| (*k, *v)));
            ctl.tables.ipcache.replace_owner(&ctl.owner, out.ipcache.iter().map(|(k, v)| (*k, *v)));
            if passes == 0 {
                ctl.owner.initial_pass_done();
            }
            passes += 1;
            tracing::debug!(rows = out.rows.len(), recompiled = out.recompiled.len(), "policy pass submitted");
            *ctl.view.lock().unwrap() = PolicyView {
                endpoints: ctl.state.endpoints_json(),
                selectors: ctl.state.selectors_json(),
                policies: ctl.state.policies_json(),
                enforcing: out.endpoint_status.clone(),
            };
            drop(span);
            let changed = endpoint_status_changes(&snapshot(&ceps), out.endpoint_status);
            let (client, validity) = (client.clone(), out.validity);
            async move {
                write_conditions(&client, &cnps, &ccnps, &validity).await;
                write_endpoint_status(&client, changed).await;
                None
            }
        })
        .await
}

/// The `Valid` condition as Cilium writes it (empty reason), keeping the transition time when the
/// status does not flip.
fn condition(validity: &Validity, current: Option<&Condition>, generation: Option<i64>) -> Condition {
    let status = if validity.valid { "True" } else { "False" };
    let last_transition_time = match current {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    Condition {
        type_: CONDITION_VALID.into(),
        status: status.into(),
        message: validity.message.clone(),
        reason: String::new(),
        last_transition_time,
        observed_generation: generation,
    }
}

fn needs_update(status: Option<&PolicyStatus>, validity: &Validity) -> Option<Option<Condition>> {
    let current = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_VALID));
    let want = if validity.valid { "True" } else { "False" };
    match current {
        Some(c) if c.status == want && c.message == validity.message => None,
        other => Some(other.cloned()),
    }
}

/// Writes the `Valid` conditions that differ from what the objects carry. Failures are logged and
/// retried on the next pass (the status write is what changes the object, so a pass follows).
async fn write_conditions(
    client: &Client,
    cnps: &[CiliumNetworkPolicy],
    ccnps: &[CiliumClusterwideNetworkPolicy],
    validity: &BTreeMap<PolicySource, Validity>,
) {
    for cnp in cnps {
        let (Some(ns), Some(name)) = (cnp.metadata.namespace.as_deref(), cnp.metadata.name.as_deref()) else {
            continue;
        };
        let source = PolicySource::Cnp { namespace: ns.into(), name: name.into() };
        let Some(v) = validity.get(&source) else { continue };
        if let Some(current) = needs_update(cnp.status.as_ref(), v) {
            let cond = condition(v, current.as_ref(), cnp.metadata.generation);
            let api: Api<CiliumNetworkPolicy> = Api::namespaced(client.clone(), ns);
            patch_condition(&api, name, cond, &source).await;
        }
    }
    for ccnp in ccnps {
        let Some(name) = ccnp.metadata.name.as_deref() else { continue };
        let source = PolicySource::Ccnp { name: name.into() };
        let Some(v) = validity.get(&source) else { continue };
        if let Some(current) = needs_update(ccnp.status.as_ref(), v) {
            let cond = condition(v, current.as_ref(), ccnp.metadata.generation);
            let api: Api<CiliumClusterwideNetworkPolicy> = Api::all(client.clone());
            patch_condition(&api, name, cond, &source).await;
        }
    }
}

/// The local endpoints whose CiliumEndpoint exists and shows another `status.policy` than `desired`
/// (compare before write). A CiliumEndpoint not created yet is left out: its creation is a watch
/// event, and the pass it triggers writes it.
fn endpoint_status_changes(
    ceps: &[CiliumEndpoint],
    desired: BTreeMap<(String, String), Enforcing>,
) -> Vec<((String, String), Enforcing)> {
    let current: BTreeMap<(String, String), Option<_>> = ceps
        .iter()
        .map(|c| {
            let key = (c.metadata.namespace.clone().unwrap_or_default(), c.metadata.name.clone().unwrap_or_default());
            (key, c.status.as_ref().and_then(|s| s.policy.clone()))
        })
        .collect();
    desired
        .into_iter()
        .filter(|(key, e)| matches!(current.get(key), Some(policy) if policy.as_ref() != Some(&e.to_status())))
        .collect()
}

/// Merges `status.policy` into each changed endpoint's CiliumEndpoint (Cilium's CRD has no status
/// subresource: the object itself is patched). A missing CiliumEndpoint is not an error: the
/// endpoint API creates it with the enforcement already in it.
async fn write_endpoint_status(client: &Client, changed: Vec<((String, String), Enforcing)>) {
    for ((namespace, pod), enforcing) in changed {
        let api: Api<CiliumEndpoint> = Api::namespaced(client.clone(), &namespace);
        let patch = serde_json::json!({ "status": { "policy": enforcing.to_status() } });
        match api.patch(&pod, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(endpoint = %format!("{namespace}/{pod}"), error = %e, "cannot write the CiliumEndpoint's policy status")
            }
        }
    }
}

async fn patch_condition<K>(api: &Api<K>, name: &str, cond: Condition, source: &PolicySource)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({ "status": { "conditions": [cond] } });
    if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::warn!(policy = %source, error = %e, "cannot write the Valid condition; retrying on the next pass");
    }
}

#[cfg(test)]
#[path = "policy_watch_tests.rs"]
mod tests;
