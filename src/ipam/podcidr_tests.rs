use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::ipam::addr::nets_overlap;
use crate::ipam::cluster_pool::NO_REMAINING_CIDRS;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn v4(cidrs: &[&str], mask: u8) -> ClusterPoolConfig {
    ClusterPoolConfig { ipv4: Some(FamilyPoolConfig { cidrs: nets(cidrs), mask_size: mask }), ipv6: None }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn cn(name: &str, cidrs: &[&str]) -> ExistingCiliumNode {
    ExistingCiliumNode { name: name.into(), pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect() }
}

/// Feeds the desired state back as the next pass's CiliumNodes (what the controller's writes do).
fn as_existing(desired: &DesiredPodCidrs) -> Vec<ExistingCiliumNode> {
    desired.nodes.iter().map(|(n, d)| ExistingCiliumNode { name: n.clone(), pod_cidrs: d.pod_cidrs.clone() }).collect()
}

fn cidrs_of(desired: &DesiredPodCidrs, node: &str) -> Vec<String> {
    desired.nodes[node].pod_cidrs.clone()
}

#[test]
fn seeds_small_pool_four_nodes_then_exhaustion() {
    let pools = ClusterPools::new(&v4(&["10.0.42.0/28", "10.0.84.0/28"], 29)).unwrap();
    let nodes = names(&["kind-control-plane", "kind-worker", "kind-worker2", "kind-worker3", "kind-worker4"]);
    let desired = pools.desired(&nodes, &[]);
    let expected = [
        ("kind-control-plane", "10.0.42.0/29"),
        ("kind-worker", "10.0.42.8/29"),
        ("kind-worker2", "10.0.84.0/29"),
        ("kind-worker3", "10.0.84.8/29"),
    ];
    for (node, cidr) in expected {
        assert_eq!(cidrs_of(&desired, node), [cidr], "{node}");
        assert_eq!(desired.nodes[node].error, None);
    }
    let starved = &desired.nodes["kind-worker4"];
    assert!(starved.pod_cidrs.is_empty());
    assert!(starved.error.as_deref().unwrap().contains(NO_REMAINING_CIDRS), "{starved:?}");
    assert_eq!(desired.usage.iter().map(|u| u.used).sum::<u128>(), 4);

    // kind-worker2 is deleted: the next pass releases its CIDR and the starved node gets it.
    let mut existing = as_existing(&desired);
    let remaining = names(&["kind-control-plane", "kind-worker", "kind-worker3", "kind-worker4"]);
    existing.retain(|c| !c.pod_cidrs.is_empty() || remaining.contains(&c.name));
    let next = pools.desired(&remaining, &existing);
    assert_eq!(next.released["kind-worker2"], ["10.0.84.0/29"]);
    assert_eq!(cidrs_of(&next, "kind-worker4"), ["10.0.84.0/29"]);
    assert_eq!(next.nodes["kind-worker4"].error, None, "the error clears once allocated");
    for (node, cidr) in expected.iter().filter(|(n, _)| *n != "kind-worker2") {
        assert_eq!(cidrs_of(&next, node), [*cidr], "{node} keeps its CIDR");
    }
}

#[test]
fn restart_keeps_assignments_and_fills_gaps() {
    let pools = ClusterPools::new(&v4(&["10.0.0.0/16"], 24)).unwrap();
    // Written by a previous operator run: not in allocation order, with a hole at 10.0.0.0/24.
    let existing = [cn("a", &["10.0.5.0/24"]), cn("b", &["10.0.1.0/24"])];
    let desired = pools.desired(&names(&["a", "b", "c", "d"]), &existing);
    assert_eq!(cidrs_of(&desired, "a"), ["10.0.5.0/24"]);
    assert_eq!(cidrs_of(&desired, "b"), ["10.0.1.0/24"]);
    assert_eq!(cidrs_of(&desired, "c"), ["10.0.0.0/24"]);
    assert_eq!(cidrs_of(&desired, "d"), ["10.0.2.0/24"]);
    // A second pass over its own output is a fixpoint.
    assert_eq!(pools.desired(&names(&["a", "b", "c", "d"]), &as_existing(&desired)), desired);
}

#[test]
fn bad_existing_assignments_are_reported_and_left_alone() {
    let pools = ClusterPools::new(&v4(&["10.0.0.0/16"], 24)).unwrap();
    let existing = [
        cn("a-owner", &["10.0.7.0/24"]),
        cn("b-collides", &["10.0.7.0/24"]),
        cn("c-outside", &["192.168.1.0/24"]),
        cn("d-garbage", &["10.0.8.0/33"]),
        cn("e-ipv6-disabled", &["fd00::/120"]),
        cn("f-half-bad", &["10.0.9.0/24", "nonsense"]),
        cn("g-other-mask", &["10.0.10.0/25"]),
    ];
    let all = names(&[
        "a-owner",
        "b-collides",
        "c-outside",
        "d-garbage",
        "e-ipv6-disabled",
        "f-half-bad",
        "g-other-mask",
        "h-new",
    ]);
    let desired = pools.desired(&all, &existing);
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        ("a-owner", &["10.0.7.0/24"], None),
        ("b-collides", &["10.0.7.0/24"], Some("already allocated to node a-owner")),
        ("c-outside", &["192.168.1.0/24"], Some("not inside any configured IPv4 cluster CIDR")),
        ("d-garbage", &["10.0.8.0/33"], Some("invalid podCIDR")),
        ("e-ipv6-disabled", &["fd00::/120"], Some("allocator for IPv6 addresses does not exist")),
        ("f-half-bad", &["10.0.9.0/24", "nonsense"], Some("invalid podCIDR \"nonsense\"")),
        ("g-other-mask", &["10.0.10.0/25"], None),
    ];
    for (node, cidrs, error) in cases {
        let got = &desired.nodes[*node];
        assert_eq!(got.pod_cidrs, *cidrs, "{node}: spec left as written");
        match error {
            None => assert_eq!(got.error, None, "{node}"),
            Some(text) => assert!(got.error.as_deref().unwrap_or("").contains(text), "{node}: {got:?}"),
        }
    }
    assert_eq!(desired.nodes["g-other-mask"].warnings.len(), 1);
    // The new node gets the lowest CIDR no restored node holds. f-half-bad's valid 10.0.9.0/24 is
    // not restored (all or nothing) and so is not protected; the lowest free is 10.0.0.0/24 anyway.
    assert_eq!(cidrs_of(&desired, "h-new"), ["10.0.0.0/24"]);
}

#[test]
fn dual_stack_allocates_both_families_or_neither() {
    let config = ClusterPoolConfig {
        ipv4: Some(FamilyPoolConfig { cidrs: nets(&["10.0.0.0/22"]), mask_size: 24 }),
        ipv6: Some(FamilyPoolConfig { cidrs: nets(&["fd00::/118"]), mask_size: 120 }),
    };
    let pools = ClusterPools::new(&config).unwrap();
    // IPv4 has four /24s, IPv6 only four /120s; one node already holds an IPv4 CIDR only.
    let existing = [cn("n0", &["10.0.3.0/24"])];
    let desired = pools.desired(&names(&["n0", "n1", "n2", "n3", "n4"]), &existing);
    assert_eq!(cidrs_of(&desired, "n0"), ["10.0.3.0/24", "fd00::/120"], "the missing family is added");
    assert_eq!(cidrs_of(&desired, "n1"), ["10.0.0.0/24", "fd00::100/120"]);
    assert_eq!(cidrs_of(&desired, "n2"), ["10.0.1.0/24", "fd00::200/120"]);
    assert_eq!(cidrs_of(&desired, "n3"), ["10.0.2.0/24", "fd00::300/120"]);
    let n4 = &desired.nodes["n4"];
    assert!(n4.pod_cidrs.is_empty());
    assert!(n4.error.as_deref().unwrap().contains("IPv4"), "{n4:?}");
}

#[test]
fn ipv6_only_exhaustion_does_not_consume_ipv4() {
    let config = ClusterPoolConfig {
        ipv4: Some(FamilyPoolConfig { cidrs: nets(&["10.0.0.0/16"]), mask_size: 24 }),
        ipv6: Some(FamilyPoolConfig { cidrs: nets(&["fd00::/120"]), mask_size: 120 }),
    };
    let pools = ClusterPools::new(&config).unwrap();
    let desired = pools.desired(&names(&["a", "b"]), &[]);
    assert_eq!(cidrs_of(&desired, "a"), ["10.0.0.0/24", "fd00::/120"]);
    assert!(desired.nodes["b"].error.as_deref().unwrap().contains("IPv6"));
    let v4_used: u128 = desired.usage.iter().filter(|u| u.cidr.addr().is_ipv4()).map(|u| u.used).sum();
    assert_eq!(v4_used, 1, "b's IPv4 CIDR was given back");
}

#[test]
fn config_is_validated_like_ciliums_start_up() {
    let family = |cidrs: &[&str], mask: u8| Some(FamilyPoolConfig { cidrs: nets(cidrs), mask_size: mask });
    type Check = fn(&ClusterPoolConfigError) -> bool;
    let cases: Vec<(&str, ClusterPoolConfig, Option<Check>)> = vec![
        ("defaults", ClusterPoolConfig { ipv4: family(&["10.0.0.0/8"], 24), ipv6: None }, None),
        ("ipv6 default", ClusterPoolConfig { ipv4: None, ipv6: family(&["fd00::/104"], 120) }, None),
        (
            "ipv4 /8 into /30 is allowed, as in Cilium",
            ClusterPoolConfig { ipv4: family(&["10.0.0.0/8"], 30), ipv6: None },
            None,
        ),
        ("ipv6 exactly 16 bits", ClusterPoolConfig { ipv4: None, ipv6: family(&["fd00::/64"], 80) }, None),
        ("nothing enabled", ClusterPoolConfig::default(), Some(|e| matches!(e, ClusterPoolConfigError::NoFamily))),
        (
            "enabled with an empty list",
            ClusterPoolConfig { ipv4: family(&[], 24), ipv6: None },
            Some(|e| matches!(e, ClusterPoolConfigError::Pool { source: PoolError::NoClusterCidrs { .. }, .. })),
        ),
        (
            "overlapping list",
            ClusterPoolConfig { ipv4: family(&["10.0.0.0/8", "10.5.0.0/16"], 24), ipv6: None },
            Some(|e| matches!(e, ClusterPoolConfigError::Pool { source: PoolError::ClusterCidrOverlap { .. }, .. })),
        ),
        (
            "ipv6 mask 17 bits longer",
            ClusterPoolConfig { ipv4: None, ipv6: family(&["fd00::/64"], 81) },
            Some(|e| matches!(e, ClusterPoolConfigError::Ipv6MaskTooLong { mask: 81, .. })),
        ),
        (
            "ipv6 /48 into /120",
            ClusterPoolConfig { ipv4: None, ipv6: family(&["fd00::/48"], 120) },
            Some(|e| matches!(e, ClusterPoolConfigError::Ipv6MaskTooLong { .. })),
        ),
    ];
    for (name, config, want) in cases {
        match (ClusterPools::new(&config), want) {
            (Ok(_), None) => {}
            (Err(e), Some(check)) => {
                assert!(check(&e), "{name}: {e:?}");
                assert!(!e.to_string().is_empty());
            }
            (got, _) => panic!("{name}: unexpected {:?}", got.map(|_| ())),
        }
    }
}

/// Nodes join and leave at random; each pass's output is the next pass's input. A node's CIDR
/// never changes while it exists, no two nodes ever overlap, and nobody starves while a CIDR is free.
#[test]
fn random_node_churn_keeps_assignments_stable() {
    let pools = ClusterPools::new(&v4(&["10.0.42.0/27", "10.0.84.0/28"], 29)).unwrap();
    let capacity = 4 + 2;
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut existing: Vec<ExistingCiliumNode> = Vec::new();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pass in 0..200 {
        for _ in 0..rng.random_range(1..4) {
            let node = format!("node-{}", rng.random_range(0..12));
            if !nodes.remove(&node) {
                nodes.insert(node);
            }
        }
        let desired = pools.desired(&nodes, &existing);
        let mut held: Vec<IpNet> = Vec::new();
        for (name, node) in &desired.nodes {
            assert!(nodes.contains(name), "pass {pass}: {name} is not a node");
            if let Some(before) = seen.get(name) {
                if !before.is_empty() {
                    assert_eq!(&node.pod_cidrs, before, "pass {pass}: {name}'s CIDR changed");
                }
            }
            for text in &node.pod_cidrs {
                let cidr: IpNet = text.parse().unwrap();
                assert!(held.iter().all(|h| !nets_overlap(h, &cidr)), "pass {pass}: {cidr} assigned twice");
                held.push(cidr);
            }
            if node.pod_cidrs.is_empty() {
                let served = desired.nodes.values().filter(|n| !n.pod_cidrs.is_empty()).count();
                assert_eq!(served, capacity, "pass {pass}: {name} starved while CIDRs were free");
            }
        }
        seen = desired.nodes.iter().map(|(n, d)| (n.clone(), d.pod_cidrs.clone())).collect();
        existing = as_existing(&desired);
    }
}
