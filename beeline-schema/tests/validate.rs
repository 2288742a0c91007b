//! Each schema feature the API server enforces, accepted and rejected, with the path the error names.

use beeline_schema::{validate, validate_against_crd, FieldError};
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "properties": {
                    "ipv4": {
                        "type": "object",
                        "nullable": true,
                        "required": ["maskSize"],
                        "properties": {
                            "maskSize": {"type": "integer", "minimum": 1, "maximum": 32},
                            "cidrs": {"type": "array", "minItems": 1, "maxItems": 2,
                                      "items": {"type": "string", "format": "cidr"}}
                        }
                    },
                    "mode": {"type": "string", "enum": ["Yes", "No"]},
                    "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                    "gateway": {"type": "string", "format": "ip"},
                    "since": {"type": "string", "format": "date-time"},
                    "port": {"x-kubernetes-int-or-string": true,
                             "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
                    "opaque": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "peer": {
                        "type": "object",
                        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                        "oneOf": [{"required": ["a"]}, {"required": ["b"]}]
                    },
                    "dir": {
                        "type": "object",
                        "properties": {"in": {"type": "boolean"}, "out": {"type": "boolean"}},
                        "anyOf": [{"required": ["in"]}, {"required": ["out"]}]
                    },
                    "keyed": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["type"],
                        "items": {"type": "object", "properties": {"type": {"type": "string"}}}
                    }
                }
            }
        }
    })
}

fn object(spec: Value) -> Value {
    json!({"apiVersion": "example.io/v1", "kind": "Thing", "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": spec})
}

fn paths(result: Result<(), Vec<FieldError>>) -> Vec<String> {
    result.err().unwrap_or_default().into_iter().map(|e| e.path).collect()
}

#[test]
fn valid_objects_pass() {
    let valid = [
        json!({}),
        json!({"ipv4": {"maskSize": 24, "cidrs": ["10.0.0.0/8"]}}),
        json!({"ipv4": null}),
        json!({"mode": "No", "name": "abc", "gateway": "fd00::1", "since": "2024-01-01T00:00:00Z"}),
        json!({"port": 80}),
        json!({"port": "http"}),
        json!({"labels": {"k": "v"}}),
        json!({"opaque": {"anything": {"nested": [1, 2]}}}),
        json!({"peer": {"a": "x"}}),
        json!({"dir": {"in": true, "out": false}}),
        json!({"keyed": [{"type": "a"}, {"type": "b"}]}),
    ];
    for spec in valid {
        assert_eq!(validate(&schema(), &object(spec.clone())), Ok(()), "{spec}");
    }
}

#[test]
fn invalid_objects_name_the_field() {
    let cases = [
        (json!({"ipv4": {}}), "spec.ipv4.maskSize", "Required value"),
        (json!({"ipv4": {"maskSize": 40}}), "spec.ipv4.maskSize", "less than or equal to 32"),
        (json!({"ipv4": {"maskSize": 0}}), "spec.ipv4.maskSize", "greater than or equal to 1"),
        (json!({"ipv4": {"maskSize": "24"}}), "spec.ipv4.maskSize", "must be of type integer"),
        (json!({"ipv4": {"maskSize": 2.5}}), "spec.ipv4.maskSize", "must be of type integer"),
        (json!({"ipv4": {"maskSize": 8, "cidrs": []}}), "spec.ipv4.cidrs", "at least 1"),
        (
            json!({"ipv4": {"maskSize": 8, "cidrs": ["1.0.0.0/8", "2.0.0.0/8", "3.0.0.0/8"]}}),
            "spec.ipv4.cidrs",
            "at most 2",
        ),
        (json!({"ipv4": {"maskSize": 8, "cidrs": ["10.0.0.0/8", "10.0.0/8"]}}), "spec.ipv4.cidrs[1]", "format cidr"),
        (json!({"mode": "Maybe"}), "spec.mode", "Unsupported value"),
        (json!({"name": "toolong"}), "spec.name", "Too long"),
        (json!({"name": "ABC"}), "spec.name", "should match"),
        (json!({"gateway": "300.1.1.1"}), "spec.gateway", "format ip"),
        (json!({"since": "yesterday"}), "spec.since", "format date-time"),
        (json!({"port": true}), "spec.port", "integer or a string"),
        (json!({"labels": {"k": "long"}}), "spec.labels.k", "Too long"),
        (json!({"peer": {}}), "spec.peer", "oneOf"),
        (json!({"peer": {"a": "x", "b": "y"}}), "spec.peer", "2 matched"),
        (json!({"dir": {}}), "spec.dir", "anyOf"),
        (json!({"surprise": 1}), "spec.surprise", "unknown field"),
        (json!({"ipv4": {"maskSize": 8, "extra": 1}}), "spec.ipv4.extra", "unknown field"),
        (json!({"name": null}), "spec.name", "must be of type string"),
        (json!({"keyed": [{"type": "a"}, {"type": "a"}]}), "spec.keyed[1]", "Duplicate value"),
    ];
    for (spec, path, message) in cases {
        let errors = validate(&schema(), &object(spec.clone())).expect_err(&spec.to_string());
        assert!(
            errors.iter().any(|e| e.path == path && e.message.contains(message)),
            "{spec}: want {path}: {message}, got {errors:?}"
        );
    }
}

#[test]
fn required_spec_and_unknown_root_fields() {
    let no_spec = json!({"apiVersion": "example.io/v1", "kind": "Thing", "metadata": {"name": "x"}});
    assert_eq!(paths(validate(&schema(), &no_spec)), ["spec"]);
    let mut extra = object(json!({}));
    extra["sepc"] = json!({});
    assert_eq!(paths(validate(&schema(), &extra)), ["sepc"]);
    assert_eq!(paths(validate(&schema(), &json!([1]))), [""]);
}

#[test]
fn unknown_fields_inside_preserved_objects_are_kept() {
    assert_eq!(validate(&schema(), &object(json!({"opaque": {"x": {"y": null}}}))), Ok(()));
}

#[test]
fn errors_are_all_reported() {
    let errors = validate(&schema(), &object(json!({"mode": "Maybe", "name": "ABC", "x": 1}))).unwrap_err();
    let mut got: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    got.sort();
    assert_eq!(got, ["spec.mode", "spec.name", "spec.x"]);
}

fn crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.io",
            "names": {"kind": "Thing", "plural": "things"},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema()}},
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v1alpha1", "served": false, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object"}}}
            ]
        }
    })
}

#[test]
fn crd_helper_picks_the_version_of_the_object() {
    let bad = object(json!({"mode": "Maybe"}));
    assert_eq!(paths(validate_against_crd(&crd(), &bad)), ["spec.mode"]);
    let mut beta = bad.clone();
    beta["apiVersion"] = json!("example.io/v1beta1");
    assert_eq!(validate_against_crd(&crd(), &beta), Ok(()));
    let mut alpha = bad.clone();
    alpha["apiVersion"] = json!("example.io/v1alpha1");
    assert_eq!(paths(validate_against_crd(&crd(), &alpha)), ["apiVersion"]);
    let mut other_group = bad.clone();
    other_group["apiVersion"] = json!("other.io/v1");
    assert_eq!(paths(validate_against_crd(&crd(), &other_group)), ["apiVersion"]);
    let mut other_kind = bad;
    other_kind["kind"] = json!("Other");
    assert_eq!(paths(validate_against_crd(&crd(), &other_kind)), ["kind"]);
}
