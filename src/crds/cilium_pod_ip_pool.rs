//! `CiliumPodIPPool` (cilium.io/v2alpha1, cluster-scoped): a pool for multi-pool IPAM.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;
use super::selector::LabelSelector;

#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2alpha1",
    kind = "CiliumPodIPPool",
    plural = "ciliumpodippools",
    singular = "ciliumpodippool",
    shortname = "cpip",
    category = "cilium"
)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4PoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6PoolSpec>,
    /// Pods this pool may serve (by pod labels); all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces this pool may serve; all when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// IPv4 CIDRs of the pool and the size of the blocks handed to nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv4PoolSpec {
    #[schemars(schema_with = "schema::cidr_list_non_empty")]
    pub cidrs: Vec<String>,
    #[schemars(range(min = 1, max = 32))]
    pub mask_size: u8,
}

/// IPv6 CIDRs of the pool and the size of the blocks handed to nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ipv6PoolSpec {
    #[schemars(schema_with = "schema::cidr_list_non_empty")]
    pub cidrs: Vec<String>,
    #[schemars(range(min = 1, max = 128))]
    pub mask_size: u8,
}

/// Annotation selecting a pool for a pod or namespace.
pub const POOL_ANNOTATION: &str = "ipam.cilium.io/ip-pool";
