//! Custom-resource validation against the CRD's openAPIV3Schema.
//!
//! VALIDATION HOOK: the schema validator lives in the `beeline-schema` crate (built separately).
//! Until it is wired in, `default_validator` accepts everything; see `ServerConfig::validator` to
//! plug in another one.

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

/// The validator used unless the configuration names another one.
pub fn default_validator() -> Validator {
    Arc::new(|_crd: &Value, _object: &Value| Ok(()))
}
