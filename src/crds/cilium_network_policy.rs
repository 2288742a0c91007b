//! `CiliumNetworkPolicy` (cilium.io/v2, namespaced): one rule in `spec`, or several in `specs`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy_rule::Rule;
use super::resource::impl_resource;
use super::schema::{self, age_column, column, CrdDefinition};

/// A namespaced network policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNetworkPolicy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[schemars(schema_with = "schema::object_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PolicyStatus>,
}

impl_resource!(
    CiliumNetworkPolicy,
    kind = "CiliumNetworkPolicy",
    plural = "ciliumnetworkpolicies",
    version = "v2",
    scope = k8s_openapi::NamespaceResourceScope
);

/// Status of a (clusterwide) network policy: conditions such as `Valid`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-derivative-policy status, kept as Cilium writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub derivative_policies: Option<serde_json::Value>,
}

/// Condition type reporting whether the policy was accepted (Cilium's `Valid`).
pub const CONDITION_VALID: &str = "Valid";

impl CiliumNetworkPolicy {
    pub fn new(namespace: &str, name: &str, spec: Rule) -> Self {
        Self {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
            spec: Some(spec),
            ..Default::default()
        }
    }

    /// The policy's rules: `spec` followed by `specs`.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.spec.iter().chain(self.specs.iter().flatten())
    }

    pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
        CrdDefinition {
            kind: Self::KIND,
            plural: "ciliumnetworkpolicies",
            singular: "ciliumnetworkpolicy",
            short_names: &["cnp", "ciliumnp"],
            namespaced: true,
            version: "v2",
            schema: schema::root_schema::<Self>(),
            printer_columns: vec![
                age_column(),
                column("Valid", "string", r#".status.conditions[?(@.type=="Valid")].status"#),
            ],
            status_subresource: true,
        }
        .build()
    }
}
