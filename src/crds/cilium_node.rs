//! `CiliumNode` (cilium.io/v2, cluster-scoped): one per node; the agent publishes addresses and IPAM
//! needs, the operator allocates pod CIDRs (cluster-pool) or pool CIDRs (multi-pool) in `spec.ipam`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumNode",
    plural = "ciliumnodes",
    singular = "ciliumnode",
    shortname = "cn",
    shortname = "ciliumn",
    category = "cilium",
    status = "CiliumNodeStatus",
    printcolumn = r#"{"name":"CiliumInternalIP","type":"string","jsonPath":".spec.addresses[?(@.type==\"CiliumInternalIP\")].ip"}"#,
    printcolumn = r#"{"name":"InternalIP","type":"string","jsonPath":".spec.addresses[?(@.type==\"InternalIP\")].ip"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "kebab-case")]
pub struct CiliumNodeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootid: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthAddressing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<HealthAddressing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodeidentity: Option<i64>,
    /// Cloud-provider IPAM sections: kept as-is, beeline does not implement cloud IPAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub eni: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub azure: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub alibaba_cloud: Option<serde_json::Value>,
}

/// Address type names used by Cilium.
pub const ADDRESS_CILIUM_INTERNAL_IP: &str = "CiliumInternalIP";
pub const ADDRESS_INTERNAL_IP: &str = "InternalIP";
pub const ADDRESS_EXTERNAL_IP: &str = "ExternalIP";

/// A node address (`InternalIP`, `ExternalIP`, `CiliumInternalIP`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeAddress {
    #[serde(rename = "type", default)]
    pub address_type: String,
    #[serde(default)]
    pub ip: String,
}

/// Health (or ingress) endpoint addresses of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthAddressing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EncryptionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<i64>,
}

/// IPAM part of the node spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct IpamSpec {
    /// Pod CIDRs allocated to this node (cluster-pool / kubernetes IPAM).
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// IPs available for allocation (cloud IPAM): IP → owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool: BTreeMap<String, AllocationIp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ipv6_pool: BTreeMap<String, AllocationIp>,
    /// Multi-pool IPAM: what the agent requests and what the operator allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<IpamPoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_allocate: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_allocate: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pre_allocate: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_above_watermark: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub static_ip_tags: BTreeMap<String, String>,
}

/// Who holds an IP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllocationIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// Multi-pool IPAM requests and allocations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpamPoolSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested: Vec<IpamPoolRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocated: Vec<IpamPoolAllocation>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpamPoolRequest {
    #[schemars(length(min = 1))]
    pub pool: String,
    #[serde(default)]
    pub needed: IpamPoolDemand,
}

/// How many addresses per family the agent needs from a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct IpamPoolDemand {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ipv4_addrs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ipv6_addrs: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IpamPoolAllocation {
    #[schemars(length(min = 1))]
    pub pool: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::cidr_list")]
    pub cidrs: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CiliumNodeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub eni: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub azure: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "alibaba-cloud")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub alibaba_cloud: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct IpamStatus {
    /// IPs in use on the node: IP → owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub used: BTreeMap<String, AllocationIp>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ipv6_used: BTreeMap<String, AllocationIp>,
    /// State of each pod CIDR, as reported by the agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_cidrs: BTreeMap<String, PodCidrStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_status: Option<OperatorStatus>,
    /// IP release handshake (cloud IPAM): IP → state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub release_ips: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assigned_static_ip: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PodCidrStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodCidrState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PodCidrState {
    Released,
    Depleted,
    InUse,
}

/// Errors the operator reports to the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OperatorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CiliumNode {
    /// The first address of the given type (`CiliumInternalIP`, `InternalIP`, ...).
    pub fn address(&self, address_type: &str) -> Option<&str> {
        self.spec.addresses.iter().find(|a| a.address_type == address_type).map(|a| a.ip.as_str())
    }
}
