//! `CiliumEndpoint` (cilium.io/v2, namespaced): the agent's view of one pod endpoint. Status only —
//! Cilium's object has no `spec`.

use std::collections::BTreeMap;

use kube::core::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resource::impl_resource;
use super::schema::{self, column, CrdDefinition};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CiliumEndpoint {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[schemars(schema_with = "schema::object_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<EndpointStatus>,
}

impl_resource!(
    CiliumEndpoint,
    kind = "CiliumEndpoint",
    plural = "ciliumendpoints",
    version = "v2",
    scope = k8s_openapi::NamespaceResourceScope
);

/// What the agent publishes about an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointStatus {
    /// Local endpoint ID on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<EndpointIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<EndpointNetworking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EndpointPolicy>,
    /// Endpoint state (`ready`, `waiting-for-identity`, `regenerating`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EndpointEncryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Fields Cilium's agent writes that beeline keeps as-is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub external_identifiers: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub health: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_list")]
    pub controllers: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_list")]
    pub log: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointIdentity {
    #[serde(default)]
    pub id: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointNetworking {
    pub addressing: Vec<AddressPair>,
    /// IP of the node hosting the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddressPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<EndpointPolicyDirection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EndpointPolicyDirection>,
}

impl EndpointPolicy {
    /// `status.policy` as the agent writes it: whether each direction is enforced.
    pub fn enforcing(ingress: bool, egress: bool) -> Self {
        let direction = |enforcing| Some(EndpointPolicyDirection { enforcing, ..Default::default() });
        EndpointPolicy { ingress: direction(ingress), egress: direction(egress) }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointPolicyDirection {
    pub enforcing: bool,
    /// `<PolicyEnabled>` state string as Cilium reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Identities allowed/denied, as Cilium reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_list")]
    pub allowed: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_list")]
    pub denied: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_list")]
    pub removing: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_list")]
    pub adding: Option<serde_json::Value>,
}

/// A container port with a name, for named ports in policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NamedPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[schemars(range(min = 0, max = 65535))]
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<NamedPortProtocol>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum NamedPortProtocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EndpointEncryption {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<i64>,
}

impl CiliumEndpoint {
    pub fn new(namespace: &str, name: &str, status: EndpointStatus) -> Self {
        Self {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
            status: Some(status),
        }
    }

    pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
        CrdDefinition {
            kind: Self::KIND,
            plural: "ciliumendpoints",
            singular: "ciliumendpoint",
            short_names: &["cep", "ciliumep"],
            namespaced: true,
            version: "v2",
            schema: schema::root_schema::<Self>(),
            printer_columns: vec![
                column("Security Identity", "integer", ".status.identity.id"),
                column("Endpoint State", "string", ".status.state"),
                column("IPv4", "string", ".status.networking.addressing[0].ipv4"),
                column("IPv6", "string", ".status.networking.addressing[0].ipv6"),
            ],
            // Cilium's CiliumEndpoint has no status subresource: the agent writes the whole object.
            status_subresource: false,
        }
        .build()
    }
}

/// Labels of an endpoint as a map, for code that wants to match selectors against them.
pub fn labels_map(labels: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}
