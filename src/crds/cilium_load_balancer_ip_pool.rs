//! `CiliumLoadBalancerIPPool` (cluster-scoped): addresses LB-IPAM hands to LoadBalancer services.
//! Stored as cilium.io/v2; v2alpha1 is still served (deprecated) with the same schema, as in Cilium.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::crd::merge_crds;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;
use super::selector::LabelSelector;

/// Spec shared by both served versions.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumLoadBalancerIPPool",
    plural = "ciliumloadbalancerippools",
    singular = "ciliumloadbalancerippool",
    shortname = "ippools",
    shortname = "ippool",
    shortname = "lbippool",
    shortname = "lbippools",
    category = "cilium",
    status = "LbIpPoolStatus",
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Conflicting","type":"string","jsonPath":".status.conditions[?(@.type==\"cilium.io/PoolConflict\")].status"}"#,
    printcolumn = r#"{"name":"IPs Available","type":"string","jsonPath":".status.conditions[?(@.type==\"cilium.io/IPsAvailable\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LbIpPoolSpec {
    /// CIDRs or start/stop ranges. Cilium's schema leaves the list optional; an empty pool is reported
    /// by the operator as a condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<LbIpBlock>,
    /// `Yes` (default) or `No`: whether the first and last IP of each CIDR may be allocated.
    #[serde(rename = "allowFirstLastIPs", default, skip_serializing_if = "Option::is_none")]
    pub allow_first_last_ips: Option<AllowFirstLastIps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// No new allocations from a disabled pool; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllowFirstLastIps {
    Yes,
    No,
}

/// One block: a CIDR, or a start[–stop] range. Mixing both is a semantic error the operator reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LbIpBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::optional_cidr")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LbIpPoolStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Condition set when the pool overlaps another pool.
pub const CONDITION_POOL_CONFLICT: &str = "cilium.io/PoolConflict";
/// Condition whose message is the number of available IPs.
pub const CONDITION_IPS_AVAILABLE: &str = "cilium.io/IPsAvailable";

/// The deprecated v2alpha1 version, same schema.
pub mod v2alpha1 {
    use super::*;

    #[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "cilium.io",
        version = "v2alpha1",
        kind = "CiliumLoadBalancerIPPool",
        plural = "ciliumloadbalancerippools",
        singular = "ciliumloadbalancerippool",
        shortname = "ippools",
        shortname = "ippool",
        shortname = "lbippool",
        shortname = "lbippools",
        category = "cilium",
        status = "LbIpPoolStatus",
        deprecated,
        printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
        printcolumn = r#"{"name":"Conflicting","type":"string","jsonPath":".status.conditions[?(@.type==\"cilium.io/PoolConflict\")].status"}"#,
        printcolumn = r#"{"name":"IPs Available","type":"string","jsonPath":".status.conditions[?(@.type==\"cilium.io/IPsAvailable\")].message"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )]
    #[serde(transparent)]
    pub struct LbIpPoolSpecV2alpha1(pub LbIpPoolSpec);
}

/// The CRD with v2 (stored) and v2alpha1 (served, deprecated).
pub fn crd() -> CustomResourceDefinition {
    merge_crds(vec![CiliumLoadBalancerIPPool::crd(), v2alpha1::CiliumLoadBalancerIPPool::crd()], "v2")
        .expect("both versions describe the same kind")
}
