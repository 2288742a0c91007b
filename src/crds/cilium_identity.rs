//! `CiliumIdentity` (cilium.io/v2, cluster-scoped): a security identity. The object's name is the
//! numeric identity; its labels live in the top-level `security-labels` map (no `spec`).

use std::collections::BTreeMap;

use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resource::impl_resource;
use super::schema::{self, age_column, CrdDefinition};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CiliumIdentity {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[schemars(schema_with = "schema::object_meta")]
    pub metadata: ObjectMeta,
    /// Source-prefixed labels (`k8s:app=web`) that make up the identity.
    #[serde(rename = "security-labels")]
    #[schemars(schema_with = "schema::string_map")]
    pub security_labels: BTreeMap<String, String>,
}

impl_resource!(
    CiliumIdentity,
    kind = "CiliumIdentity",
    plural = "ciliumidentities",
    version = "v2",
    scope = k8s_openapi::ClusterResourceScope
);

impl CiliumIdentity {
    pub fn new(id: u32, security_labels: BTreeMap<String, String>) -> Self {
        Self {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: ObjectMeta { name: Some(id.to_string()), ..Default::default() },
            security_labels,
        }
    }

    /// The numeric identity, parsed from the object's name.
    pub fn numeric_id(&self) -> Option<u32> {
        self.metadata.name.as_deref()?.parse().ok()
    }

    pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
        CrdDefinition {
            kind: Self::KIND,
            plural: "ciliumidentities",
            singular: "ciliumidentity",
            short_names: &["ciliumid"],
            namespaced: false,
            version: "v2",
            schema: schema::root_schema::<Self>(),
            printer_columns: vec![
                schema::column("Namespace", "string", r#".metadata.labels.io\.kubernetes\.pod\.namespace"#),
                age_column(),
            ],
            status_subresource: false,
        }
        .build()
    }
}
