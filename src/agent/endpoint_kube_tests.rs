use super::*;
use crate::agent::endpoint_core::{EndpointRequest, STATE_READY};

fn identity(id: u32, labels: &[(&str, &str)]) -> CiliumIdentity {
    CiliumIdentity::new(id, labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[test]
fn identities_are_reused_by_exact_label_set() {
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let existing = vec![
        identity(300, &[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "default")]),
        identity(256, &[("k8s:app", "db"), ("k8s:io.kubernetes.pod.namespace", "default")]),
        identity(257, &[("k8s:app", "web")]),
    ];
    let want = |labels: &[(&str, &str)]| -> BTreeMap<String, String> {
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let cases: &[(Labels, Option<u32>)] = &[
        (&[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "default")], Some(300)),
        (&[("k8s:app", "web")], Some(257)),
        (&[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "other")], None),
        (&[], None),
    ];
    for (labels, id) in cases {
        assert_eq!(find_identity(&existing, &want(labels)), *id, "{labels:?}");
    }
}

#[test]
fn new_identities_take_the_smallest_free_number_from_256() {
    let cases: &[(&[u32], u32)] = &[(&[], 256), (&[256, 257], 258), (&[256, 258], 257), (&[1, 5, 300], 256)];
    for (used, want) in cases {
        assert_eq!(next_free_identity(&used.iter().copied().collect()), *want, "{used:?}");
    }
}

#[test]
fn cilium_endpoint_is_owned_by_the_pod_and_carries_id_identity_addresses_and_node() {
    let endpoint = Endpoint {
        id: 7,
        container_id: "c1".into(),
        spec: EndpointRequest {
            namespace: "shop".into(),
            pod: "web-1".into(),
            ifname: "eth0".into(),
            host_ifname: "lxcaaaaaaaaaaaa".into(),
            host_ifindex: 12,
            host_mac: "aa:aa:aa:aa:aa:aa".into(),
            mac: "bb:bb:bb:bb:bb:bb".into(),
            ips: vec!["10.0.1.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            netns: "/x".into(),
        },
        identity: 300,
        identity_labels: vec!["k8s:app=web".into()],
        state: STATE_READY.into(),
    };
    let cep = cilium_endpoint(&endpoint, "uid-1", Some("192.168.1.10".parse().unwrap()), None);
    let json = serde_json::to_value(&cep).unwrap();
    assert_eq!(json["apiVersion"], "cilium.io/v2");
    assert_eq!(json["kind"], "CiliumEndpoint");
    assert_eq!(json["metadata"]["name"], "web-1");
    assert_eq!(json["metadata"]["namespace"], "shop");
    assert_eq!(
        json["metadata"]["ownerReferences"],
        serde_json::json!([{"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": "uid-1"}])
    );
    assert_eq!(
        json["status"],
        serde_json::json!({
            "id": 7,
            "identity": {"id": 300, "labels": ["k8s:app=web"]},
            "networking": {"addressing": [{"ipv4": "10.0.1.5"}, {"ipv6": "fd00::5"}], "node": "192.168.1.10"},
            "state": "ready"
        })
    );
    // With the policy controller's enforcement: Cilium's `status.policy` shape.
    let cep = cilium_endpoint(&endpoint, "uid-1", None, Some(EndpointPolicy::enforcing(true, false)));
    let json = serde_json::to_value(&cep).unwrap();
    assert_eq!(
        json["status"]["policy"],
        serde_json::json!({"ingress": {"enforcing": true}, "egress": {"enforcing": false}})
    );
}
