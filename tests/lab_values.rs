//! Every values file in `examples/lab/` translates into a valid configuration and a buildable
//! three-node lab, in the mode its name promises (no root needed).

use std::path::{Path, PathBuf};

use beeline::{
    config::{IpamMode, RoutingMode, TunnelProtocol},
    lab::{
        plan::{LabPlan, LabRequest},
        values,
    },
};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab").join(name)
}

#[test]
fn every_lab_example_is_covered_here() {
    let mut files: Vec<String> = std::fs::read_dir(example(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut covered: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    covered.sort();
    assert_eq!(files, covered, "add new examples/lab files to CASES");
}

/// (file, ipam, routing, tunnel protocol, IPv4, IPv6, Node.spec.podCIDRs of the second node)
type Case = (&'static str, IpamMode, RoutingMode, TunnelProtocol, bool, bool, &'static [&'static str]);

const CASES: &[Case] = &[
    ("vxlan.yaml", IpamMode::ClusterPool, RoutingMode::Tunnel, TunnelProtocol::Vxlan, true, false, &[]),
    ("vxlan-kpr.yaml", IpamMode::ClusterPool, RoutingMode::Tunnel, TunnelProtocol::Vxlan, true, false, &[]),
    ("geneve.yaml", IpamMode::ClusterPool, RoutingMode::Tunnel, TunnelProtocol::Geneve, true, false, &[]),
    ("native.yaml", IpamMode::ClusterPool, RoutingMode::Native, TunnelProtocol::Vxlan, true, false, &[]),
    ("cluster-pool-small.yaml", IpamMode::ClusterPool, RoutingMode::Tunnel, TunnelProtocol::Vxlan, true, false, &[]),
    ("multi-pool.yaml", IpamMode::MultiPool, RoutingMode::Native, TunnelProtocol::Vxlan, true, false, &[]),
    ("dual-stack.yaml", IpamMode::ClusterPool, RoutingMode::Tunnel, TunnelProtocol::Vxlan, true, true, &[]),
    ("ipv6-only.yaml", IpamMode::ClusterPool, RoutingMode::Native, TunnelProtocol::Vxlan, false, true, &[]),
    (
        "kubernetes-ipam.yaml",
        IpamMode::Kubernetes,
        RoutingMode::Tunnel,
        TunnelProtocol::Vxlan,
        true,
        false,
        &["10.244.1.0/24"],
    ),
    (
        "dual-stack-native.yaml",
        IpamMode::Kubernetes,
        RoutingMode::Native,
        TunnelProtocol::Vxlan,
        true,
        true,
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
    ),
];

#[test]
fn lab_examples_translate_validate_and_plan() {
    for (file, ipam, routing, tunnel, v4, v6, pod_cidrs) in CASES {
        let lab_values = values::load(&example(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(lab_values.ignored.is_empty(), "{file}: {:?}", lab_values.ignored);
        let config = lab_values.validate(&Default::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!((config.ipam, config.routing_mode, config.tunnel_protocol), (*ipam, *routing, *tunnel), "{file}");
        assert_eq!((config.enable_ipv4, config.enable_ipv6), (*v4, *v6), "{file}");
        assert_eq!(config.cluster_name, "kind-kind", "{file}: the seeds' Cilium cluster name");
        let plan = LabPlan::new(&LabRequest {
            name: "kind".into(),
            nodes: 3,
            state_dir: "/run/beeline-lab".into(),
            bpffs: "/sys/fs/bpf".into(),
            values: lab_values,
        })
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let got: Vec<String> = plan.nodes[1].pod_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(got, *pod_cidrs, "{file}");
        assert_eq!(plan.nodes[1].ipv6.is_some(), *v6, "{file}: IPv6 underlay address");
    }
    // The native example keeps its routing CIDR and direct routes.
    let native = values::load(&example("native.yaml")).unwrap().validate(&Default::default()).unwrap();
    assert!(native.auto_direct_node_routes && native.kube_proxy_replacement);
    assert_eq!(native.ipv4_native_routing_cidr.unwrap().to_string(), "10.0.0.0/8");
    let small = values::load(&example("cluster-pool-small.yaml")).unwrap().validate(&Default::default()).unwrap();
    assert_eq!(small.cluster_pool_ipv4_mask_size, 29);
    assert_eq!(small.cluster_pool_ipv4_cidr.len(), 2);
}
