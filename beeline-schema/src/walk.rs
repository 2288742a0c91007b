//! The schema walker: keyword checks per node, structural (unknown-field) checks per object.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde_json::{Map, Value};

use crate::{formats, FieldError};

/// Fields the API server handles itself at the root of every object.
const ROOT_IMPLICIT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

pub fn validate_root(schema: &Value, object: &Value, errors: &mut Vec<FieldError>) {
    let mut walker = Walker { errors };
    if !object.is_object() {
        walker.push("", format!("Invalid value: {}: must be of type object", describe(object)));
        return;
    }
    walker.node(schema, object, "", Mode::Strict, true);
}

/// Strict mode reports unknown fields; junctor (`oneOf`/`anyOf`/`allOf`/`not`) subschemas only constrain
/// values, like the API server's structural schemas where those subschemas may not declare new fields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Strict,
    ValuesOnly,
}

struct Walker<'e> {
    errors: &'e mut Vec<FieldError>,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How a value is shown in a message: scalars verbatim, containers by type, as the API server does.
fn describe(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

fn type_matches(type_: &str, value: &Value) -> bool {
    match type_ {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

thread_local! {
    static REGEXES: RefCell<HashMap<String, Option<Regex>>> = RefCell::new(HashMap::new());
}

/// Whether `pattern` matches anywhere in `value` (ECMA/Go semantics: unanchored unless the pattern anchors);
/// `None` when the pattern does not compile.
fn pattern_matches(pattern: &str, value: &str) -> Option<bool> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let regex = cache.entry(pattern.to_string()).or_insert_with(|| Regex::new(pattern).ok());
        regex.as_ref().map(|r| r.is_match(value))
    })
}

impl Walker<'_> {
    fn push(&mut self, path: &str, message: String) {
        self.errors.push(FieldError { path: path.to_string(), message });
    }

    /// Validates `value` at `path` against `schema`.
    fn node(&mut self, schema: &Value, value: &Value, path: &str, mode: Mode, root: bool) {
        if value.is_null() {
            // Nullable fields accept null; a schema-less node (preserve-unknown) accepts anything.
            if !flag(schema, "nullable") && schema.get("type").is_some() {
                let type_ = schema["type"].as_str().unwrap_or("object");
                self.push(path, format!("Invalid value: \"null\": must be of type {type_}"));
            }
            return;
        }
        if flag(schema, "x-kubernetes-int-or-string") {
            let is_int = type_matches("integer", value);
            if !is_int && !value.is_string() {
                self.push(path, format!("Invalid value: {}: must be an integer or a string", describe(value)));
                return;
            }
        } else if let Some(type_) = schema.get("type").and_then(Value::as_str) {
            if !type_matches(type_, value) {
                self.push(path, format!("Invalid value: {}: must be of type {type_}", describe(value)));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                self.push(path, format!("Unsupported value: {value}: supported values: {}", list.join(", ")));
            }
        }
        match value {
            Value::String(s) => self.string(schema, s, path),
            Value::Number(_) => self.number(schema, value, path),
            Value::Array(items) => self.array(schema, items, path, mode),
            Value::Object(fields) => self.object(schema, fields, path, mode, root),
            _ => {}
        }
        self.junctors(schema, value, path, root);
    }

    fn string(&mut self, schema: &Value, s: &str, path: &str) {
        let len = s.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                self.push(path, format!("Too long: may not be more than {max} bytes"));
            }
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                self.push(path, format!("Invalid value: \"{s}\": should be at least {min} chars long"));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match pattern_matches(pattern, s) {
                Some(true) => {}
                Some(false) => self.push(path, format!("Invalid value: \"{s}\": should match '{pattern}'")),
                None => self.push(path, format!("schema pattern '{pattern}' does not compile")),
            }
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str) {
            if !formats::check(format, s) {
                self.push(path, format!("Invalid value: \"{s}\": must be of format {format}"));
            }
        }
    }

    fn number(&mut self, schema: &Value, value: &Value, path: &str) {
        let Some(n) = value.as_f64() else { return };
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if flag(schema, "exclusiveMaximum") && n >= max {
                self.push(path, format!("Invalid value: {value}: must be less than {}", fmt_num(max)));
            } else if n > max {
                self.push(path, format!("Invalid value: {value}: must be less than or equal to {}", fmt_num(max)));
            }
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if flag(schema, "exclusiveMinimum") && n <= min {
                self.push(path, format!("Invalid value: {value}: must be greater than {}", fmt_num(min)));
            } else if n < min {
                self.push(path, format!("Invalid value: {value}: must be greater than or equal to {}", fmt_num(min)));
            }
        }
        if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64) {
            if m > 0.0 && (n / m).fract() != 0.0 {
                self.push(path, format!("Invalid value: {value}: must be a multiple of {}", fmt_num(m)));
            }
        }
    }

    fn array(&mut self, schema: &Value, items: &[Value], path: &str, mode: Mode) {
        let len = items.len() as u64;
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if len > max {
                self.push(path, format!("Too many: {len}: must have at most {max} items"));
            }
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if len < min {
                self.push(path, format!("Invalid value: {len}: must have at least {min} items"));
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.node(item_schema, item, &format!("{path}[{i}]"), mode, false);
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        self.push(&format!("{path}[{i}]"), format!("Duplicate value: {}", describe(item)));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<String> =
                        keys.iter().map(|k| item.get(*k).map(Value::to_string).unwrap_or_default()).collect();
                    if !seen.insert(key.clone()) {
                        self.push(&format!("{path}[{i}]"), format!("Duplicate value: {{{}}}", key.join(", ")));
                    }
                }
            }
            _ => {}
        }
    }

    fn object(&mut self, schema: &Value, fields: &Map<String, Value>, path: &str, mode: Mode, root: bool) {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    self.push(&child(path, name), "Required value".into());
                }
            }
        }
        let count = fields.len() as u64;
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
            if count > max {
                self.push(path, format!("Too many: {count}: must have at most {max} items"));
            }
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
            if count < min {
                self.push(path, format!("Invalid value: {count}: must have at least {min} items"));
            }
        }
        let preserve_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields");
        let additional = schema.get("additionalProperties");
        for (name, value) in fields {
            let field_path = child(path, name);
            if root && name == "metadata" {
                // The API server validates ObjectMeta itself; the CRD schema only types it.
                if !value.is_object() && !value.is_null() {
                    self.push(&field_path, format!("Invalid value: {}: must be of type object", describe(value)));
                }
                continue;
            }
            if let Some(prop) = properties.and_then(|p| p.get(name)) {
                self.node(prop, value, &field_path, mode, false);
                continue;
            }
            match additional {
                Some(Value::Object(_)) => self.node(additional.unwrap(), value, &field_path, mode, false),
                Some(Value::Bool(true)) => {}
                _ if preserve_unknown => {}
                _ if root && ROOT_IMPLICIT_FIELDS.contains(&name.as_str()) => {}
                _ if mode == Mode::Strict => self.push(&field_path, format!("unknown field \"{field_path}\"")),
                _ => {}
            }
        }
    }

    /// `allOf`/`anyOf`/`oneOf`/`not`: value constraints evaluated on the same node.
    fn junctors(&mut self, schema: &Value, value: &Value, path: &str, root: bool) {
        let run = |sub: &Value| -> Vec<FieldError> {
            let mut errors = Vec::new();
            Walker { errors: &mut errors }.node(sub, value, path, Mode::ValuesOnly, root);
            errors
        };
        let summary = |errors: &[FieldError]| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for sub in all {
                let errors = run(sub);
                self.errors.extend(errors);
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            let results: Vec<Vec<FieldError>> = any.iter().map(run).collect();
            if !results.iter().any(Vec::is_empty) {
                let detail: Vec<String> = results.iter().map(|e| summary(e)).collect();
                self.push(path, format!("must validate at least one schema (anyOf): [{}]", detail.join(" | ")));
            }
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let results: Vec<Vec<FieldError>> = one.iter().map(run).collect();
            let matched = results.iter().filter(|e| e.is_empty()).count();
            if matched != 1 {
                let detail: Vec<String> = results.iter().filter(|e| !e.is_empty()).map(|e| summary(e)).collect();
                self.push(
                    path,
                    format!(
                        "must validate one and only one schema (oneOf), {matched} matched{}",
                        if detail.is_empty() { String::new() } else { format!(": [{}]", detail.join(" | ")) }
                    ),
                );
            }
        }
        if let Some(not) = schema.get("not") {
            if run(not).is_empty() {
                self.push(path, "must not validate the schema (not)".into());
            }
        }
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}
