use std::collections::BTreeMap;

use ipnet::IpNet;
use rand::{RngExt, SeedableRng};

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

fn pool(family: Family, cidrs: &[&str], mask: u8) -> ClusterCidrPool {
    ClusterCidrPool::new(family, &nets(cidrs), mask).unwrap()
}

/// The seeds' small-pool case: two /28 cluster CIDRs, mask 29, four nodes → two /29 from each.
#[test]
fn small_pool_fills_first_cidr_then_second() {
    let mut pool = pool(Family::V4, &["10.0.42.0/28", "10.0.84.0/28"], 29);
    let got: Vec<IpNet> = ["n1", "n2", "n3", "n4"].iter().map(|n| pool.ensure_one(n).unwrap()).collect();
    assert_eq!(got, nets(&["10.0.42.0/29", "10.0.42.8/29", "10.0.84.0/29", "10.0.84.8/29"]));
    assert!(pool.is_full());
    let err = pool.ensure_one("n5").unwrap_err();
    assert!(matches!(err, PoolError::Exhausted { .. }));
    assert!(err.to_string().contains("no remaining CIDRs left to allocate"), "{err}");
    assert!(err.to_string().contains("10.0.42.0/28, 10.0.84.0/28"), "{err}");
    // A deleted node frees its CIDR for the waiting one.
    assert_eq!(pool.release_node("n2"), nets(&["10.0.42.8/29"]));
    assert_eq!(pool.ensure_one("n5").unwrap(), net("10.0.42.8/29"));
    assert_eq!(pool.release_node("gone"), Vec::<IpNet>::new());
}

#[test]
fn ensure_one_is_idempotent_and_additional_grows() {
    let mut pool = pool(Family::V4, &["10.20.0.0/16"], 27);
    let first = pool.ensure_one("n1").unwrap();
    assert_eq!(pool.ensure_one("n1").unwrap(), first);
    let second = pool.allocate_additional("n1").unwrap();
    assert_eq!((first, second), (net("10.20.0.0/27"), net("10.20.0.32/27")));
    assert_eq!(pool.node_cidrs("n1"), &[first, second]);
    assert!(pool.release("n1", first));
    assert!(!pool.release("n1", first));
    assert!(!pool.release("n2", second));
    assert_eq!(pool.ensure_one("n1").unwrap(), second, "the node still holds its second CIDR");
    assert_eq!(pool.ensure_one("n2").unwrap(), first, "lowest free block");
}

#[test]
fn configuration_errors_name_the_problem() {
    type Check = fn(&PoolError) -> bool;
    let cases: &[(Family, &[&str], u8, Check)] = &[
        (Family::V4, &[], 24, |e| matches!(e, PoolError::NoClusterCidrs { .. })),
        (Family::V4, &["fd00::/104"], 120, |e| matches!(e, PoolError::FamilyMismatch { .. })),
        (Family::V6, &["10.0.0.0/8"], 24, |e| matches!(e, PoolError::FamilyMismatch { .. })),
        (Family::V4, &["10.0.0.0/8"], 33, |e| matches!(e, PoolError::MaskTooLong { max: 32, .. })),
        (Family::V6, &["fd00::/104"], 129, |e| matches!(e, PoolError::MaskTooLong { max: 128, .. })),
        (Family::V4, &["10.0.0.0/16"], 8, |e| matches!(e, PoolError::MaskShorterThanCluster { mask: 8, .. })),
        (Family::V4, &["10.0.0.0/8", "10.1.0.0/16"], 24, |e| matches!(e, PoolError::ClusterCidrOverlap { .. })),
        (Family::V4, &["10.1.0.0/16", "10.0.0.0/8"], 24, |e| matches!(e, PoolError::ClusterCidrOverlap { .. })),
        (Family::V4, &["10.1.0.0/16", "10.1.0.0/16"], 24, |e| matches!(e, PoolError::ClusterCidrOverlap { .. })),
    ];
    for (family, cidrs, mask, check) in cases {
        let err = ClusterCidrPool::new(*family, &nets(cidrs), *mask).expect_err(&format!("{cidrs:?} /{mask}"));
        assert!(check(&err), "{cidrs:?} /{mask}: {err:?}");
        assert!(!err.to_string().is_empty());
    }
    // Accepted edge cases: host bits dropped, mask equal to the cluster prefix.
    let mut p = pool(Family::V4, &["10.0.42.5/28"], 28);
    assert_eq!(p.cluster_cidrs(), nets(&["10.0.42.0/28"]));
    assert_eq!(p.ensure_one("n1").unwrap(), net("10.0.42.0/28"));
    assert!(p.ensure_one("n2").is_err());
}

#[test]
fn restore_occupies_and_reports_conflicts() {
    type Want = Result<Restored, fn(&PoolError) -> bool>;
    let cases: Vec<(&str, &str, &str, Want)> = vec![
        ("exact", "n1", "10.0.1.0/24", Ok(Restored::Exact)),
        ("idempotent", "n1", "10.0.1.0/24", Ok(Restored::Exact)),
        ("host bits dropped", "n1", "10.0.1.9/24", Ok(Restored::Exact)),
        (
            "taken by another node",
            "n2",
            "10.0.1.0/24",
            Err(|e| matches!(e, PoolError::Conflict { holder, .. } if holder == "n1")),
        ),
        ("inside another node's CIDR", "n2", "10.0.1.128/25", Err(|e| matches!(e, PoolError::Conflict { .. }))),
        ("covering another node's CIDR", "n2", "10.0.0.0/23", Err(|e| matches!(e, PoolError::Conflict { .. }))),
        ("outside the cluster CIDRs", "n3", "192.168.0.0/24", Err(|e| matches!(e, PoolError::OutOfRange { .. }))),
        ("larger than the cluster CIDR", "n3", "10.0.0.0/7", Err(|e| matches!(e, PoolError::OutOfRange { .. }))),
        ("other family", "n3", "fd00::/120", Err(|e| matches!(e, PoolError::OutOfRange { .. }))),
        ("larger than the mask", "n4", "10.0.2.0/23", Ok(Restored::MaskDiffers { configured: 24 })),
        ("smaller than the mask", "n5", "10.0.4.0/25", Ok(Restored::MaskDiffers { configured: 24 })),
        ("sibling of a small block", "n6", "10.0.4.128/25", Ok(Restored::MaskDiffers { configured: 24 })),
    ];
    let mut pool = pool(Family::V4, &["10.0.0.0/16"], 24);
    for (name, node, cidr, want) in cases {
        let before: Vec<(String, Vec<IpNet>)> = pool.assignments().map(|(n, c)| (n.to_string(), c.to_vec())).collect();
        match (pool.restore(node, net(cidr)), want) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{name}"),
            (Err(err), Err(check)) => {
                assert!(check(&err), "{name}: {err:?}");
                let after: Vec<(String, Vec<IpNet>)> =
                    pool.assignments().map(|(n, c)| (n.to_string(), c.to_vec())).collect();
                assert_eq!(before, after, "{name}: a failed restore changes nothing");
            }
            (got, _) => panic!("{name}: unexpected {got:?}"),
        }
    }
    // New allocations skip 10.0.1/24, 10.0.2/23 and the /24 holding the two /25s.
    let fresh: Vec<IpNet> = ["a", "b", "c"].iter().map(|n| pool.ensure_one(n).unwrap()).collect();
    assert_eq!(fresh, nets(&["10.0.0.0/24", "10.0.5.0/24", "10.0.6.0/24"]));
    // Releasing one /25 keeps the shared /24 in use while its sibling is held.
    assert!(pool.release("n5", net("10.0.4.0/25")));
    assert_eq!(pool.ensure_one("d").unwrap(), net("10.0.7.0/24"));
    assert_eq!(pool.release_node("n6"), nets(&["10.0.4.128/25"]));
    assert_eq!(pool.ensure_one("e").unwrap(), net("10.0.4.0/24"));
}

#[test]
fn ipv6_pool_allocates_and_exhausts() {
    // cluster-pool-ipv6-cidr fd00::/104 with mask 120: 65536 node CIDRs.
    let mut pool = pool(Family::V6, &["fd00::/104"], 120);
    assert_eq!(pool.ensure_one("n0").unwrap(), net("fd00::/120"));
    assert_eq!(pool.ensure_one("n1").unwrap(), net("fd00::100/120"));
    for n in 2..65536 {
        pool.ensure_one(&format!("n{n}")).unwrap();
    }
    assert_eq!(pool.node_cidrs("n65535"), &[net("fd00::ff:ff00/120")]);
    assert!(matches!(pool.ensure_one("one-too-many"), Err(PoolError::Exhausted { family: Family::V6, .. })));
    assert_eq!(pool.usage()[0].used, 65536);
    assert_eq!(pool.sets[0].used.run_count(), 1);
}

#[test]
fn huge_pools_cost_memory_per_allocation_only() {
    let cases: &[(Family, &str, u8, u128, &str)] = &[
        (Family::V4, "10.0.0.0/8", 24, 1 << 16, "10.0.3.0/24"),
        (Family::V6, "fd00::/64", 80, 1 << 16, "fd00::3:0:0:0/80"),
        (Family::V6, "fd00::/48", 120, 1 << 72, "fd00::300/120"),
        (Family::V6, "::/0", 128, u128::MAX, "::3/128"),
    ];
    for (family, cidr, mask, total, fourth) in cases {
        let mut pool = pool(*family, &[cidr], *mask);
        assert_eq!(pool.usage()[0].total, *total, "{cidr}");
        let got: Vec<IpNet> = (0..4).map(|n| pool.ensure_one(&format!("n{n}")).unwrap()).collect();
        assert_eq!(got[3], net(fourth), "{cidr}");
        assert_eq!(pool.sets[0].used.run_count(), 1);
        // A restore far away adds one run, not a bitmap up to it.
        let far = pool.sets[0].block(pool.sets[0].last, *mask);
        assert_eq!(pool.restore("far", far), Ok(Restored::Exact), "{cidr}: {far}");
        assert_eq!(pool.sets[0].used.run_count(), 2);
        assert_eq!(pool.usage()[0].used, 5);
    }
}

/// Random node churn: no two nodes ever hold overlapping CIDRs, every CIDR has the configured mask
/// inside a cluster CIDR, exhaustion happens only when every block is taken, and a fresh pool
/// restored from the assignments continues without collisions.
#[test]
fn random_node_churn_never_double_assigns() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let cluster = nets(&["10.0.42.0/26", "10.0.84.0/27", "10.0.99.0/28"]);
    let total_blocks = 8 + 4 + 2;
    for round in 0..30 {
        let mut pool = ClusterCidrPool::new(Family::V4, &cluster, 29).unwrap();
        let mut model: BTreeMap<String, IpNet> = BTreeMap::new();
        for step in 0..300 {
            let node = format!("node-{}", rng.random_range(0..24));
            if rng.random_bool(0.6) {
                match pool.ensure_one(&node) {
                    Ok(cidr) => {
                        assert_eq!(cidr.prefix_len(), 29);
                        assert!(cluster.iter().any(|c| c.contains(&cidr)));
                        if let Some(prev) = model.get(&node) {
                            assert_eq!(*prev, cidr, "round {round} step {step}: stable per node");
                        }
                        for (other, held) in &model {
                            assert!(other == &node || !nets_overlap(held, &cidr), "{cidr} collides with {other}");
                        }
                        model.insert(node, cidr);
                    }
                    Err(PoolError::Exhausted { .. }) => assert_eq!(model.len(), total_blocks),
                    Err(e) => panic!("round {round} step {step}: {e}"),
                }
            } else {
                let released = pool.release_node(&node);
                assert_eq!(released, model.remove(&node).into_iter().collect::<Vec<_>>());
            }
            let used: u128 = pool.usage().iter().map(|u| u.used).sum();
            assert_eq!(used, model.len() as u128);
        }
        let mut restored = ClusterCidrPool::new(Family::V4, &cluster, 29).unwrap();
        for (node, cidr) in &model {
            assert_eq!(restored.restore(node, *cidr), Ok(Restored::Exact));
        }
        for n in 0..(total_blocks - model.len()) {
            let cidr = restored.ensure_one(&format!("new-{n}")).unwrap();
            assert!(model.values().all(|held| !nets_overlap(held, &cidr)));
        }
        assert!(restored.is_full());
    }
}
