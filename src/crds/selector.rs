//! Cilium's label selector (`EndpointSelector`, `serviceSelector`, `podSelector`, ...): a Kubernetes
//! `LabelSelector` with the operator enum and label-value pattern Cilium's schemas carry.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `matchLabels` / `matchExpressions`; an empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Requirements that are ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    /// `{key: value}` pairs, each equivalent to an `In` expression with one value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "match_labels")]
    pub match_labels: BTreeMap<String, String>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

fn match_labels(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
        }
    })
}

impl LabelSelector {
    /// Whether `labels` satisfy this selector (Kubernetes semantics).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selector_matching_follows_kubernetes_semantics() {
        let req = |key: &str, operator, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let cases = [
            (LabelSelector::default(), labels(&[]), true),
            (
                LabelSelector { match_labels: labels(&[("app", "web")]), ..Default::default() },
                labels(&[("app", "web")]),
                true,
            ),
            (
                LabelSelector { match_labels: labels(&[("app", "web")]), ..Default::default() },
                labels(&[("app", "db")]),
                false,
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("tier", SelectorOperator::In, &["a", "b"])],
                    ..Default::default()
                },
                labels(&[("tier", "b")]),
                true,
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("tier", SelectorOperator::NotIn, &["a"])],
                    ..Default::default()
                },
                labels(&[]),
                true,
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("tier", SelectorOperator::Exists, &[])],
                    ..Default::default()
                },
                labels(&[]),
                false,
            ),
            (
                LabelSelector {
                    match_expressions: vec![req("tier", SelectorOperator::DoesNotExist, &[])],
                    ..Default::default()
                },
                labels(&[("tier", "x")]),
                false,
            ),
        ];
        for (i, (selector, labels, want)) in cases.into_iter().enumerate() {
            assert_eq!(selector.matches(&labels), want, "case {i}");
        }
    }
}
