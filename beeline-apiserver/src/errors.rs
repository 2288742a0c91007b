//! API errors rendered as real `metav1.Status` objects, with the HTTP code and `reason` the real
//! API server uses, so clients (kube-rs, kubectl) take the same code paths they take in a cluster.

use serde_json::{json, Value};

/// One field-level cause, as in `Status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub kind: String,
    pub field: String,
    pub message: String,
}

/// An error answer of the API.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details`: (group, kind, name); boxed to keep results small.
    pub details: Box<(String, String, String)>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: Box::default(), causes: Vec::new() }
    }

    /// Fills `details` (group, kind, name) as the real server does for object errors.
    pub fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details = Box::new((group.to_string(), kind.to_string(), name.to_string()));
        self
    }

    pub fn with_causes(mut self, causes: Vec<Cause>) -> Self {
        self.causes = causes;
        self
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", qualified(plural, group)))
            .with_details(group, plural, name)
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", qualified(plural, group)))
            .with_details(group, plural, name)
    }

    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                qualified(plural, group)
            ),
        )
        .with_details(group, plural, name)
    }

    /// 422 Invalid with one cause per field, message formatted like the real server's.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = if list.len() == 1 {
            format!("{kind}.{group} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{kind}.{group} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        let message = message.replace(&format!("{kind}. "), &format!("{kind} "));
        Self::new(422, "Invalid", message).with_details(group, kind, name).with_causes(causes)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type}"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let (group, kind, name) = &*self.details;
        if !kind.is_empty() || !name.is_empty() || !self.causes.is_empty() {
            let mut details = json!({"name": name, "kind": kind});
            if !group.is_empty() {
                details["group"] = json!(group);
            }
            if !self.causes.is_empty() {
                details["causes"] = Value::Array(
                    self.causes
                        .iter()
                        .map(|c| json!({"reason": c.kind, "message": c.message, "field": c.field}))
                        .collect(),
                );
            }
            status["details"] = details;
        }
        status
    }
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
