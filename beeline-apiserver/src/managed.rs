//! Server-side apply and `metadata.managedFields` (FieldsV1): which field manager owns which
//! fields, conflicts when an applier sets a field another manager owns to a different value, and
//! removal of fields an applier stops applying (when nobody else owns them).
//!
//! A field path is a list of FieldsV1 path elements: `f:<name>` (map field), `k:<json>` (element of
//! an associative list, by its key fields), `v:<json>` (element of a set list).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::errors::{ApiError, Cause};
use crate::patch::merge_key;

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// How a list field merges.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// What decides list types: the kind (built-in tables) and, for custom resources, the CRD schema.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo<'a> {
    pub kind: &'a str,
    pub schema: Option<&'a Value>,
}

fn child_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties").and_then(|p| p.get(field)).or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn list_type(ti: TypeInfo, in_metadata: bool, field: &str, schema: Option<&Value>, items: &[Value]) -> ListType {
    if in_metadata || ti.schema.is_none() {
        if field == "finalizers" {
            return ListType::Set;
        }
        if field == "ownerReferences" {
            return ListType::Map(vec!["uid".into()]);
        }
        if ti.schema.is_none() {
            return match merge_key(ti.kind, field, items.first()) {
                Some(k) => ListType::Map(vec![k.to_string()]),
                None => ListType::Atomic,
            };
        }
    }
    match schema.and_then(|s| s.get("x-kubernetes-list-type")).and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => {
            let keys = schema
                .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|k| k.as_str().map(String::from)).collect())
                .unwrap_or_default();
            ListType::Map(keys)
        }
        _ => ListType::Atomic,
    }
}

fn key_element(keys: &[String], item: &Value) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    format!("k:{}", Value::Object(m))
}

/// Which part of an object a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything but `status` (for types with a status subresource).
    Main {
        status_separate: bool,
    },
    Status,
}

/// The field set of an object (or applied configuration).
pub fn fields_of(obj: &Value, ti: TypeInfo, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(top) = obj.as_object() else { return out };
    for (k, v) in top {
        let keep = match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", Scope::Main { status_separate }) => !status_separate,
            ("status", Scope::Status) => true,
            (_, Scope::Status) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        let mut path = vec![format!("f:{k}")];
        if k == "metadata" {
            for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(mv) = v.get(mk) {
                    path.push(format!("f:{mk}"));
                    collect_value(mv, &mut path, ti, true, mk, None, &mut out);
                    path.pop();
                }
            }
            continue;
        }
        collect_value(v, &mut path, ti, false, k, child_schema(ti.schema, k), &mut out);
    }
    out
}

fn collect_value(
    v: &Value,
    path: &mut FieldPath,
    ti: TypeInfo,
    in_metadata: bool,
    field: &str,
    schema: Option<&Value>,
    out: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, cv) in m {
                path.push(format!("f:{k}"));
                collect_value(cv, path, ti, in_metadata, k, child_schema(schema, k), out);
                path.pop();
            }
        }
        Value::Array(items) => match list_type(ti, in_metadata, field, schema, items) {
            ListType::Atomic => {
                out.insert(path.clone());
            }
            ListType::Set => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in items {
                    path.push(key_element(&keys, item));
                    out.insert(path.clone());
                    if let Value::Object(m) = item {
                        for (k, cv) in m {
                            path.push(format!("f:{k}"));
                            collect_value(cv, path, ti, in_metadata, k, child_schema(item_schema, k), out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at a field path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for pe in path {
        cur = step(cur, pe)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, pe: &str) -> Option<&'a Value> {
    if let Some(name) = pe.strip_prefix("f:") {
        cur.get(name)
    } else if let Some(keys) = pe.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(keys).ok()?;
        cur.as_array()?.iter().find(|e| keys.iter().all(|(k, v)| e.get(k) == Some(v)))
    } else if let Some(val) = pe.strip_prefix("v:") {
        let val: Value = serde_json::from_str(val).ok()?;
        cur.as_array()?.iter().find(|e| **e == val)
    } else {
        None
    }
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let mut cur = obj;
    for pe in parent_path {
        let next = if let Some(name) = pe.strip_prefix("f:") {
            cur.get_mut(name)
        } else if let Some(keys) = pe.strip_prefix("k:") {
            let Ok(keys) = serde_json::from_str::<Map<String, Value>>(keys) else { return };
            cur.as_array_mut().and_then(|a| a.iter_mut().find(|e| keys.iter().all(|(k, v)| e.get(k) == Some(v))))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(keys) = last.strip_prefix("k:") {
        if let (Ok(keys), Some(a)) = (serde_json::from_str::<Map<String, Value>>(keys), cur.as_array_mut()) {
            a.retain(|e| !keys.iter().all(|(k, v)| e.get(k) == Some(v)));
        }
    } else if let Some(val) = last.strip_prefix("v:") {
        if let (Ok(val), Some(a)) = (serde_json::from_str::<Value>(val), cur.as_array_mut()) {
            a.retain(|e| *e != val);
        }
    }
}

/// Encodes a field set as a FieldsV1 tree.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    #[derive(Default)]
    struct Node {
        member: bool,
        children: BTreeMap<String, Node>,
    }
    fn render(n: &Node) -> Value {
        let mut m = Map::new();
        if n.member && !n.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &n.children {
            m.insert(k.clone(), render(c));
        }
        Value::Object(m)
    }
    let mut root = Node::default();
    for path in set {
        let mut n = &mut root;
        for pe in path {
            n = n.children.entry(pe.clone()).or_default();
        }
        n.member = true;
    }
    render(&root)
}

/// Decodes a FieldsV1 tree into a field set.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if !path.is_empty() && (m.is_empty() || m.contains_key(".")) {
            out.insert(path.clone());
        }
        for (k, c) in m {
            if k == "." {
                continue;
            }
            path.push(k.clone());
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj.pointer("/metadata/managedFields").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .map(|e| Entry {
            manager: e.get("manager").and_then(Value::as_str).unwrap_or("").into(),
            operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").into(),
            subresource: e.get("subresource").and_then(Value::as_str).unwrap_or("").into(),
            api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").into(),
            time: e.get("time").and_then(Value::as_str).unwrap_or("").into(),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who is writing, for managedFields.
#[derive(Clone, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
    pub scope: Scope,
}

fn entry_mut<'e>(entries: &'e mut Vec<Entry>, w: &Writer, operation: &str) -> &'e mut Entry {
    if let Some(i) = entries.iter().position(|e| e.same_owner(w.manager, operation, w.subresource)) {
        return &mut entries[i];
    }
    entries.push(Entry {
        manager: w.manager.into(),
        operation: operation.into(),
        subresource: w.subresource.into(),
        api_version: w.api_version.into(),
        time: w.now.into(),
        fields: FieldSet::new(),
    });
    entries.last_mut().expect("just pushed")
}

/// Records a non-apply write (create, update, patch): the writer takes ownership of every field
/// whose value it set or changed; other managers lose those fields; removed fields leave every set.
pub fn record_update(old: Option<&Value>, new: &mut Value, ti: TypeInfo, w: &Writer) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let new_fields = fields_of(new, ti, w.scope);
    let old_fields = old.map(|o| fields_of(o, ti, w.scope)).unwrap_or_default();
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| match old {
            None => true,
            Some(o) => !old_fields.contains(*p) || value_at(o, p) != value_at(new, p),
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_fields.difference(&new_fields).cloned().collect();
    for e in entries.iter_mut() {
        let before = e.fields.len();
        e.fields.retain(|p| !removed.contains(p) && !changed.contains(p));
        if e.fields.len() != before {
            e.time = w.now.into();
        }
    }
    if !changed.is_empty() {
        let mine = entry_mut(&mut entries, w, "Update");
        mine.fields.extend(changed);
        mine.time = w.now.into();
        mine.api_version = w.api_version.into();
    }
    entries.retain(|e| !e.fields.is_empty());
    write_entries(new, &entries);
}

/// Merges an applied configuration into an object: maps recursively, associative lists by key,
/// set lists as unions, everything else replaced.
fn merge_applied(target: &mut Value, applied: &Value, ti: TypeInfo, in_metadata: bool, schema: Option<&Value>) {
    let (Value::Object(t), Value::Object(a)) = (&mut *target, applied) else {
        *target = applied.clone();
        return;
    };
    for (k, av) in a {
        let cs = child_schema(schema, k);
        let meta = in_metadata || (k == "metadata" && schema == ti.schema);
        match av {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(_) => {
                let tv = t.entry(k.clone()).or_insert_with(|| json!({}));
                merge_applied(tv, av, ti, meta, cs);
            }
            Value::Array(items) => {
                let lt = list_type(ti, in_metadata, k, cs, items);
                let tv = t.entry(k.clone()).or_insert_with(|| json!([]));
                let Value::Array(existing) = tv else {
                    *tv = av.clone();
                    continue;
                };
                match lt {
                    ListType::Atomic => *tv = av.clone(),
                    ListType::Set => {
                        for i in items {
                            if !existing.contains(i) {
                                existing.push(i.clone());
                            }
                        }
                    }
                    ListType::Map(keys) => {
                        let item_schema = cs.and_then(|s| s.get("items"));
                        for i in items {
                            match existing.iter_mut().find(|e| keys.iter().all(|key| e.get(key) == i.get(key))) {
                                Some(e) => merge_applied(e, i, ti, in_metadata, item_schema),
                                None => existing.push(i.clone()),
                            }
                        }
                    }
                }
            }
            scalar => {
                t.insert(k.clone(), scalar.clone());
            }
        }
    }
}

/// Server-side apply of `applied` (already restricted to the writer's scope) onto `live`.
/// Returns the new object with managedFields updated, or a 409 Conflict naming the owners.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    ti: TypeInfo,
    w: &Writer,
    force: bool,
    id: (&str, &str, &str),
) -> Result<Value, ApiError> {
    let mut entries = live.map(read_entries).unwrap_or_default();
    let new_set = fields_of(applied, ti, w.scope);
    let mut conflicts = Vec::new();
    if let Some(live) = live {
        for e in entries.iter_mut() {
            if e.same_owner(w.manager, "Apply", w.subresource) {
                continue;
            }
            let clashing: Vec<FieldPath> = e
                .fields
                .intersection(&new_set)
                .filter(|p| {
                    let last = p.last().map(String::as_str).unwrap_or("");
                    !last.starts_with("k:")
                        && !last.starts_with("v:")
                        && value_at(live, p).is_some()
                        && value_at(live, p) != value_at(applied, p)
                })
                .cloned()
                .collect();
            for p in clashing {
                if force {
                    e.fields.remove(&p);
                    e.time = w.now.into();
                } else {
                    conflicts.push((e.manager.clone(), p));
                }
            }
        }
    }
    if !conflicts.is_empty() {
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(m, p)| Cause {
                kind: "FieldManagerConflict".into(),
                field: dotted(p),
                message: format!("conflict with \"{m}\""),
            })
            .collect();
        let list: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.message, c.field)).collect();
        let (group, plural, name) = id;
        let err = ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                causes.len(),
                if causes.len() == 1 { "" } else { "s" },
                list.join(", ")
            ),
        )
        .with_details(group, plural, name)
        .with_causes(causes);
        return Err(err);
    }
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let old_mine = entries
        .iter()
        .find(|e| e.same_owner(w.manager, "Apply", w.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: Vec<&FieldPath> = entries
        .iter()
        .filter(|e| !e.same_owner(w.manager, "Apply", w.subresource))
        .flat_map(|e| e.fields.iter())
        .collect();
    // Fields this applier stopped applying go away, unless another manager owns them (or, for a
    // list element or map, anything below them). Shallowest first: an associative-list element is
    // found by its key fields, so removing those fields first would leave an empty `{}` behind.
    let mut removed: Vec<&FieldPath> = old_mine
        .difference(&new_set)
        .filter(|p| !others.iter().any(|o| o.starts_with(p)) && !new_set.iter().any(|n| n.starts_with(p)))
        .collect();
    removed.sort_by_key(|p| p.len());
    for p in removed {
        remove_at(&mut result, p);
    }
    merge_applied(&mut result, applied, ti, false, ti.schema);
    let mine = entry_mut(&mut entries, w, "Apply");
    if mine.fields != new_set {
        mine.fields = new_set;
        mine.time = w.now.into();
    }
    mine.api_version = w.api_version.into();
    entries.retain(|e| !e.fields.is_empty());
    write_entries(&mut result, &entries);
    Ok(result)
}

/// `.spec.containers[name="a"].image` style rendering of a field path, as the real server reports.
pub fn dotted(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(n) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(n);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: TypeInfo = TypeInfo { kind: "Pod", schema: None };
    const MAIN: Scope = Scope::Main { status_separate: true };

    fn writer(manager: &str) -> Writer<'_> {
        Writer { manager, subresource: "", api_version: "v1", now: "2024-01-01T00:00:00Z", scope: MAIN }
    }

    #[test]
    fn fields_v1_round_trip() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n"}, "status": {"phase": "Running"}});
        let set = fields_of(&obj, POD, MAIN);
        let encoded = to_fields_v1(&set);
        assert_eq!(
            encoded,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"x\"": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {}}}, "f:nodeName": {}}})
        );
        assert_eq!(from_fields_v1(&encoded), set);
    }

    #[test]
    fn two_appliers_merge_and_conflict() {
        let id = ("", "pods", "p");
        let a = json!({"metadata": {"name": "p"}, "spec": {"ipam": {"requested": [1]}}});
        let obj = apply(None, &a, POD, &writer("agent"), false, id).unwrap();
        let b = json!({"metadata": {"name": "p"}, "spec": {"ipam": {"allocated": [2]}}});
        let obj = apply(Some(&obj), &b, POD, &writer("operator"), false, id).unwrap();
        assert_eq!(obj["spec"]["ipam"], json!({"requested": [1], "allocated": [2]}));
        // Same value: shared ownership, no conflict.
        let same = json!({"metadata": {"name": "p"}, "spec": {"ipam": {"allocated": [2], "requested": [1]}}});
        let obj = apply(Some(&obj), &same, POD, &writer("operator"), false, id).unwrap();
        // Different value on a field the agent owns: conflict naming the agent and the field.
        let clash = json!({"metadata": {"name": "p"}, "spec": {"ipam": {"allocated": [2], "requested": [9]}}});
        let err = apply(Some(&obj), &clash, POD, &writer("operator"), false, id).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.causes[0].field, ".spec.ipam.requested");
        assert!(err.message.contains("\"agent\""), "{}", err.message);
        // Forced: the operator takes the field over.
        let obj = apply(Some(&obj), &clash, POD, &writer("operator"), true, id).unwrap();
        assert_eq!(obj["spec"]["ipam"]["requested"], json!([9]));
        let agent = read_entries(&obj).into_iter().find(|e| e.manager == "agent");
        assert!(agent.is_none(), "the agent lost its only field");
        // The operator stops applying `requested`: nobody else owns it, so it is removed.
        let only_alloc = json!({"metadata": {"name": "p"}, "spec": {"ipam": {"allocated": [2]}}});
        let obj = apply(Some(&obj), &only_alloc, POD, &writer("operator"), false, id).unwrap();
        assert_eq!(obj["spec"]["ipam"], json!({"allocated": [2]}));
    }

    #[test]
    fn an_associative_list_element_no_longer_applied_is_removed_whole() {
        let id = ("", "pods", "p");
        let status_writer = |manager| Writer { subresource: "status", scope: Scope::Status, ..writer(manager) };
        let cond = |t: &str| json!({"type": t, "status": "True", "reason": "r"});
        let a = json!({"metadata": {"name": "p"}, "status": {"conditions": [cond("A")]}});
        let obj = apply(None, &a, POD, &status_writer("a"), false, id).unwrap();
        let b = json!({"metadata": {"name": "p"}, "status": {"conditions": [cond("B")]}});
        let obj = apply(Some(&obj), &b, POD, &status_writer("b"), false, id).unwrap();
        assert_eq!(obj["status"]["conditions"], json!([cond("A"), cond("B")]));
        let nothing = json!({"metadata": {"name": "p"}, "status": {}});
        let obj = apply(Some(&obj), &nothing, POD, &status_writer("a"), false, id).unwrap();
        assert_eq!(obj["status"]["conditions"], json!([cond("B")]), "A's element is gone, not left as {{}}");
    }

    #[test]
    fn update_takes_ownership() {
        let id = ("", "pods", "p");
        let a = json!({"metadata": {"name": "p"}, "spec": {"x": 1, "y": 2}});
        let obj = apply(None, &a, POD, &writer("applier"), false, id).unwrap();
        let mut updated = obj.clone();
        updated["spec"]["x"] = json!(5);
        record_update(Some(&obj), &mut updated, POD, &writer("editor"));
        let entries = read_entries(&updated);
        let editor = entries.iter().find(|e| e.manager == "editor").unwrap();
        assert!(editor.fields.contains(&vec!["f:spec".to_string(), "f:x".to_string()]));
        let applier = entries.iter().find(|e| e.manager == "applier").unwrap();
        assert!(!applier.fields.contains(&vec!["f:spec".to_string(), "f:x".to_string()]));
        // Re-applying the old value of x now conflicts with the editor.
        let err = apply(Some(&updated), &a, POD, &writer("applier"), false, id).unwrap_err();
        assert!(err.message.contains("editor"));
    }
}
