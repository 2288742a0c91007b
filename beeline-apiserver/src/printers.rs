//! The `meta.k8s.io/v1` Table kubectl prints by default: the real API server's columns for the
//! built-in kinds the project uses, and a CRD version's `additionalPrinterColumns` for custom
//! resources. Pure: objects and the current time in, a Table out.
//!
//! Like the real server, every cell is rendered server-side: ages (built-in `Age` and CRD `date`
//! columns) are humanized strings ("5m", "3h12m"), and a CRD column whose value is absent is `null`,
//! which kubectl prints blank.

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::resources::ResourceType;

/// Computes one cell from the whole object and the current time.
type CellFn = fn(&Value, Timestamp) -> Value;

/// A column whose cell is computed by a function of the whole object.
struct Builtin {
    name: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    priority: u8,
    cell: CellFn,
}

const fn col(name: &'static str, priority: u8, cell: CellFn) -> Builtin {
    Builtin { name, priority, cell }
}

const AGE: Builtin = col("Age", 0, age_cell);
const NODES: &[Builtin] = &[
    col("Status", 0, node_status),
    col("Roles", 0, node_roles),
    AGE,
    col("Version", 0, |o, _| str_or(o, "/status/nodeInfo/kubeletVersion", "")),
    col("Internal-IP", 1, |o, _| node_address(o, "InternalIP")),
    col("External-IP", 1, |o, _| node_address(o, "ExternalIP")),
];
const PODS: &[Builtin] = &[
    col("Ready", 0, pod_ready),
    col("Status", 0, pod_status),
    col("Restarts", 0, pod_restarts),
    AGE,
    col("IP", 1, |o, _| str_or(o, "/status/podIP", "<none>")),
    col("Node", 1, |o, _| str_or(o, "/spec/nodeName", "<none>")),
];
const SERVICES: &[Builtin] = &[
    col("Type", 0, |o, _| str_or(o, "/spec/type", "ClusterIP")),
    col("Cluster-IP", 0, |o, _| str_or(o, "/spec/clusterIP", "<none>")),
    col("External-IP", 0, service_external_ip),
    col("Port(s)", 0, service_ports),
    AGE,
    col("Selector", 1, service_selector),
];
const CONFIGMAPS: &[Builtin] = &[col("Data", 0, configmap_data), AGE];
const NAMESPACES: &[Builtin] = &[col("Status", 0, |o, _| str_or(o, "/status/phase", "")), AGE];
const ENDPOINTSLICES: &[Builtin] = &[
    col("AddressType", 0, |o, _| str_or(o, "/addressType", "")),
    col("Ports", 0, slice_ports),
    col("Endpoints", 0, slice_endpoints),
    AGE,
];
const LEASES: &[Builtin] = &[col("Holder", 0, |o, _| str_or(o, "/spec/holderIdentity", "")), AGE];

/// Built-in kinds' columns after Name, by plural (the real server's, trimmed to the useful ones).
fn builtin_columns(plural: &str) -> &'static [Builtin] {
    match plural {
        "nodes" => NODES,
        "pods" => PODS,
        "services" => SERVICES,
        "configmaps" => CONFIGMAPS,
        "namespaces" => NAMESPACES,
        "endpointslices" => ENDPOINTSLICES,
        "leases" => LEASES,
        _ => &[AGE],
    }
}

/// A Table of `objects` of type `rt` as served at `version`, ages measured from `now`.
pub fn table(rt: &ResourceType, version: &str, objects: &[Value], rv: Option<u64>, now: Timestamp) -> Value {
    let name_col = json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0});
    let (mut columns, rows): (Vec<Value>, Vec<Vec<Value>>) = match printer_columns(rt, version) {
        Some(crd_cols) => (
            crd_cols.iter().map(CrdColumn::definition).collect(),
            objects.iter().map(|o| crd_cols.iter().map(|c| c.cell(o, now)).collect()).collect(),
        ),
        None => {
            let cols = builtin_columns(&rt.plural);
            (
                cols.iter()
                    .map(|c| json!({"name": c.name, "type": "string", "format": "", "description": c.name, "priority": c.priority}))
                    .collect(),
                objects.iter().map(|o| cols.iter().map(|c| (c.cell)(o, now)).collect()).collect(),
            )
        }
    };
    columns.insert(0, name_col);
    let rows: Vec<Value> = objects
        .iter()
        .zip(rows)
        .map(|(o, mut cells)| {
            let meta = o.get("metadata").cloned().unwrap_or(json!({}));
            cells.insert(0, meta.get("name").cloned().unwrap_or(json!("")));
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = rv {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns, "rows": rows})
}

// ---- custom resources ----

/// One of a CRD version's `additionalPrinterColumns`.
struct CrdColumn {
    definition: Value,
    ty: String,
    path: Option<JsonPath>,
}

impl CrdColumn {
    fn definition(&self) -> Value {
        self.definition.clone()
    }

    /// Like the real server: `string` columns print any value; typed columns keep only values
    /// of their type; `date` is humanized; missing or mistyped values are `null`.
    fn cell(&self, obj: &Value, now: Timestamp) -> Value {
        let Some(v) = self.path.as_ref().and_then(|p| p.first(obj)) else { return Value::Null };
        match (self.ty.as_str(), v) {
            ("string", Value::String(_)) => v.clone(),
            ("string", Value::Null) => Value::Null,
            ("string", other) => json!(other.to_string()),
            ("integer", Value::Number(n)) => {
                n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).map_or(Value::Null, |i| json!(i))
            }
            ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
            ("boolean", Value::Bool(_)) => v.clone(),
            ("date", Value::String(s)) => {
                json!(s.parse::<Timestamp>().map_or("<invalid>".into(), |t| human_age(t, now)))
            }
            _ => Value::Null,
        }
    }
}

/// The printer columns of a custom resource version (after Name); `None` for built-in kinds.
/// A version without any gets the real server's default, a single `Age` date column.
fn printer_columns(rt: &ResourceType, version: &str) -> Option<Vec<CrdColumn>> {
    let crd = rt.crd.as_ref()?;
    let declared = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("name").and_then(Value::as_str) == Some(version)))
        .and_then(|v| v.get("additionalPrinterColumns"))
        .and_then(Value::as_array)
        .filter(|cols| !cols.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})]);
    Some(
        declared
            .iter()
            .map(|c| {
                let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                CrdColumn {
                    definition: json!({
                        "name": s("name"), "type": s("type"), "format": s("format"),
                        "description": s("description"), "priority": c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    }),
                    ty: s("type"),
                    path: JsonPath::parse(&s("jsonPath")),
                }
            })
            .collect(),
    )
}

/// The JSONPath subset printer columns use: `.a.b`, `.a[0].b`, `.a[?(@.k=="v")].b`
/// (optionally wrapped in `{}`).
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    /// Keep the list items whose `path` equals `value`.
    Filter {
        path: Vec<String>,
        value: String,
    },
}

#[derive(Debug, PartialEq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    pub fn parse(expr: &str) -> Option<JsonPath> {
        let expr = expr.trim();
        let mut rest = expr.strip_prefix('{').and_then(|e| e.strip_suffix('}')).unwrap_or(expr);
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return None;
                }
                steps.push(Step::Field(r[..end].to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix("[?(@.") {
                let end = r.find(")]")?;
                let (lhs, rhs) = r[..end].split_once("==")?;
                let value = rhs.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
                steps.push(Step::Filter { path: lhs.trim().split('.').map(String::from).collect(), value });
                rest = &r[end + 2..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']')?;
                steps.push(Step::Index(r[..end].trim().parse().ok()?));
                rest = &r[end + 1..];
            } else {
                return None;
            }
        }
        Some(JsonPath(steps))
    }

    /// The first value the path selects (a filter may select several; the server prints the first).
    pub fn first<'a>(&self, obj: &'a Value) -> Option<&'a Value> {
        fn walk<'a>(steps: &[Step], v: &'a Value) -> Option<&'a Value> {
            let Some((step, rest)) = steps.split_first() else { return Some(v) };
            match step {
                Step::Field(f) => walk(rest, v.get(f)?),
                Step::Index(i) => walk(rest, v.get(i)?),
                Step::Filter { path, value } => v.as_array()?.iter().find_map(|item| {
                    let got = path.iter().try_fold(item, |cur, k| cur.get(k))?;
                    // `@.type=="X"` compares strings; `@.ready==true` compares JSON literals.
                    let matched = match got {
                        Value::String(s) => s == value,
                        other => value.parse::<Value>().is_ok_and(|v| v == *other),
                    };
                    if matched {
                        walk(rest, item)
                    } else {
                        None
                    }
                }),
            }
        }
        walk(&self.0, obj)
    }
}

// ---- built-in kinds ----

fn str_or(o: &Value, pointer: &str, default: &str) -> Value {
    json!(o.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or(default))
}

fn items<'a>(o: &'a Value, pointer: &str) -> &'a [Value] {
    o.pointer(pointer).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Joins `parts`, or `none` when there are none.
fn joined(parts: Vec<String>, none: &str) -> Value {
    json!(if parts.is_empty() { none.to_string() } else { parts.join(",") })
}

fn age_cell(o: &Value, now: Timestamp) -> Value {
    let created = o.pointer("/metadata/creationTimestamp").and_then(Value::as_str).and_then(|s| s.parse().ok());
    json!(created.map_or("<unknown>".into(), |t| human_age(t, now)))
}

fn condition<'a>(o: &'a Value, ty: &str) -> Option<&'a Value> {
    items(o, "/status/conditions").iter().find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn node_status(o: &Value, _: Timestamp) -> Value {
    let mut status = match condition(o, "Ready").and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    }
    .to_string();
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value, _: Timestamp) -> Value {
    let labels = o.pointer("/metadata/labels").and_then(Value::as_object);
    let mut roles: Vec<String> = labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) if !role.is_empty() => Some(role.to_string()),
            _ if k == "kubernetes.io/role" => v.as_str().filter(|r| !r.is_empty()).map(String::from),
            _ => None,
        })
        .collect();
    roles.sort();
    roles.dedup();
    joined(roles, "<none>")
}

fn node_address(o: &Value, ty: &str) -> Value {
    let addr = items(o, "/status/addresses").iter().find(|a| a.get("type").and_then(Value::as_str) == Some(ty));
    json!(addr.and_then(|a| a.get("address")).and_then(Value::as_str).unwrap_or("<none>"))
}

fn pod_ready(o: &Value, _: Timestamp) -> Value {
    let total = items(o, "/spec/containers").len();
    let ready = items(o, "/status/containerStatuses").iter().filter(|c| c.get("ready") == Some(&json!(true))).count();
    json!(format!("{ready}/{total}"))
}

/// The real server's pod "reason": Terminating, else a container's waiting or terminated
/// reason, else the pod's reason, else its phase.
fn pod_status(o: &Value, _: Timestamp) -> Value {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let container_reason = items(o, "/status/containerStatuses").iter().rev().find_map(|c| {
        ["/state/waiting/reason", "/state/terminated/reason"]
            .iter()
            .find_map(|p| c.pointer(p).and_then(Value::as_str).filter(|r| !r.is_empty()))
    });
    let reason = container_reason
        .or_else(|| o.pointer("/status/reason").and_then(Value::as_str))
        .or_else(|| o.pointer("/status/phase").and_then(Value::as_str))
        .unwrap_or("Pending");
    json!(reason)
}

fn pod_restarts(o: &Value, _: Timestamp) -> Value {
    let restarts: i64 = items(o, "/status/containerStatuses")
        .iter()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    json!(restarts.to_string())
}

fn service_external_ip(o: &Value, _: Timestamp) -> Value {
    let external: Vec<String> =
        items(o, "/spec/externalIPs").iter().filter_map(|ip| ip.as_str().map(String::from)).collect();
    match o.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP") {
        "ExternalName" => str_or(o, "/spec/externalName", "<none>"),
        "LoadBalancer" => {
            let mut ips: Vec<String> = items(o, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| i.get("ip").or_else(|| i.get("hostname")).and_then(Value::as_str).map(String::from))
                .collect();
            ips.extend(external);
            joined(ips, "<pending>")
        }
        _ => joined(external, "<none>"),
    }
}

fn service_ports(o: &Value, _: Timestamp) -> Value {
    let ports = items(o, "/spec/ports").iter().map(|p| {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
            Some(node_port) => format!("{port}:{node_port}/{proto}"),
            None => format!("{port}/{proto}"),
        }
    });
    joined(ports.collect(), "<none>")
}

fn service_selector(o: &Value, _: Timestamp) -> Value {
    let selector = o.pointer("/spec/selector").and_then(Value::as_object);
    let pairs = selector.into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")));
    joined(pairs.collect(), "<none>")
}

fn configmap_data(o: &Value, _: Timestamp) -> Value {
    let count = |k: &str| o.get(k).and_then(Value::as_object).map_or(0, |m| m.len());
    json!(count("data") + count("binaryData"))
}

/// At most three items, then " + N more...", like the real server's EndpointSlice columns.
fn first_three(parts: Vec<String>) -> Value {
    if parts.is_empty() {
        return json!("<unset>");
    }
    let more = parts.len().saturating_sub(3);
    let shown = parts.into_iter().take(3).collect::<Vec<_>>().join(",");
    json!(if more > 0 { format!("{shown} + {more} more...") } else { shown })
}

fn slice_ports(o: &Value, _: Timestamp) -> Value {
    let ports = items(o, "/ports")
        .iter()
        .map(|p| p.get("port").and_then(Value::as_i64).map_or("<unset>".into(), |n| n.to_string()));
    first_three(ports.collect())
}

fn slice_endpoints(o: &Value, _: Timestamp) -> Value {
    let addrs =
        items(o, "/endpoints").iter().flat_map(|e| items(e, "/addresses")).filter_map(|a| a.as_str().map(String::from));
    first_three(addrs.collect())
}

/// The real server's humanized duration (`0s`..`119s`, `2m5s`, `15m`, `3h20m`, `20h`, `3d4h`,
/// `40d`, `2y10d`, `9y`).
pub fn human_age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - then.as_second();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (mins, hours) = (secs / 60, secs / 3600);
    let (days, years) = (hours / 24, hours / (24 * 365));
    let two = |n: i64, a: &str, m: i64, b: &str| if m == 0 { format!("{n}{a}") } else { format!("{n}{a}{m}{b}") };
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if mins < 10 => two(mins, "m", secs % 60, "s"),
        _ if mins < 180 => format!("{mins}m"),
        _ if hours < 8 => two(hours, "h", mins % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => two(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => two(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn human_age_table() {
        let t0 = ts("2024-01-01T00:00:00Z");
        let cases = [
            (0, "0s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 20 * 60, "3h20m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (40 * 86400, "40d"),
            ((365 * 2 + 10) * 86400, "2y10d"),
            (365 * 9 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            let now = Timestamp::from_second(t0.as_second() + secs).unwrap();
            assert_eq!(human_age(t0, now), want, "{secs}s");
        }
        assert_eq!(human_age(ts("2024-01-01T00:00:10Z"), t0), "<invalid>");
    }

    #[test]
    fn jsonpath_subset() {
        let obj = json!({"spec": {"addresses": [{"type": "InternalIP", "ip": "10.0.0.1"}, {"type": "CiliumInternalIP", "ip": "10.1.0.5"}],
            "flags": [{"on": false, "v": 6}, {"on": true, "v": 7}]},
            "status": {"conditions": [{"type": "cilium.io/IPsAvailable", "status": "True", "message": "254"}], "n": [1, 2]}});
        let cases = [
            (".spec.addresses[?(@.type==\"CiliumInternalIP\")].ip", Some(json!("10.1.0.5"))),
            ("{.spec.addresses[0].ip}", Some(json!("10.0.0.1"))),
            (".status.conditions[?(@.type==\"cilium.io/IPsAvailable\")].message", Some(json!("254"))),
            (".status.conditions[?(@.type==\"Missing\")].status", None),
            (".status.n[1]", Some(json!(2))),
            (".spec.flags[?(@.on==true)].v", Some(json!(7))),
            (".status.n[5]", None),
            (".nope.deeper", None),
        ];
        for (path, want) in cases {
            let p = JsonPath::parse(path).unwrap_or_else(|| panic!("parse {path}"));
            assert_eq!(p.first(&obj).cloned(), want, "{path}");
        }
        assert_eq!(JsonPath::parse(".a..b"), None);
        assert_eq!(JsonPath::parse(".a[x]"), None);
    }

    #[test]
    fn builtin_cells() {
        let now = ts("2024-01-01T01:00:00Z");
        let node = json!({"metadata": {"name": "n1", "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": ""}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}], "nodeInfo": {"kubeletVersion": "v1.31.0"},
            "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}]}});
        let svc = |ty: &str, status: Value| {
            json!({"metadata": {"name": "s"}, "spec": {"type": ty, "clusterIP": "10.96.0.9",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}, "status": status})
        };
        let cases: Vec<(CellFn, Value, Value)> = vec![
            (node_status, node.clone(), json!("NotReady")),
            (node_roles, node.clone(), json!("control-plane,worker")),
            (node_roles, json!({}), json!("<none>")),
            (age_cell, node.clone(), json!("60m")),
            (|o, _| node_address(o, "InternalIP"), node.clone(), json!("192.168.1.2")),
            (|o, _| node_address(o, "ExternalIP"), node, json!("<none>")),
            (service_external_ip, svc("LoadBalancer", json!({})), json!("<pending>")),
            (
                service_external_ip,
                svc("LoadBalancer", json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})),
                json!("1.2.3.4"),
            ),
            (service_external_ip, svc("ClusterIP", json!({})), json!("<none>")),
            (service_ports, svc("NodePort", json!({})), json!("80:30080/TCP,53/UDP")),
            (
                pod_ready,
                json!({"spec": {"containers": [{}, {}]}, "status": {"containerStatuses": [{"ready": true}]}}),
                json!("1/2"),
            ),
            (
                pod_status,
                json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
                json!("CrashLoopBackOff"),
            ),
            (
                pod_status,
                json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}}),
                json!("Terminating"),
            ),
            (configmap_data, json!({"data": {"a": "1", "b": "2"}, "binaryData": {"c": ""}}), json!(3)),
            (
                slice_endpoints,
                json!({"endpoints": [{"addresses": ["a", "b"]}, {"addresses": ["c", "d", "e"]}]}),
                json!("a,b,c + 2 more..."),
            ),
            (slice_ports, json!({"ports": [{"port": 80}, {"name": "x"}]}), json!("80,<unset>")),
        ];
        for (i, (cell, obj, want)) in cases.into_iter().enumerate() {
            assert_eq!(cell(&obj, now), want, "case {i}: {obj}");
        }
    }
}
