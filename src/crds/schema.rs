//! Schema helpers shared by the cilium.io kinds: OpenAPI formats and Kubernetes extensions that schemars
//! cannot express by attribute alone, and a builder for the kinds whose root object kube-derive cannot
//! model (no `spec`, or an optional one).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use kube::core::ObjectMeta;
use schemars::{generate::SchemaSettings, JsonSchema, Schema, SchemaGenerator};
use serde_json::json;

/// API group of every kind in this module.
pub const GROUP: &str = "cilium.io";
/// Category shared by all Cilium kinds (`kubectl get cilium`).
pub const CATEGORY: &str = "cilium";

/// A string holding a CIDR (`format: cidr`, as Cilium's `+kubebuilder:validation:Format=cidr`).
pub fn cidr(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "format": "cidr"})
}

/// An optional CIDR string.
pub fn optional_cidr(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "format": "cidr", "nullable": true})
}

/// A list of CIDR strings.
pub fn cidr_list(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "array", "items": {"type": "string", "format": "cidr"}})
}

/// A list of at least one CIDR (Cilium's pool CIDRs).
pub fn cidr_list_non_empty(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "array", "minItems": 1, "items": {"type": "string", "format": "cidr"}})
}

/// An optional IP address string (`format: ip`).
pub fn optional_ip(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "format": "ip", "nullable": true})
}

/// An object whose content beyond the modelled fields is kept as-is (cloud-provider sections Cilium owns
/// but beeline does not interpret): never stricter than Cilium.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "nullable": true})
}

/// A list of arbitrary objects kept as-is.
pub fn preserve_unknown_list(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "array",
        "nullable": true,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// A map of string to string.
pub fn string_map(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// `metadata` as Kubernetes expects it in a CRD schema: the API server validates it, the schema only
/// says it is an object.
pub fn object_meta(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}

/// The schema generator used for every kind: the same settings kube-derive uses (OpenAPI v3, inlined
/// subschemas, optional enums as nullable strings) minus its structural rewriter, which would rewrite
/// the `oneOf`/`anyOf` required-field alternatives Cilium's policy schema carries.
pub fn generator() -> SchemaGenerator {
    SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator()
}

/// The `openAPIV3Schema` of a root type, as the API server stores it.
pub fn root_schema<T: JsonSchema>() -> JSONSchemaProps {
    let mut schema = serde_json::to_value(generator().into_root_schema_for::<T>()).expect("schema serializes");
    if let Some(obj) = schema.as_object_mut() {
        // `title` is schemars' type name, not part of a CRD schema.
        obj.remove("title");
        obj.remove("$schema");
    }
    serde_json::from_value(schema).expect("schemars output is a valid JSONSchemaProps")
}

/// Everything a hand-assembled CRD needs.
pub struct CrdDefinition {
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    pub version: &'static str,
    pub schema: JSONSchemaProps,
    pub printer_columns: Vec<CustomResourceColumnDefinition>,
    pub status_subresource: bool,
}

impl CrdDefinition {
    pub fn build(self) -> CustomResourceDefinition {
        CustomResourceDefinition {
            metadata: ObjectMeta { name: Some(format!("{}.{GROUP}", self.plural)), ..Default::default() },
            spec: CustomResourceDefinitionSpec {
                group: GROUP.into(),
                names: CustomResourceDefinitionNames {
                    categories: Some(vec![CATEGORY.into()]),
                    kind: self.kind.into(),
                    list_kind: Some(format!("{}List", self.kind)),
                    plural: self.plural.into(),
                    short_names: Some(self.short_names.iter().map(|s| s.to_string()).collect()),
                    singular: Some(self.singular.into()),
                },
                scope: if self.namespaced { "Namespaced" } else { "Cluster" }.into(),
                versions: vec![CustomResourceDefinitionVersion {
                    name: self.version.into(),
                    served: true,
                    storage: true,
                    schema: Some(CustomResourceValidation { open_api_v3_schema: Some(self.schema) }),
                    additional_printer_columns: (!self.printer_columns.is_empty()).then_some(self.printer_columns),
                    subresources: self.status_subresource.then(|| CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(json!({}))),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            status: None,
        }
    }
}

/// A printer column.
pub fn column(name: &str, type_: &str, json_path: &str) -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        ..Default::default()
    }
}

/// The `Age` column every kind shows.
pub fn age_column() -> CustomResourceColumnDefinition {
    column("Age", "date", ".metadata.creationTimestamp")
}

/// Formats the Kubernetes API server knows; schemars' Rust-specific ones (`uint8`, `uint32`, ...) are
/// dropped so that the published schema only says what the server checks.
const KUBERNETES_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "duration",
    "password",
    "cidr",
    "ip",
    "ipv4",
    "ipv6",
    "uri",
    "email",
    "hostname",
    "mac",
    "uuid",
    "bsonobjectid",
];

/// Brings a CRD (derived or hand-built) to the shape Cilium's CRDs have: `apiVersion`/`kind`/`metadata`
/// at the root, a `listKind`, integer bounds written as integers, only Kubernetes formats, and no
/// schemars titles or generated root descriptions.
pub fn normalize(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    if crd.spec.names.list_kind.is_none() {
        crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    }
    for version in &mut crd.spec.versions {
        let Some(props) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
        let mut value = serde_json::to_value(&*props).expect("schema serializes");
        if let Some(root) = value.as_object_mut() {
            root.remove("title");
            if root.get("description").and_then(|d| d.as_str()).is_some_and(|d| d.starts_with("Auto-generated")) {
                root.remove("description");
            }
            let properties = root.entry("properties").or_insert_with(|| json!({}));
            if let Some(properties) = properties.as_object_mut() {
                properties.entry("apiVersion").or_insert_with(|| json!({"type": "string"}));
                properties.entry("kind").or_insert_with(|| json!({"type": "string"}));
                properties.entry("metadata").or_insert_with(|| json!({"type": "object"}));
            }
        }
        clean_node(&mut value);
        *props = serde_json::from_value(value).expect("normalized schema is valid");
    }
    crd
}

fn clean_node(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("format").and_then(|f| f.as_str()).is_some_and(|f| !KUBERNETES_FORMATS.contains(&f)) {
                map.remove("format");
            }
            for key in ["minimum", "maximum"] {
                if let Some(n) = map.get(key).and_then(|n| n.as_f64()) {
                    if n.fract() == 0.0 {
                        map.insert(key.into(), json!(n as i64));
                    }
                }
            }
            map.remove("title");
            map.values_mut().for_each(clean_node);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clean_node),
        _ => {}
    }
}
