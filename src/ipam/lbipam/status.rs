//! Desired `metav1.Condition`s and how they merge into an object's existing ones.

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition without its transition time, which only the merge with the live object can know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl DesiredCondition {
    pub fn new(type_: &str, status: &'static str, reason: &str, message: impl Into<String>) -> Self {
        DesiredCondition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
        }
    }

    pub fn with_generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    /// Whether `existing` already says exactly this (transition time aside).
    pub fn matches(&self, existing: &Condition) -> bool {
        existing.type_ == self.type_
            && existing.status == self.status
            && existing.reason == self.reason
            && existing.message == self.message
            && existing.observed_generation == self.observed_generation
    }

    /// `conditions` with this one set: the transition time moves to `now` only when the status changes
    /// (Kubernetes' `SetStatusCondition` rule); other types are kept.
    pub fn merge_into(&self, conditions: &[Condition], now: &Time) -> Vec<Condition> {
        let mut out: Vec<Condition> = conditions.to_vec();
        let previous = out.iter().position(|c| c.type_ == self.type_);
        let last_transition_time = match previous.map(|i| &out[i]) {
            Some(c) if c.status == self.status => c.last_transition_time.clone(),
            _ => now.clone(),
        };
        let condition = Condition {
            type_: self.type_.clone(),
            status: self.status.into(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation: self.observed_generation,
            last_transition_time,
        };
        match previous {
            Some(i) => out[i] = condition,
            None => out.push(condition),
        }
        out
    }
}

/// A Service status with `ingress` as the load-balancer ingress and `condition` merged in.
pub fn service_status_with(
    existing: Option<&ServiceStatus>,
    ingress: &[LoadBalancerIngress],
    condition: &DesiredCondition,
    now: &Time,
) -> ServiceStatus {
    let mut status = existing.cloned().unwrap_or_default();
    let conditions = condition.merge_into(status.conditions.as_deref().unwrap_or_default(), now);
    status.conditions = Some(conditions);
    status.load_balancer = Some(LoadBalancerStatus { ingress: (!ingress.is_empty()).then(|| ingress.to_vec()) });
    status
}

/// A Service status with our ingress entries and condition removed, for a Service that stopped
/// qualifying: it is left clean for whichever controller takes it over.
pub fn service_status_released(existing: Option<&ServiceStatus>, condition_type: &str) -> ServiceStatus {
    let mut status = existing.cloned().unwrap_or_default();
    status.load_balancer = Some(LoadBalancerStatus { ingress: None });
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != condition_type);
    }
    status
}
