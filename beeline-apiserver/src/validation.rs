//! Custom-resource validation against the CRD's openAPIV3Schema, by `beeline-schema` (the same
//! validator the CRD tooling uses), so invalid objects get 422 Invalid naming the field.

use std::sync::Arc;

use serde_json::Value;

/// One invalid field: its path (`spec.port`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Validates a custom resource (second argument) against its CRD (first argument).
pub type Validator = Arc<dyn Fn(&Value, &Value) -> Result<(), Vec<FieldError>> + Send + Sync>;

/// The validator used unless the configuration names another one: `beeline-schema`.
pub fn default_validator() -> Validator {
    Arc::new(|crd: &Value, object: &Value| {
        beeline_schema::validate_against_crd(crd, object)
            .map_err(|errors| errors.into_iter().map(|e| FieldError { path: e.path, message: e.message }).collect())
    })
}

/// A validator that accepts everything (for experiments with deliberately invalid objects).
pub fn accept_all() -> Validator {
    Arc::new(|_: &Value, _: &Value| Ok(()))
}
