//! The policy controller's pure core: snapshots of policies, namespaces, identities and local endpoints
//! → the policy map rows and enforcement flags of every local endpoint, plus each policy's `Valid`
//! condition.
//!
//! Passes are incremental in what they recompute: a policy change recompiles every endpoint (it may
//! change which endpoints a rule selects), an identity change recompiles only the endpoints whose
//! compiled policy used a selector that identity's arrival or departure changed (the selector cache
//! reports those), an endpoint change recompiles that endpoint. The rows of endpoints not recompiled are
//! reused as they are, and the map manager writes only rows that differ from the kernel's.

use std::collections::{BTreeMap, BTreeSet};

use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo};
use beeline_common::policy::{
    PolicyEndpointConfig, PolicyEndpointKey, PolicyEntry, PolicyKey as BpfPolicyKey, DIR_EGRESS, DIR_INGRESS,
    EP_F_EGRESS_ENFORCE, EP_F_INGRESS_ENFORCE,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::local_endpoints::LocalEndpoint;
use crate::crds::{CiliumClusterwideNetworkPolicy, CiliumIdentity, CiliumNetworkPolicy};
use crate::policy::compiler::NamedPorts;
use crate::policy::identity::{
    pod_labels, reserved_identities, CidrIdentityAllocator, Label, LabelSet, PodIdentitySource,
};
use crate::policy::selector_cache::SelectorChanges;
use crate::policy::{
    compile_endpoint, CompilerConfig, Direction, Endpoint, EndpointPolicy, Identity, NumericIdentity, ParseContext,
    Policy, PolicyRepository, PolicySource, SelectorCache,
};

/// Everything one pass reads (complete snapshots).
pub struct PolicyInputs<'a> {
    pub cnps: &'a [CiliumNetworkPolicy],
    pub ccnps: &'a [CiliumClusterwideNetworkPolicy],
    pub knps: &'a [NetworkPolicy],
    pub namespaces: &'a [Namespace],
    pub identities: &'a [CiliumIdentity],
    pub endpoints: &'a BTreeMap<u16, LocalEndpoint>,
}

/// What a policy's `Valid` condition should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validity {
    pub valid: bool,
    pub message: String,
}

/// Cilium's message for an accepted policy.
pub const VALID_MESSAGE: &str = "Policy validation succeeded";

/// One pass's output.
#[derive(Debug, Default)]
pub struct PassOutput {
    pub rows: BTreeMap<BpfPolicyKey, PolicyEntry>,
    pub enforcement: BTreeMap<PolicyEndpointKey, PolicyEndpointConfig>,
    /// Endpoints compiled in this pass (the rest reused their previous result).
    pub recompiled: BTreeSet<u16>,
    /// CNP and CCNP conditions (Kubernetes NetworkPolicies have no status to write).
    pub validity: BTreeMap<PolicySource, Validity>,
    /// The IPv4 prefixes of the node-local CIDR identities, for the ipcache: the datapath learns a
    /// destination's CIDR identity there, as in Cilium (without them a CIDR rule never matches).
    pub ipcache: BTreeMap<IpcacheKey, RemoteEndpointInfo>,
    /// Each endpoint's enforcement by (namespace, pod), for its CiliumEndpoint's `status.policy`.
    pub endpoint_status: BTreeMap<(String, String), Enforcing>,
}

/// Whether an endpoint enforces each direction (CiliumEndpoint `status.policy.{ingress,egress}.enforcing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforcing {
    pub ingress: bool,
    pub egress: bool,
}

impl Enforcing {
    pub fn to_status(self) -> crate::crds::cilium_endpoint::EndpointPolicy {
        crate::crds::cilium_endpoint::EndpointPolicy::enforcing(self.ingress, self.egress)
    }
}

#[derive(Debug)]
pub struct PolicyState {
    compiler: CompilerConfig,
    parse: ParseContext,
    repo: PolicyRepository,
    /// Parse results by source, to detect policy changes and to log each problem once.
    parsed: BTreeMap<PolicySource, Result<Policy, String>>,
    cache: SelectorCache,
    cidr: CidrIdentityAllocator,
    /// Node-local CIDR identities of the accepted policies' prefixes.
    cidr_ids: BTreeMap<NumericIdentity, Identity>,
    /// Identities fed to the cache beyond the reserved ones (cluster, local-endpoint and CIDR).
    known: BTreeMap<NumericIdentity, Identity>,
    endpoints: BTreeMap<u16, LocalEndpoint>,
    compiled: BTreeMap<u16, EndpointPolicy>,
}

impl PolicyState {
    pub fn new(compiler: CompilerConfig, parse: ParseContext) -> Self {
        Self {
            compiler,
            parse,
            repo: PolicyRepository::default(),
            parsed: BTreeMap::new(),
            cache: SelectorCache::new(reserved_identities()),
            cidr: CidrIdentityAllocator::default(),
            cidr_ids: BTreeMap::new(),
            known: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            compiled: BTreeMap::new(),
        }
    }

    pub fn pass(&mut self, inputs: &PolicyInputs<'_>) -> PassOutput {
        let mut out = PassOutput::default();
        let policies_changed = self.update_policies(inputs, &mut out.validity);
        let (changes, changed_ids) = self.update_identities(inputs, policies_changed);

        self.compiled.retain(|id, _| inputs.endpoints.contains_key(id));
        let previous = std::mem::replace(&mut self.endpoints, inputs.endpoints.clone());
        for (id, ep) in inputs.endpoints {
            let stale = policies_changed
                || previous.get(id) != Some(ep)
                || changed_ids.contains(&NumericIdentity(ep.identity))
                || self.compiled.get(id).is_none_or(|c| c.affected_by(&changes));
            if stale {
                let endpoint = Endpoint { identity: NumericIdentity(ep.identity), ..Default::default() };
                let policy =
                    compile_endpoint(&self.repo, &mut self.cache, &self.compiler, &endpoint, &NamedPorts::new());
                self.compiled.insert(*id, policy);
                out.recompiled.insert(*id);
            }
        }
        if policies_changed {
            let in_use: BTreeSet<_> = self.compiled.values().flat_map(|c| c.selectors.iter().cloned()).collect();
            self.cache.retain_selectors(&in_use);
        }
        for (id, policy) in &self.compiled {
            out.rows.extend(endpoint_rows(u32::from(*id), policy));
            let mut flags = 0;
            if policy.ingress_enforcing {
                flags |= EP_F_INGRESS_ENFORCE;
            }
            if policy.egress_enforcing {
                flags |= EP_F_EGRESS_ENFORCE;
            }
            out.enforcement.insert(PolicyEndpointKey { endpoint_id: u32::from(*id) }, PolicyEndpointConfig { flags });
            if let Some(ep) = self.endpoints.get(id).filter(|ep| !ep.pod.is_empty()) {
                let enforcing = Enforcing { ingress: policy.ingress_enforcing, egress: policy.egress_enforcing };
                out.endpoint_status.insert((ep.namespace.clone(), ep.pod.clone()), enforcing);
            }
        }
        out.ipcache = cidr_ipcache_rows(self.cidr_ids.values());
        out
    }

    /// Parses every policy; returns whether the accepted set changed.
    fn update_policies(&mut self, inputs: &PolicyInputs<'_>, validity: &mut BTreeMap<PolicySource, Validity>) -> bool {
        let mut parsed: BTreeMap<PolicySource, Result<Policy, String>> = BTreeMap::new();
        for cnp in inputs.cnps {
            let source = PolicySource::Cnp {
                namespace: cnp.metadata.namespace.clone().unwrap_or_default(),
                name: cnp.metadata.name.clone().unwrap_or_default(),
            };
            parsed.insert(source, Policy::from_cnp(cnp, &self.parse).map_err(|e| e.to_string()));
        }
        for ccnp in inputs.ccnps {
            let source = PolicySource::Ccnp { name: ccnp.metadata.name.clone().unwrap_or_default() };
            parsed.insert(source, Policy::from_ccnp(ccnp, &self.parse).map_err(|e| e.to_string()));
        }
        for knp in inputs.knps {
            let source = PolicySource::Knp {
                namespace: knp.metadata.namespace.clone().unwrap_or_default(),
                name: knp.metadata.name.clone().unwrap_or_default(),
            };
            parsed.insert(source, Policy::from_knp(knp).map_err(|e| e.to_string()));
        }
        for (source, result) in &parsed {
            if self.parsed.get(source) != Some(result) {
                match result {
                    Err(e) => tracing::warn!(policy = %source, error = %e, "policy rejected"),
                    Ok(p) if !p.warnings.is_empty() => {
                        tracing::warn!(policy = %source, not_enforced = ?p.warnings, "policy accepted with unsupported features")
                    }
                    Ok(_) => tracing::info!(policy = %source, "policy accepted"),
                }
            }
            if !matches!(source, PolicySource::Knp { .. }) {
                validity.insert(source.clone(), validity_of(result));
            }
        }
        let accepted = |m: &BTreeMap<PolicySource, Result<Policy, String>>| -> Vec<Policy> {
            m.values().filter_map(|r| r.as_ref().ok().cloned()).collect()
        };
        let changed = accepted(&self.parsed) != accepted(&parsed);
        if changed {
            self.repo = PolicyRepository::default();
            for policy in accepted(&parsed) {
                self.repo.upsert(policy);
            }
        }
        self.parsed = parsed;
        changed
    }

    /// Brings the selector cache's identities to the inputs'. Returns the selector changes and the
    /// identities that were added, removed or relabelled.
    fn update_identities(
        &mut self,
        inputs: &PolicyInputs<'_>,
        policies_changed: bool,
    ) -> (SelectorChanges, BTreeSet<NumericIdentity>) {
        let mut desired: BTreeMap<NumericIdentity, Identity> = BTreeMap::new();
        for ci in inputs.identities {
            let Some(id) = ci.numeric_id() else { continue };
            let labels: LabelSet = ci.security_labels.iter().map(|(k, v)| parse_label(k, v)).collect();
            desired.insert(NumericIdentity(id), Identity { id: NumericIdentity(id), labels, cidrs: vec![] });
        }
        // A local endpoint whose CiliumIdentity has not arrived yet: its labels as the agent derives them.
        let ns_labels: BTreeMap<&str, Vec<(&str, &str)>> = inputs
            .namespaces
            .iter()
            .filter_map(|ns| {
                let labels = ns.metadata.labels.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Some((ns.metadata.name.as_deref()?, labels))
            })
            .collect();
        for ep in inputs.endpoints.values() {
            let id = NumericIdentity(ep.identity);
            if desired.contains_key(&id) || id.is_reserved() || id == NumericIdentity::ANY {
                continue;
            }
            let pod: Vec<(&str, &str)> = ep.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let src = PodIdentitySource {
                namespace: &ep.namespace,
                pod_labels: &pod,
                namespace_labels: ns_labels.get(ep.namespace.as_str()).map_or(&[], Vec::as_slice),
                service_account: "",
                cluster: &self.parse.cluster_name,
            };
            desired.insert(id, Identity { id, labels: pod_labels(&src), cidrs: vec![] });
        }
        if policies_changed {
            let delta = self.cidr.sync(&self.repo.cidr_prefixes());
            for id in delta.removed {
                self.cidr_ids.remove(&id);
            }
            for identity in delta.added {
                self.cidr_ids.insert(identity.id, identity);
            }
        }
        desired.extend(self.cidr_ids.iter().map(|(id, i)| (*id, i.clone())));

        let mut changed_ids = BTreeSet::new();
        let removed: Vec<NumericIdentity> = self.known.keys().filter(|id| !desired.contains_key(id)).copied().collect();
        let upserts: Vec<Identity> = desired.values().filter(|i| self.known.get(&i.id) != Some(*i)).cloned().collect();
        changed_ids.extend(removed.iter().copied());
        changed_ids.extend(upserts.iter().map(|i| i.id));
        let mut changes = self.cache.remove_identities(removed);
        for (selector, delta) in self.cache.upsert_identities(upserts) {
            let entry = changes.entry(selector).or_default();
            entry.added.extend(delta.added);
            entry.removed.extend(delta.removed);
        }
        self.known = desired;
        (changes, changed_ids)
    }

    /// `beeline endpoint list`: id, identity, enforcement, selecting policies.
    pub fn endpoints_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .endpoints
            .values()
            .map(|ep| {
                let c = self.compiled.get(&ep.id);
                serde_json::json!({
                    "id": ep.id, "identity": ep.identity, "pod": format!("{}/{}", ep.namespace, ep.pod),
                    "ingress_enforcing": c.is_some_and(|c| c.ingress_enforcing),
                    "egress_enforcing": c.is_some_and(|c| c.egress_enforcing),
                    "policies": c.map(|c| c.policies.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap_or_default(),
                })
            })
            .collect();
        serde_json::Value::Array(rows)
    }

    /// `beeline policy selectors`: each cached selector and the identities it selects.
    pub fn selectors_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .cache
            .selectors()
            .map(|(s, ids)| serde_json::json!({"selector": s.to_string(), "identities": ids.iter().map(|i| i.0).collect::<Vec<_>>()}))
            .collect();
        serde_json::Value::Array(rows)
    }

    /// `beeline policy get`: every policy and whether it was accepted.
    pub fn policies_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .parsed
            .iter()
            .map(|(source, result)| {
                let v = validity_of(result);
                serde_json::json!({"policy": source.to_string(), "valid": v.valid, "message": v.message})
            })
            .collect();
        serde_json::Value::Array(rows)
    }
}

fn validity_of(result: &Result<Policy, String>) -> Validity {
    match result {
        Err(e) => Validity { valid: false, message: e.clone() },
        Ok(p) if p.warnings.is_empty() => Validity { valid: true, message: VALID_MESSAGE.into() },
        Ok(p) => Validity { valid: true, message: format!("{VALID_MESSAGE}; not enforced: {}", p.warnings.join("; ")) },
    }
}

/// `k8s:app` + `web` → the label; a key without a source counts as `unspec`, as in Cilium.
fn parse_label(key: &str, value: &str) -> Label {
    match key.split_once(':') {
        Some((source, key)) => Label::new(source, key, value),
        None => Label::new("unspec", key, value),
    }
}

/// The kernel rows of one endpoint's compiled policy.
pub fn endpoint_rows(endpoint_id: u32, policy: &EndpointPolicy) -> Vec<(BpfPolicyKey, PolicyEntry)> {
    policy
        .map
        .entries()
        .iter()
        .map(|(k, v)| {
            let dir = match k.direction {
                Direction::Ingress => DIR_INGRESS,
                Direction::Egress => DIR_EGRESS,
            };
            let key = if k.protocol == 0 {
                BpfPolicyKey::l3(endpoint_id, k.identity.0, dir)
            } else {
                BpfPolicyKey::l4(endpoint_id, k.identity.0, dir, k.protocol, k.port, k.port_prefix_len)
            };
            (key, if v.deny { PolicyEntry::DENY } else { PolicyEntry::ALLOW })
        })
        .collect()
}

/// Ipcache rows for CIDR identities: each IPv4 prefix → its identity (no tunnel endpoint: a CIDR is
/// outside the cluster). IPv6 prefixes wait for the IPv6 datapath.
fn cidr_ipcache_rows<'a>(identities: impl Iterator<Item = &'a Identity>) -> BTreeMap<IpcacheKey, RemoteEndpointInfo> {
    identities
        .flat_map(|identity| identity.cidrs.iter().map(move |net| (identity.id, net)))
        .filter_map(|(id, net)| match net {
            ipnet::IpNet::V4(v4) => Some((
                IpcacheKey::ipv4(u32::from(v4.network()).to_be(), u32::from(v4.prefix_len())),
                RemoteEndpointInfo { sec_identity: id.0, ..Default::default() },
            )),
            ipnet::IpNet::V6(_) => None,
        })
        .collect()
}

#[cfg(test)]
#[path = "policy_state_tests.rs"]
mod tests;
