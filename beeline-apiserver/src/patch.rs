//! Patch formats: JSON merge (RFC 7386), JSON patch (RFC 6902) and strategic merge (lists merged by
//! their Kubernetes patch-merge keys, with the `$patch`, `$setElementOrder`, `$retainKeys` and
//! `$deleteFromPrimitiveList` directives).

use serde_json::{Map, Value};

use crate::errors::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn json_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch, with the Go library's leniency the real server has: `test` of a missing
/// path against `null` succeeds (kube-runtime's finalizer helper relies on it).
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops = patch.as_array().ok_or_else(|| ApiError::bad_request("a JSON patch must be an array"))?;
    let invalid = |msg: String| {
        ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {msg}"))
    };
    for (i, op) in ops.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path =
            op.get("path").and_then(Value::as_str).ok_or_else(|| invalid(format!("operation {i} has no path")))?;
        let value = op.get("value").cloned();
        match kind {
            "test" => {
                let have = target.pointer(path).cloned().unwrap_or(Value::Null);
                if have != value.unwrap_or(Value::Null) {
                    return Err(invalid(format!("testing value {path} failed")));
                }
            }
            "remove" => {
                remove_pointer(target, path)
                    .ok_or_else(|| invalid(format!("unable to remove nonexistent key: {path}")))?;
            }
            "add" => add_pointer(target, path, value.unwrap_or(Value::Null), false)
                .ok_or_else(|| invalid(format!("add operation does not apply: doc is missing path: {path}")))?,
            "replace" => {
                if target.pointer(path).is_none() {
                    return Err(invalid(format!("replace operation does not apply: doc is missing key: {path}")));
                }
                add_pointer(target, path, value.unwrap_or(Value::Null), true)
                    .ok_or_else(|| invalid(format!("replace failed at {path}")))?;
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("operation {i} has no from")))?;
                let v = if kind == "move" { remove_pointer(target, from) } else { target.pointer(from).cloned() }
                    .ok_or_else(|| invalid(format!("{kind} from a missing path: {from}")))?;
                add_pointer(target, path, v, false)
                    .ok_or_else(|| invalid(format!("{kind} to a missing path: {path}")))?;
            }
            other => return Err(invalid(format!("unexpected operation {other:?}"))),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Option<(&str, String)> {
    let idx = path.rfind('/')?;
    let last = path[idx + 1..].replace("~1", "/").replace("~0", "~");
    Some((&path[..idx], last))
}

fn remove_pointer(target: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent)? {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => {
            let i: usize = last.parse().ok()?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

fn add_pointer(target: &mut Value, path: &str, value: Value, replace: bool) -> Option<()> {
    if path.is_empty() {
        *target = value;
        return Some(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i: usize = last.parse().ok()?;
                if replace && i < a.len() {
                    a[i] = value;
                } else if !replace && i <= a.len() {
                    a.insert(i, value);
                } else {
                    return None;
                }
            }
        }
        _ => return None,
    }
    Some(())
}

/// The patch-merge key of a list field of a built-in kind, or `None` when the list is replaced whole.
/// Keyed by field name (the names used by core types are unambiguous) with the kind to tell apart
/// lists that share a name but not a strategy.
pub fn merge_key(kind: &str, field: &str, sample: Option<&Value>) -> Option<&'static str> {
    // EndpointSlice lists carry no patch strategy: always replaced.
    if kind == "EndpointSlice" || kind == "NetworkPolicy" {
        return None;
    }
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" | "addresses" => Some("type"),
        "taints" => Some("key"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "ports" => {
            if kind == "Service" {
                Some("port")
            } else if sample.is_some_and(|s| s.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Lists of scalars that merge as sets.
fn is_primitive_merge_list(field: &str) -> bool {
    field == "finalizers"
}

pub fn strategic_merge(kind: &str, target: &mut Value, patch: &Value) -> ApiResult<()> {
    let Value::Object(p) = patch else {
        return Err(ApiError::bad_request("strategic merge patch must be an object"));
    };
    merge_map(kind, target, p)
}

fn merge_map(kind: &str, target: &mut Value, patch: &Map<String, Value>) -> ApiResult<()> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut clean = patch.clone();
            clean.remove("$patch");
            *target = Value::Object(clean);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        if let Value::Object(t) = target {
            t.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
                if let (Some(Value::Array(list)), Some(remove)) = (target.get_mut(field), value.as_array()) {
                    list.retain(|v| !remove.contains(v));
                }
            }
            continue;
        }
        let t = target.as_object_mut().expect("made an object above");
        match value {
            Value::Null => {
                t.remove(key);
            }
            Value::Object(pm) => {
                let entry = t.entry(key.clone()).or_insert(Value::Null);
                merge_map(kind, entry, pm)?;
                if entry.is_null() {
                    t.remove(key);
                }
            }
            Value::Array(items) => {
                let current = t.remove(key).unwrap_or(Value::Null);
                let merged = merge_list(kind, key, current, items)?;
                t.insert(key.clone(), merged);
            }
            scalar => {
                t.insert(key.clone(), scalar.clone());
            }
        }
    }
    // `$setElementOrder/<field>` reorders the merged list to the patch's order.
    for (key, order) in patch {
        let Some(field) = key.strip_prefix("$setElementOrder/") else { continue };
        let (Some(order), Some(Value::Array(list))) = (order.as_array(), target.get_mut(field)) else { continue };
        let mk = merge_key(kind, field, list.first());
        let pos = |v: &Value| {
            order.iter().position(|o| match mk {
                Some(k) => o.get(k).is_some() && o.get(k) == v.get(k),
                None => o == v,
            })
        };
        list.sort_by_key(|v| pos(v).unwrap_or(usize::MAX));
    }
    Ok(())
}

fn merge_list(kind: &str, field: &str, current: Value, items: &[Value]) -> ApiResult<Value> {
    // A `{"$patch": "replace"}` element replaces the whole list with the other elements.
    let replace = items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    let rest: Vec<Value> =
        items.iter().filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace")).cloned().collect();
    if replace {
        return Ok(Value::Array(rest));
    }
    let mut list = match current {
        Value::Array(l) => l,
        _ => Vec::new(),
    };
    if is_primitive_merge_list(field) {
        for v in rest {
            if !list.contains(&v) {
                list.push(v);
            }
        }
        return Ok(Value::Array(list));
    }
    let Some(mk) = merge_key(kind, field, rest.first().or(list.first())) else {
        return Ok(Value::Array(rest));
    };
    for item in rest {
        let Some(id) = item.get(mk).cloned() else {
            return Err(ApiError::bad_request(format!("map in list {field} is missing its merge key {mk}")));
        };
        let found = list.iter().position(|e| e.get(mk) == Some(&id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (found, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Value::Object(m) = &item {
                    merge_map(kind, &mut list[i], m)?;
                }
            }
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                if let Value::Object(m) = &item {
                    merge_map(kind, &mut fresh, m)?;
                }
                list.push(fresh);
            }
        }
    }
    Ok(Value::Array(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_table() {
        let cases = [
            (
                json!({"a": 1}),
                json!([{"op": "test", "path": "/f", "value": null}, {"op": "add", "path": "/f", "value": ["x"]}]),
                Some(json!({"a": 1, "f": ["x"]})),
            ),
            (
                json!({"f": ["x"]}),
                json!([{"op": "test", "path": "/f/0", "value": "x"}, {"op": "remove", "path": "/f/0"}]),
                Some(json!({"f": []})),
            ),
            (json!({"f": ["x"]}), json!([{"op": "test", "path": "/f/0", "value": "y"}]), None),
            (
                json!({"f": ["x"]}),
                json!([{"op": "add", "path": "/f/-", "value": "y"}, {"op": "replace", "path": "/f/0", "value": "z"}]),
                Some(json!({"f": ["z", "y"]})),
            ),
            (
                json!({"a": {"b": 1}}),
                json!([{"op": "move", "from": "/a/b", "path": "/c"}, {"op": "copy", "from": "/c", "path": "/d"}]),
                Some(json!({"a": {}, "c": 1, "d": 1})),
            ),
            (json!({}), json!([{"op": "remove", "path": "/missing"}]), None),
            (json!({}), json!([{"op": "replace", "path": "/missing", "value": 1}]), None),
        ];
        for (mut doc, patch, want) in cases {
            let result = json_patch(&mut doc, &patch);
            match want {
                Some(w) => assert_eq!(doc, w, "{patch}"),
                None => assert_eq!(result.unwrap_err().code, 422, "{patch}"),
            }
        }
    }

    #[test]
    fn strategic_merge_table() {
        let cases = [
            (
                "containers merge by name",
                "Pod",
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}),
                json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}),
                json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]}}),
            ),
            (
                "delete directive",
                "Pod",
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                json!({"spec": {"containers": [{"name": "b"}]}}),
            ),
            (
                "service ports by port, null deletes",
                "Service",
                json!({"spec": {"ports": [{"port": 80, "name": "http"}], "x": 1}}),
                json!({"spec": {"ports": [{"port": 443, "name": "https"}], "x": null}}),
                json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}}),
            ),
            (
                "set element order",
                "Pod",
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
                json!({"spec": {"containers": [{"name": "b"}, {"name": "a"}]}}),
            ),
            (
                "endpointslice lists replaced",
                "EndpointSlice",
                json!({"endpoints": [{"addresses": ["1.1.1.1"]}], "ports": [{"port": 80}]}),
                json!({"endpoints": [{"addresses": ["2.2.2.2"]}]}),
                json!({"endpoints": [{"addresses": ["2.2.2.2"]}], "ports": [{"port": 80}]}),
            ),
            (
                "finalizers union",
                "Pod",
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": ["b", "a"]}}),
                json!({"metadata": {"finalizers": ["a", "b"]}}),
            ),
            (
                "conditions by type",
                "Pod",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]}}),
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "True"}]}}),
            ),
        ];
        for (name, kind, mut target, patch, want) in cases {
            strategic_merge(kind, &mut target, &patch).unwrap();
            assert_eq!(target, want, "{name}");
        }
    }
}
