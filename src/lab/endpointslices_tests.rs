use super::*;
use serde_json::json;

fn service(extra: serde_json::Value) -> Service {
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
        "spec": {"selector": {"app": "echo"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}
        ]}
    });
    merge(&mut svc, extra);
    serde_json::from_value(svc).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn pod(name: &str, ip: &str, node: &str, ready: bool, web_port: i32, extra: serde_json::Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"), "labels": {"app": "echo"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "web", "containerPort": web_port, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
    });
    merge(&mut p, extra);
    serde_json::from_value(p).unwrap()
}

fn node(name: &str, zone: Option<&str>) -> Node {
    let labels = zone.map(|z| json!({ZONE_LABEL: z})).unwrap_or(json!({}));
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn conditions(e: &Endpoint) -> (bool, bool, bool) {
    let c = e.conditions.clone().unwrap();
    (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
}

#[test]
fn ready_unready_and_terminating_pods_with_named_ports_node_and_zone() {
    let pods = [
        pod("a", "10.0.1.5", "n1", true, 8080, json!({})),
        pod("b", "10.0.2.7", "n2", false, 8080, json!({})),
        pod("c", "10.0.1.9", "n1", true, 8080, json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})),
        pod("other", "10.0.1.10", "n1", true, 8080, json!({"metadata": {"labels": {"app": "other"}}})),
        pod(
            "pending",
            "",
            "",
            false,
            8080,
            json!({"spec": {"nodeName": null}, "status": {"podIP": null, "podIPs": null}}),
        ),
        pod("done", "10.0.1.11", "n1", true, 8080, json!({"status": {"phase": "Succeeded"}})),
    ];
    let slices = desired_slices(&service(json!({})), &pods, &[node("n1", Some("zone-a")), node("n2", None)]);
    assert_eq!(slices.len(), 1, "one family, one port set: {slices:#?}");
    let s = &slices[0];
    assert_eq!(s.address_type, "IPv4");
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels[SERVICE_NAME_LABEL], "echo");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(labels["team"], "a", "service labels are copied");
    assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, "svc-uid");
    let ports: Vec<(String, i32, String)> =
        s.ports.clone().unwrap().into_iter().map(|p| (p.name.unwrap(), p.port.unwrap(), p.protocol.unwrap())).collect();
    assert_eq!(ports, [("http".to_string(), 8080, "TCP".to_string()), ("dns".into(), 5353, "UDP".into())]);
    type Row = (String, (bool, bool, bool), String, Option<String>, String);
    let got: Vec<Row> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].clone(),
                conditions(e),
                e.node_name.clone().unwrap(),
                e.zone.clone(),
                e.target_ref.clone().unwrap().name.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "10.0.1.5".to_string(),
                (true, true, false),
                "n1".to_string(),
                Some("zone-a".to_string()),
                "a".to_string()
            ),
            ("10.0.2.7".into(), (false, false, false), "n2".into(), None, "b".into()),
            ("10.0.1.9".into(), (false, true, true), "n1".into(), Some("zone-a".into()), "c".into()),
        ]
    );
}

#[test]
fn pods_resolving_a_named_port_differently_go_to_different_slices() {
    let pods = [
        pod("a", "10.0.1.5", "n1", true, 8080, json!({})),
        pod("b", "10.0.1.6", "n1", true, 9090, json!({})),
        // No container port named `web`: no `http` endpoint port for this pod.
        pod("c", "10.0.1.7", "n1", true, 8080, json!({"spec": {"containers": [{"name": "c"}]}})),
    ];
    let slices = desired_slices(&service(json!({})), &pods, &[]);
    let mut summary: Vec<(Vec<i32>, Vec<String>)> = slices
        .iter()
        .map(|s| {
            (
                s.ports.iter().flatten().map(|p| p.port.unwrap()).collect(),
                s.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
            )
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            (vec![5353], vec!["10.0.1.7".to_string()]),
            (vec![8080, 5353], vec!["10.0.1.5".to_string()]),
            (vec![9090, 5353], vec!["10.0.1.6".to_string()]),
        ]
    );
    let names: std::collections::BTreeSet<_> = slices.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names.len(), 3, "distinct names");
}

#[test]
fn special_services() {
    let pods = [pod("b", "10.0.2.7", "n2", false, 8080, json!({}))];
    // publishNotReadyAddresses: not-ready pods are ready endpoints.
    let s = desired_slices(&service(json!({"spec": {"publishNotReadyAddresses": true}})), &pods, &[]);
    assert_eq!(conditions(&s[0].endpoints[0]), (true, false, false));
    // No selector: the Service's slices are not ours.
    assert!(desired_slices(&service(json!({"spec": {"selector": null}})), &pods, &[]).is_empty());
    // No matching pods: one empty placeholder slice.
    let s = desired_slices(&service(json!({"spec": {"selector": {"app": "nobody"}}})), &pods, &[]);
    assert_eq!((s.len(), s[0].endpoints.len(), s[0].ports.is_none()), (1, 0, true));
    // An IPv6-only Service ignores the pods' IPv4 addresses.
    let dual =
        pod("d", "10.0.1.5", "n1", true, 80, json!({"status": {"podIPs": [{"ip": "10.0.1.5"}, {"ip": "fd00::5"}]}}));
    let s = desired_slices(&service(json!({"spec": {"ipFamilies": ["IPv6"]}})), &[dual], &[]);
    assert_eq!((s[0].address_type.as_str(), s[0].endpoints[0].addresses[0].as_str()), ("IPv6", "fd00::5"));
}

#[test]
fn same_content_ignores_metadata_other_than_labels() {
    let pods = [pod("a", "10.0.1.5", "n1", true, 8080, json!({}))];
    let desired = desired_slices(&service(json!({})), &pods, &[]).remove(0);
    let mut stored = desired.clone();
    stored.metadata.resource_version = Some("42".into());
    assert!(same_content(&stored, &desired));
    stored.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
    assert!(!same_content(&stored, &desired));
}

#[test]
fn groups_split_at_the_max_endpoints_per_slice() {
    // (ready pods, expected endpoints per slice)
    let cases: &[(usize, &[usize])] =
        &[(0, &[0]), (1, &[1]), (100, &[100]), (101, &[100, 1]), (250, &[100, 100, 50]), (300, &[100, 100, 100])];
    for &(count, expected) in cases {
        let pods: Vec<Pod> = (0..count)
            .map(|i| {
                pod(&format!("p{i:03}"), &format!("10.0.{}.{}", i / 200, i % 200 + 1), "n1", true, 8080, json!({}))
            })
            .collect();
        let slices = desired_slices(&service(json!({})), &pods, &[node("n1", None)]);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, expected, "{count} pods");
        let names: std::collections::BTreeSet<String> =
            slices.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        assert_eq!(names.len(), slices.len(), "{count} pods: distinct names {names:?}");
        let mut all: Vec<String> =
            slices.iter().flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone())).collect();
        let total = all.len();
        all.sort();
        all.dedup();
        assert_eq!((total, all.len()), (count, count), "every endpoint exactly once");
        assert!(slices.iter().all(|s| s.ports == slices[0].ports), "every slice carries the group's ports");
    }
    // The first slice keeps its name as the group grows past the limit (no churn for small services).
    let one =
        desired_slices(&service(json!({})), &[pod("a", "10.0.0.1", "n1", true, 8080, json!({}))], &[node("n1", None)]);
    let many: Vec<Pod> =
        (0..101).map(|i| pod(&format!("p{i:03}"), &format!("10.0.1.{}", i + 1), "n1", true, 8080, json!({}))).collect();
    let split = desired_slices(&service(json!({})), &many, &[node("n1", None)]);
    assert_eq!(one[0].metadata.name, split[0].metadata.name);
    assert_eq!(split[1].metadata.name.clone().unwrap(), format!("{}-1", split[0].metadata.name.clone().unwrap()));
}

#[test]
fn a_dual_stack_service_gets_one_slice_per_family_from_the_pods_pod_ips() {
    let dual = |name: &str, v4: &str, v6: &str| {
        pod(name, v4, "n1", true, 8080, json!({"status": {"podIPs": [{"ip": v4}, {"ip": v6}]}}))
    };
    let pods = [
        dual("a", "10.0.1.5", "fd00:10:1::5"),
        dual("b", "10.0.1.6", "fd00:10:1::6"),
        pod("c", "10.0.1.7", "n1", true, 8080, json!({})),
    ];
    let svc = service(json!({"spec": {"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}}));
    let s = desired_slices(&svc, &pods, &[]);
    let by_family: BTreeMap<&str, Vec<&str>> = s
        .iter()
        .map(|s| (s.address_type.as_str(), s.endpoints.iter().map(|e| e.addresses[0].as_str()).collect()))
        .collect();
    assert_eq!(s.len(), 2, "one slice per family: {s:?}");
    assert_eq!(by_family["IPv4"], ["10.0.1.5", "10.0.1.6", "10.0.1.7"]);
    assert_eq!(
        by_family["IPv6"],
        ["fd00:10:1::5", "fd00:10:1::6"],
        "a pod without an IPv6 address is only in the IPv4 slice"
    );
    assert_ne!(s[0].metadata.name, s[1].metadata.name);
    assert_eq!(s[0].ports, s[1].ports, "the same resolved ports in both families");
    // A single-stack (default IPv4) Service ignores the pods' IPv6 addresses.
    let s = desired_slices(&service(json!({})), &pods, &[]);
    assert_eq!((s.len(), s[0].address_type.as_str(), s[0].endpoints.len()), (1, "IPv4", 3));
}
