//! `CiliumClusterwideNetworkPolicy` (cilium.io/v2, cluster-scoped): like CiliumNetworkPolicy, and its
//! rules may select nodes (`nodeSelector`, host policies).

use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cilium_network_policy::PolicyStatus;
use super::policy_rule::Rule;
use super::resource::impl_resource;
use super::schema::{self, age_column, column, CrdDefinition};

/// A cluster-wide network policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CiliumClusterwideNetworkPolicy {
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
    CiliumClusterwideNetworkPolicy,
    kind = "CiliumClusterwideNetworkPolicy",
    plural = "ciliumclusterwidenetworkpolicies",
    version = "v2",
    scope = k8s_openapi::ClusterResourceScope
);

impl CiliumClusterwideNetworkPolicy {
    pub fn new(name: &str, spec: Rule) -> Self {
        Self {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
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
            plural: "ciliumclusterwidenetworkpolicies",
            singular: "ciliumclusterwidenetworkpolicy",
            short_names: &["ccnp"],
            namespaced: false,
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
