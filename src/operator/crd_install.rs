//! Installs or updates the `cilium.io` CRDs at operator start, then waits until each is Established.
//!
//! Like Cilium's operator (its `create-crds` cell), this runs on every replica before leader
//! election: the agents and the operator's own controllers need the CRDs, and server-side apply
//! with a fixed field manager is idempotent, so two replicas applying the same objects is harmless.
//! `force` takes over fields another manager (an older `kubectl apply`, a Helm chart) set, so an
//! upgrade always converges on the schemas compiled into this binary.
//!
//! Everything is bounded by one deadline; if a CRD cannot be applied or does not become
//! Established in time, the operator refuses to start with an error that names the CRD and why.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionCondition,
};
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        wait::{conditions, Condition},
        watcher,
    },
    Api, Client,
};
use tokio::time::Instant;

/// The field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "beeline-operator";
/// The readiness check that stays failed until every CRD is Established.
pub const CHECK: &str = "crds";

/// How long and how often to try.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// Deadline for the whole installation: applying every CRD and waiting for it to be Established.
    pub timeout: Duration,
    /// Attempts per CRD when the API server is unreachable or answers with a transient error.
    pub apply_attempts: u32,
    /// Delay before the second attempt; doubled after each further failure (capped at 8 s).
    pub initial_backoff: Duration,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(60), apply_attempts: 6, initial_backoff: Duration::from_millis(500) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CrdInstallError {
    #[error(
        "cannot install CRD {crd}: forbidden ({message}); the operator's ClusterRole must allow `patch` on \
         customresourcedefinitions named {crd}, or set `skip-crd-creation: true` and install manifests/crds/ yourself"
    )]
    Forbidden { crd: String, message: String },
    #[error("cannot install CRD {crd}: the API server rejected it ({code} {reason}): {message}")]
    Rejected { crd: String, code: u16, reason: String, message: String },
    #[error("cannot install CRD {crd}: API server unreachable after {attempts} attempts: {last_error}")]
    Unreachable { crd: String, attempts: u32, last_error: String },
    #[error("CRD {crd} did not become Established within {timeout:?} ({detail})")]
    NotEstablished { crd: String, timeout: Duration, detail: String },
    #[error("CRD {crd} was deleted while waiting for it to become Established")]
    Deleted { crd: String },
}

impl CrdInstallError {
    /// The CRD the error is about.
    pub fn crd(&self) -> &str {
        match self {
            Self::Forbidden { crd, .. }
            | Self::Rejected { crd, .. }
            | Self::Unreachable { crd, .. }
            | Self::NotEstablished { crd, .. }
            | Self::Deleted { crd } => crd,
        }
    }
}

/// Applies every CRD in `crds` (in order), then waits until all are Established.
#[tracing::instrument(skip_all, fields(crds = crds.len(), timeout = ?options.timeout))]
pub async fn install(
    client: &Client,
    crds: &[CustomResourceDefinition],
    options: &InstallOptions,
) -> Result<(), CrdInstallError> {
    let deadline = Instant::now() + options.timeout;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut pending = Vec::new();
    for crd in crds {
        let name = crd_name(crd);
        let applied = apply_with_retry(&api, crd, options, deadline).await?;
        if is_established(&applied) {
            tracing::info!(crd = %name, "CRD applied and Established");
        } else {
            tracing::info!(crd = %name, "CRD applied; waiting for it to become Established");
            pending.push(name);
        }
    }
    for name in pending {
        wait_established(&api, &name, deadline, options.timeout).await?;
        tracing::info!(crd = %name, "CRD Established");
    }
    Ok(())
}

fn crd_name(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap_or_default()
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    conditions::is_crd_established().matches_object(Some(crd))
}

/// What to do about a failed apply: retry transient failures, stop on the ones retrying cannot fix.
fn classify(crd: &str, err: &kube::Error) -> Option<CrdInstallError> {
    match err {
        kube::Error::Api(status) => match status.code {
            // Throttled, a lost optimistic-concurrency race, or a server-side hiccup: try again.
            409 | 429 | 500..=599 => None,
            403 => Some(CrdInstallError::Forbidden { crd: crd.to_string(), message: status.message.clone() }),
            code => Some(CrdInstallError::Rejected {
                crd: crd.to_string(),
                code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            }),
        },
        // Something answered, but not with a CRD: retrying will not change that.
        kube::Error::SerdeError(e) => Some(CrdInstallError::Rejected {
            crd: crd.to_string(),
            code: 0,
            reason: "UnexpectedResponse".into(),
            message: format!("the answer is not a CustomResourceDefinition: {e}"),
        }),
        // Connection refused, TLS or timeouts: the API server may still be coming up.
        _ => None,
    }
}

async fn apply_with_retry(
    api: &Api<CustomResourceDefinition>,
    crd: &CustomResourceDefinition,
    options: &InstallOptions,
    deadline: Instant,
) -> Result<CustomResourceDefinition, CrdInstallError> {
    let name = crd_name(crd);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut backoff = options.initial_backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = tokio::time::timeout_at(deadline, api.patch(&name, &params, &Patch::Apply(crd))).await;
        let err = match result {
            Ok(Ok(applied)) => return Ok(applied),
            Ok(Err(err)) => err,
            Err(_elapsed) => {
                return Err(CrdInstallError::Unreachable {
                    crd: name,
                    attempts: attempt,
                    last_error: format!("no answer before the {:?} deadline", options.timeout),
                })
            }
        };
        if let Some(fatal) = classify(&name, &err) {
            return Err(fatal);
        }
        let out_of_time = Instant::now() + backoff >= deadline;
        if attempt >= options.apply_attempts || out_of_time {
            return Err(CrdInstallError::Unreachable { crd: name, attempts: attempt, last_error: err.to_string() });
        }
        tracing::warn!(crd = %name, attempt, error = %err, retry_in = ?backoff, "applying CRD failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

/// Watches one CRD until its `Established` condition is True. Watch errors are retried until the
/// deadline; on timeout the error carries the CRD's conditions as last seen (e.g. `NamesAccepted=False`).
async fn wait_established(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), CrdInstallError> {
    let mut last_seen: Option<CustomResourceDefinition> = None;
    let mut last_error: Option<String> = None;
    let watch = async {
        loop {
            let mut stream = watcher::watch_object(api.clone(), name).boxed();
            loop {
                match stream.try_next().await {
                    Ok(Some(Some(crd))) => {
                        if is_established(&crd) {
                            return Ok(());
                        }
                        last_seen = Some(crd);
                    }
                    // The object is absent from a (re)list: someone deleted it after we applied it.
                    Ok(Some(None)) => return Err(CrdInstallError::Deleted { crd: name.to_string() }),
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!(crd = %name, error = %err, "watching CRD failed; restarting the watch");
                        last_error = Some(err.to_string());
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    match tokio::time::timeout_at(deadline, watch).await {
        Ok(result) => result,
        Err(_elapsed) => Err(CrdInstallError::NotEstablished {
            crd: name.to_string(),
            timeout,
            detail: describe_conditions(last_seen.as_ref(), last_error.as_deref()),
        }),
    }
}

/// A one-line account of why a CRD is not Established, for the refusal message.
fn describe_conditions(crd: Option<&CustomResourceDefinition>, last_error: Option<&str>) -> String {
    let conditions: Vec<&CustomResourceDefinitionCondition> =
        crd.and_then(|c| c.status.as_ref()).and_then(|s| s.conditions.as_ref()).into_iter().flatten().collect();
    let mut parts: Vec<String> = conditions
        .iter()
        .map(|c| {
            let mut s = format!("{}={}", c.type_, c.status);
            if let Some(reason) = c.reason.as_deref().filter(|r| !r.is_empty()) {
                s.push_str(&format!(" ({reason}"));
                if let Some(msg) = c.message.as_deref().filter(|m| !m.is_empty()) {
                    s.push_str(&format!(": {msg}"));
                }
                s.push(')');
            }
            s
        })
        .collect();
    if crd.is_some() && conditions.is_empty() {
        parts.push("no status conditions reported yet".into());
    }
    if let Some(err) = last_error {
        parts.push(format!("last watch error: {err}"));
    }
    if parts.is_empty() {
        "never observed".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionStatus;

    fn with_conditions(conds: &[(&str, &str, &str, &str)]) -> CustomResourceDefinition {
        CustomResourceDefinition {
            status: Some(CustomResourceDefinitionStatus {
                conditions: Some(
                    conds
                        .iter()
                        .map(|(t, s, r, m)| CustomResourceDefinitionCondition {
                            type_: t.to_string(),
                            status: s.to_string(),
                            reason: Some(r.to_string()),
                            message: Some(m.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn describes_what_blocks_establishment() {
        let names_conflict = with_conditions(&[
            ("NamesAccepted", "False", "ListKindConflict", "\"CiliumNodeList\" is already in use"),
            ("Established", "False", "NotAccepted", "not all names are accepted"),
        ]);
        let cases: [(Option<&CustomResourceDefinition>, Option<&str>, &str); 4] = [
            (
                Some(&names_conflict),
                None,
                "NamesAccepted=False (ListKindConflict: \"CiliumNodeList\" is already in use); \
                 Established=False (NotAccepted: not all names are accepted)",
            ),
            (Some(&CustomResourceDefinition::default()), None, "no status conditions reported yet"),
            (None, Some("connection refused"), "last watch error: connection refused"),
            (None, None, "never observed"),
        ];
        for (crd, err, want) in cases {
            assert_eq!(describe_conditions(crd, err), want);
        }
    }

    #[test]
    fn transient_failures_are_retried_and_the_rest_are_not() {
        let api_error = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: format!("{reason} message"),
                ..Default::default()
            }))
        };
        for code in [409, 429, 500, 503] {
            assert!(classify("x", &api_error(code, "Transient")).is_none(), "{code} must be retried");
        }
        let forbidden = classify("ciliumnodes.cilium.io", &api_error(403, "Forbidden")).expect("fatal");
        assert!(matches!(forbidden, CrdInstallError::Forbidden { .. }));
        assert_eq!(forbidden.crd(), "ciliumnodes.cilium.io");
        let invalid = classify("x", &api_error(422, "Invalid")).expect("fatal");
        assert!(invalid.to_string().contains("422 Invalid"), "{invalid}");
    }

    #[test]
    fn established_only_when_the_condition_is_true() {
        assert!(is_established(&with_conditions(&[("Established", "True", "InitialNamesAccepted", "")])));
        assert!(!is_established(&with_conditions(&[("Established", "False", "Installing", "")])));
        assert!(!is_established(&with_conditions(&[("NamesAccepted", "True", "NoConflicts", "")])));
        assert!(!is_established(&CustomResourceDefinition::default()));
    }
}
