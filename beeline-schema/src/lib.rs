//! Validation of Kubernetes objects against a CRD's structural `openAPIV3Schema`, as the API server does
//! it on create/update with `fieldValidation=Strict`.
//!
//! A small hand-written walker rather than a generic JSON-Schema engine, because the API server's rules
//! differ from JSON Schema in the places that matter here: `nullable`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields`, unknown fields reported (not ignored) with their path,
//! `apiVersion`/`kind`/`metadata` implicitly allowed at the root, and errors that name the field
//! (`spec.blocks[0].cidr`) the way `kubectl` prints them.
//!
//! Semantic checks (start > stop, overlapping pools) are not schema checks and are not done here.

mod formats;
mod walk;

use std::fmt;

use serde_json::Value;

/// One validation failure: the field's path (`spec.ipv4.maskSize`, `spec.blocks[0].cidr`) and what is wrong
/// with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Validates `object` against one CRD version's `openAPIV3Schema`. All errors are returned, in document
/// order.
pub fn validate(schema: &Value, object: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    walk::validate_root(schema, object, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Validates `object` against the CRD (`apiextensions.k8s.io/v1` JSON) that serves its `apiVersion`:
/// checks that group, version and kind belong to the CRD and that the version is served, then validates
/// against that version's schema.
pub fn validate_against_crd(crd: &Value, object: &Value) -> Result<(), Vec<FieldError>> {
    let schema = schema_for_object(crd, object).map_err(|e| vec![e])?;
    validate(schema, object)
}

/// The `openAPIV3Schema` of the CRD version named by the object's `apiVersion`.
pub fn schema_for_object<'a>(crd: &'a Value, object: &Value) -> Result<&'a Value, FieldError> {
    let err = |path: &str, message: String| FieldError { path: path.into(), message };
    let spec = crd.get("spec").ok_or_else(|| err("spec", "CRD has no spec".into()))?;
    let group = spec.get("group").and_then(Value::as_str).unwrap_or_default();
    let kind = spec.pointer("/names/kind").and_then(Value::as_str).unwrap_or_default();

    let api_version =
        object.get("apiVersion").and_then(Value::as_str).ok_or_else(|| err("apiVersion", "Required value".into()))?;
    let (object_group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if object_group != group {
        return Err(err("apiVersion", format!("Invalid value: \"{api_version}\": group must be \"{group}\"")));
    }
    match object.get("kind").and_then(Value::as_str) {
        None => return Err(err("kind", "Required value".into())),
        Some(k) if k != kind => return Err(err("kind", format!("Invalid value: \"{k}\": must be \"{kind}\""))),
        Some(_) => {}
    }
    let versions = spec.get("versions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let entry = versions
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .ok_or_else(|| {
            let served: Vec<&str> = versions
                .iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect();
            err("apiVersion", format!("Unsupported value: \"{version}\": served versions: {}", served.join(", ")))
        })?;
    entry
        .pointer("/schema/openAPIV3Schema")
        .or_else(|| spec.pointer("/validation/openAPIV3Schema"))
        .ok_or_else(|| err("apiVersion", format!("version {version} has no schema")))
}
