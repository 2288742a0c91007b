use super::*;

fn pool(name: &str, v4: &[&str], mask: u8) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        ipv4: Some(FamilySpec { cidrs: v4.iter().map(|s| s.to_string()).collect(), mask_size: mask }),
        ipv6: None,
    }
}

fn node(name: &str, requested: &[(&str, u64)], allocated: &[(&str, &[&str])]) -> NodePoolState {
    NodePoolState {
        name: name.into(),
        requested: requested.iter().map(|(p, n)| PoolDemand { pool: p.to_string(), ipv4: *n, ipv6: 0 }).collect(),
        allocated: allocated
            .iter()
            .map(|(p, c)| PoolCidrs { pool: p.to_string(), cidrs: c.iter().map(|s| s.to_string()).collect() })
            .collect(),
    }
}

/// pool → CIDRs of one node's desired allocation.
fn lists(d: &DesiredPools, node: &str) -> Vec<(String, Vec<String>)> {
    d.nodes[node].allocated.iter().map(|p| (p.pool.clone(), p.cidrs.clone())).collect()
}

fn v4() -> MultiPools {
    MultiPools::new(vec![Family::V4])
}

type Expect = &'static [(&'static str, &'static [&'static str])];

fn expect(e: Expect) -> Vec<(String, Vec<String>)> {
    e.iter().map(|(p, c)| (p.to_string(), c.iter().map(|s| s.to_string()).collect())).collect()
}

/// The watermark arithmetic: CIDRs are added until 2^h − 2 per CIDR covers `needed`.
#[test]
fn allocates_until_usable_addresses_cover_needed() {
    // /27: 30 usable addresses each.
    let cases: &[(u64, &[&str], Expect)] = &[
        (0, &[], &[]),
        (1, &[], &[("default", &["10.10.0.0/27"])]),
        (30, &[], &[("default", &["10.10.0.0/27"])]),
        (31, &[], &[("default", &["10.10.0.0/27", "10.10.0.32/27"])]),
        (48, &["10.10.0.0/27"], &[("default", &["10.10.0.0/27", "10.10.0.32/27"])]),
        (61, &[], &[("default", &["10.10.0.0/27", "10.10.0.32/27", "10.10.0.64/27"])]),
        // Already enough: nothing added, nothing removed (the agent releases, not the operator).
        (8, &["10.10.0.64/27", "10.10.0.0/27"], &[("default", &["10.10.0.64/27", "10.10.0.0/27"])]),
    ];
    for (needed, held, want) in cases {
        let mut pools = v4();
        let d = pools.desired(
            &[pool("default", &["10.10.0.0/24"], 27)],
            &[node("n1", &[("default", *needed)], &[("default", held)])],
        );
        assert_eq!(lists(&d, "n1"), expect(want), "needed {needed}, held {held:?}");
        assert_eq!(d.nodes["n1"].error, None);
    }
}

#[test]
fn two_nodes_two_pools_distinct_cidrs_sorted_by_pool() {
    let mut pools = v4();
    let d = pools.desired(
        &[pool("tenant-b", &["10.20.0.0/24"], 27), pool("tenant-a", &["10.10.0.0/24"], 27)],
        &[node("n1", &[("tenant-b", 10), ("tenant-a", 10)], &[]), node("n2", &[("tenant-a", 40)], &[])],
    );
    assert_eq!(
        lists(&d, "n1"),
        expect(&[("tenant-a", &["10.10.0.0/27"]), ("tenant-b", &["10.20.0.0/27"])]),
        "sorted by pool name"
    );
    assert_eq!(lists(&d, "n2"), expect(&[("tenant-a", &["10.10.0.32/27", "10.10.0.64/27"])]));
}

/// Existing CIDRs of every node are occupied before anything is allocated, whatever the order:
/// `a` sorts first and needs a CIDR, `b` already holds the first block.
#[test]
fn restart_occupies_existing_before_allocating() {
    let mut pools = v4();
    let d = pools.desired(
        &[pool("default", &["10.10.0.0/26"], 27)],
        &[node("a", &[("default", 5)], &[]), node("b", &[("default", 5)], &[("default", &["10.10.0.0/27"])])],
    );
    assert_eq!(lists(&d, "a"), expect(&[("default", &["10.10.0.32/27"])]));
    assert_eq!(lists(&d, "b"), expect(&[("default", &["10.10.0.0/27"])]));

    // The pool full: a third node is told so, nobody loses anything.
    let d = pools.desired(
        &[pool("default", &["10.10.0.0/26"], 27)],
        &[
            node("a", &[("default", 5)], &[("default", &["10.10.0.32/27"])]),
            node("b", &[("default", 5)], &[("default", &["10.10.0.0/27"])]),
            node("c", &[("default", 5)], &[]),
        ],
    );
    assert!(d.nodes["c"].error.as_deref().is_some_and(|e| e.contains("no remaining CIDRs")), "{:?}", d.nodes["c"]);
    assert_eq!(lists(&d, "c"), expect(&[]));
    assert_eq!(lists(&d, "a"), expect(&[("default", &["10.10.0.32/27"])]));
}

/// A CIDR a node stops listing (released by the agent) or a deleted node's CIDRs are free again.
#[test]
fn cidrs_no_longer_listed_are_free() {
    let mut pools = v4();
    let spec = [pool("default", &["10.10.0.0/26"], 27)];
    let d = pools.desired(&spec, &[node("a", &[("default", 40)], &[])]);
    assert_eq!(lists(&d, "a"), expect(&[("default", &["10.10.0.0/27", "10.10.0.32/27"])]));
    // `a` released its first CIDR; `b` gets it.
    let d = pools.desired(
        &spec,
        &[node("a", &[("default", 20)], &[("default", &["10.10.0.32/27"])]), node("b", &[("default", 1)], &[])],
    );
    assert_eq!(lists(&d, "b"), expect(&[("default", &["10.10.0.0/27"])]));
    // `a` is deleted: its CIDR goes to `c`.
    let d = pools.desired(
        &spec,
        &[node("b", &[("default", 1)], &[("default", &["10.10.0.0/27"])]), node("c", &[("default", 1)], &[])],
    );
    assert_eq!(lists(&d, "c"), expect(&[("default", &["10.10.0.32/27"])]));
}

/// Orphans: a CIDR removed from its pool, or of a deleted pool, stays with its node, counts for
/// nothing, is never handed to anyone else while listed, and is re-adopted when the pool returns.
#[test]
fn orphans_stay_and_are_readopted() {
    let cases: &[(&str, &[PoolSpecCase], Expect, bool)] = &[
        // CIDR removed from the pool: kept, and the node gets a new one from what remains.
        ("cidr removed", &[("default", &["10.20.0.0/24"])], &[("default", &["10.10.0.0/27", "10.20.0.0/27"])], false),
        // Pool deleted: kept; the request for it is an error.
        ("pool deleted", &[], &[("default", &["10.10.0.0/27"])], true),
        // Pool back: re-adopted, no new CIDR needed.
        ("pool back", &[("default", &["10.10.0.0/24"])], &[("default", &["10.10.0.0/27"])], false),
    ];
    let mut pools = v4();
    for (what, spec, want, error) in cases {
        let specs: Vec<PoolSpec> = spec.iter().map(|(n, c)| pool(n, c, 27)).collect();
        let d = pools.desired(&specs, &[node("a", &[("default", 10)], &[("default", &["10.10.0.0/27"])])]);
        assert_eq!(lists(&d, "a"), expect(want), "{what}");
        assert_eq!(d.nodes["a"].error.is_some(), *error, "{what}: {:?}", d.nodes["a"].error);
        let orphan = d.nodes["a"].warnings.iter().any(|w| w.contains("10.10.0.0/27") && w.contains("orphan"));
        assert_eq!(orphan, *what != "pool back", "{what}: {:?}", d.nodes["a"].warnings);
    }
    // While it is an orphan nobody else gets it, and once re-adopted it is occupied.
    let d = pools.desired(
        &[pool("default", &["10.10.0.0/26"], 27)],
        &[node("a", &[], &[("default", &["10.10.0.0/27"])]), node("b", &[("default", 40)], &[])],
    );
    assert_eq!(lists(&d, "b"), expect(&[("default", &["10.10.0.32/27"])]));
    assert!(d.nodes["b"].error.is_some(), "only one /27 left for b's 40");
}

type PoolSpecCase = (&'static str, &'static [&'static str]);

/// `maskSize` cannot change: the pool reports it and keeps serving with the accepted mask, also
/// after a restart (learned from the CIDRs nodes hold). Delete + recreate may change it.
#[test]
fn mask_size_is_immutable() {
    let mut pools = v4();
    let d = pools.desired(&[pool("default", &["10.10.0.0/24"], 27)], &[node("a", &[("default", 1)], &[])]);
    assert_eq!(lists(&d, "a"), expect(&[("default", &["10.10.0.0/27"])]));
    assert!(d.pool_errors.is_empty());

    let nodes = [node("a", &[("default", 1)], &[("default", &["10.10.0.0/27"])]), node("b", &[("default", 1)], &[])];
    let changed = [pool("default", &["10.10.0.0/24"], 28)];
    let d = pools.desired(&changed, &nodes);
    let error = &d.pool_errors["default"];
    assert!(error.contains("immutable") && error.contains("/27") && error.contains("/28"), "{error}");
    assert_eq!(lists(&d, "b"), expect(&[("default", &["10.10.0.32/27"])]), "still /27");

    // A restarted operator learns /27 from node a.
    let mut restarted = v4();
    let d = restarted.desired(&changed, &nodes);
    assert!(d.pool_errors.contains_key("default"));
    assert_eq!(lists(&d, "b"), expect(&[("default", &["10.10.0.32/27"])]));

    // Deleted, then recreated with /28: accepted.
    restarted.desired(&[], &nodes);
    let d = restarted.desired(&changed, &[node("b", &[("default", 1)], &[])]);
    assert!(d.pool_errors.is_empty(), "{:?}", d.pool_errors);
    assert_eq!(lists(&d, "b"), expect(&[("default", &["10.10.0.0/28"])]));
}

#[test]
fn unknown_pool_and_bad_input_are_errors_that_change_nothing() {
    let mut pools = v4();
    let d = pools.desired(
        &[pool("default", &["10.10.0.0/24"], 27), pool("broken", &["10.300.0.0/24"], 27)],
        &[node("a", &[("nope", 3), ("default", 3)], &[("default", &["garbage"])])],
    );
    let error = d.nodes["a"].error.clone().unwrap();
    assert!(error.contains("pool nope does not exist"), "{error}");
    assert!(error.contains("\"garbage\""), "{error}");
    assert_eq!(lists(&d, "a"), expect(&[("default", &["garbage", "10.10.0.0/27"])]));
    assert!(d.pool_errors["broken"].contains("10.300.0.0/24"));
}

#[test]
fn dual_stack_allocates_per_family() {
    let mut pools = MultiPools::new(vec![Family::V4, Family::V6]);
    let spec = PoolSpec {
        name: "default".into(),
        ipv4: Some(FamilySpec { cidrs: vec!["10.10.0.0/24".into()], mask_size: 27 }),
        ipv6: Some(FamilySpec { cidrs: vec!["fd00:10::/112".into()], mask_size: 120 }),
    };
    let n = NodePoolState {
        name: "a".into(),
        requested: vec![PoolDemand { pool: "default".into(), ipv4: 16, ipv6: 300 }],
        allocated: vec![],
    };
    let d = pools.desired(&[spec], &[n]);
    assert_eq!(
        lists(&d, "a"),
        expect(&[("default", &["10.10.0.0/27", "fd00:10::/120", "fd00:10::100/120"])]),
        "254 per /120: two for 300"
    );
}

#[test]
fn parses_auto_create_pools() {
    let pools = parse_auto_create(
        "default=ipv4-cidrs:10.10.0.0/16,10.20.0.0/16;ipv4-mask-size:24,v6=ipv6-cidrs:fd00::/104;ipv6-mask-size:120",
    )
    .unwrap();
    assert_eq!(
        pools,
        vec![
            PoolSpec {
                name: "default".into(),
                ipv4: Some(FamilySpec { cidrs: vec!["10.10.0.0/16".into(), "10.20.0.0/16".into()], mask_size: 24 }),
                ipv6: None,
            },
            PoolSpec {
                name: "v6".into(),
                ipv4: None,
                ipv6: Some(FamilySpec { cidrs: vec!["fd00::/104".into()], mask_size: 120 }),
            },
        ]
    );
    let json = parse_auto_create(r#"{"default": "ipv4-cidrs:10.10.0.0/16;ipv4-mask-size:24"}"#).unwrap();
    let want = PoolSpec {
        name: "default".into(),
        ipv4: Some(FamilySpec { cidrs: vec!["10.10.0.0/16".into()], mask_size: 24 }),
        ipv6: None,
    };
    assert_eq!(json, vec![want]);
    assert_eq!(parse_auto_create("  ").unwrap(), vec![]);
    for (bad, says) in [
        ("default=ipv4-cidrs:10.10.0.0/16", "must be given together"),
        ("default=ipv4-cidrs:10.10.0.0/16;ipv4-mask-size:40", "ipv4-mask-size"),
        ("default=ipv4-cidrs:fd00::/64;ipv4-mask-size:24", "is not IPv4"),
        ("default=ipv4-cidr:10.0.0.0/8;ipv4-mask-size:24", "unknown key"),
        ("10.0.0.0/8", "is not `<pool>=<spec>`"),
        ("default=", "neither"),
    ] {
        let e = parse_auto_create(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
