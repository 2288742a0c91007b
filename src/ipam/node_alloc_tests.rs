use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use rand::{RngExt, SeedableRng};

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pod(n: usize) -> Owner {
    Owner::endpoint("default", &format!("pod-{n}"), &format!("c{n}"), "eth0")
}

fn v4(cidrs: &[&str]) -> AddressAllocator {
    AddressAllocator::new(Family::V4, &cidrs.iter().map(|c| net(c)).collect::<Vec<_>>()).unwrap()
}

#[test]
fn capacity_excludes_network_and_last_address() {
    let cases: &[(&str, u128)] = &[
        ("10.0.2.0/24", 254),
        ("10.0.42.0/29", 6),
        ("10.0.0.0/30", 2),
        ("10.0.0.0/31", 0),
        ("10.0.0.1/32", 0),
        ("10.0.0.0/8", (1 << 24) - 2),
        ("fd00::/120", 254),
        ("fd00::/126", 2),
        ("fd00::/127", 0),
        ("fd00::1/128", 0),
        ("fd00::/64", (1 << 64) - 2),
        ("::/0", u128::MAX - 1),
    ];
    for (cidr, expected) in cases {
        let cidr = net(cidr);
        let alloc = AddressAllocator::new(Family::of_net(&cidr), &[cidr]).unwrap();
        assert_eq!(alloc.capacity(), *expected, "{cidr}");
        assert_eq!(usable_addresses(&cidr), *expected, "{cidr}");
    }
}

/// The seeds' small pool: a /29 per node holds the router, health and four pods, then is full.
#[test]
fn small_node_cidr_fills_up_like_the_seeds_show() {
    let mut alloc = v4(&["10.0.42.0/29"]);
    let router = alloc.allocate(Owner::Router).unwrap();
    let health = alloc.allocate(Owner::Health).unwrap();
    assert_ne!(router, health);
    let pods: Vec<IpAddr> = (0..4).map(|n| alloc.allocate(pod(n)).unwrap()).collect();
    assert_eq!(alloc.status().to_string(), "IPv4: 6/6 allocated from 10.0.42.0/29");
    let err = alloc.allocate(pod(4)).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err:?}");
    assert_eq!(err.to_string(), "no free IPv4 addresses: IPv4: 6/6 allocated from 10.0.42.0/29");
    // Every usable address exactly once; never .0 or .7.
    let mut all: Vec<IpAddr> = pods;
    all.extend([router, health]);
    all.sort();
    let expected: Vec<IpAddr> = (1..=6).map(|i| ip(&format!("10.0.42.{i}"))).collect();
    assert_eq!(all, expected);
}

#[test]
fn status_line_matches_cilium_format() {
    let cases: &[(&[&str], usize, &str)] = &[
        (&["10.0.2.0/24"], 6, "IPv4: 6/254 allocated from 10.0.2.0/24"),
        (&["10.0.2.0/24", "10.0.3.0/24"], 0, "IPv4: 0/508 allocated from 10.0.2.0/24, 10.0.3.0/24"),
        (&["10.0.2.7/24"], 1, "IPv4: 1/254 allocated from 10.0.2.0/24"),
    ];
    for (cidrs, n, expected) in cases {
        let mut alloc = v4(cidrs);
        for i in 0..*n {
            alloc.allocate(pod(i)).unwrap();
        }
        assert_eq!(alloc.status().to_string(), *expected);
    }
    let mut v6 = AddressAllocator::new(Family::V6, &[net("fd00::100/120")]).unwrap();
    v6.allocate(Owner::Router).unwrap();
    assert_eq!(v6.status().to_string(), "IPv6: 1/254 allocated from fd00::100/120");
}

#[test]
fn allocation_is_idempotent_per_owner() {
    let mut alloc = v4(&["10.0.2.0/24"]);
    let first = alloc.allocate(pod(1)).unwrap();
    assert_eq!(alloc.allocate(pod(1)).unwrap(), first);
    assert_eq!(alloc.used(), 1);
    // Same pod, new sandbox (container id): a separate attachment, a separate address.
    let again = alloc.allocate(Owner::endpoint("default", "pod-1", "c1-new", "eth0")).unwrap();
    assert_ne!(again, first);
    // Same container, second interface: separate too.
    let second_if = alloc.allocate(Owner::endpoint("default", "pod-1", "c1", "net1")).unwrap();
    assert_ne!(second_if, first);
    assert_eq!(alloc.used(), 3);
    assert_eq!(alloc.owner_of(first), Some(&pod(1)));
    assert_eq!(alloc.addr_of(&pod(1)), Some(first));
}

#[test]
fn restore_accepts_valid_and_reports_conflicts() {
    enum Want {
        Ok,
        Err(fn(&IpamError) -> bool),
    }
    let cases: Vec<(&str, Owner, &str, Want)> = vec![
        ("router restored", Owner::Router, "10.0.2.1", Want::Ok),
        ("same pair again is a no-op", Owner::Router, "10.0.2.1", Want::Ok),
        ("pod restored", pod(1), "10.0.2.77", Want::Ok),
        (
            "address held by someone else",
            pod(2),
            "10.0.2.77",
            Want::Err(|e| matches!(e, IpamError::AlreadyAllocated { owner, .. } if **owner == pod(1))),
        ),
        (
            "owner holds another address",
            pod(1),
            "10.0.2.78",
            Want::Err(|e| matches!(e, IpamError::OwnerHasOtherAddress { .. })),
        ),
        ("outside the node CIDRs", pod(3), "10.0.9.9", Want::Err(|e| matches!(e, IpamError::NotInRange { .. }))),
        ("network address", pod(3), "10.0.2.0", Want::Err(|e| matches!(e, IpamError::ReservedAddress { .. }))),
        ("last address", pod(3), "10.0.2.255", Want::Err(|e| matches!(e, IpamError::ReservedAddress { .. }))),
        ("other family", pod(3), "fd00::1", Want::Err(|e| matches!(e, IpamError::NotInRange { .. }))),
        (
            "first usable",
            pod(4),
            "10.0.2.1",
            Want::Err(|e| matches!(e, IpamError::AlreadyAllocated { owner, .. } if **owner == Owner::Router)),
        ),
        ("last usable", pod(4), "10.0.2.254", Want::Ok),
    ];
    let mut alloc = v4(&["10.0.2.0/24"]);
    for (name, owner, addr, want) in cases {
        let before = alloc.used();
        let got = alloc.restore(owner.clone(), ip(addr));
        match want {
            Want::Ok => {
                assert_eq!(got, Ok(()), "{name}");
                assert_eq!(alloc.owner_of(ip(addr)), Some(&owner), "{name}");
            }
            Want::Err(check) => {
                let err = got.expect_err(name);
                assert!(check(&err), "{name}: {err:?}");
                assert_eq!(alloc.used(), before, "{name}: a failed restore changes nothing");
            }
        }
    }
    assert_eq!(alloc.used(), 3);
    // New allocations skip restored addresses.
    let fresh: BTreeSet<IpAddr> = (10..300).map_while(|n| alloc.allocate(pod(n)).ok()).collect();
    assert_eq!(fresh.len(), 254 - 3);
    assert!(!fresh.contains(&ip("10.0.2.77")) && !fresh.contains(&ip("10.0.2.1")));
}

#[test]
fn release_frees_and_is_idempotent() {
    let mut alloc = v4(&["10.0.42.0/29"]);
    let addrs: Vec<IpAddr> = (0..6).map(|n| alloc.allocate(pod(n)).unwrap()).collect();
    assert!(alloc.allocate(pod(9)).is_err());
    assert_eq!(alloc.release_owner(&pod(2)), Some(addrs[2]));
    assert_eq!(alloc.release_owner(&pod(2)), None, "a second DEL finds nothing");
    assert_eq!(alloc.release_addr(addrs[3]), Some(pod(3)));
    assert_eq!(alloc.release_addr(addrs[3]), None);
    assert_eq!(alloc.used(), 4);
    let a = alloc.allocate(pod(9)).unwrap();
    let b = alloc.allocate(pod(10)).unwrap();
    assert_eq!(BTreeSet::from([a, b]), BTreeSet::from([addrs[2], addrs[3]]));
    assert!(alloc.allocate(pod(11)).is_err());
}

#[test]
fn a_released_address_is_not_reused_while_others_are_free() {
    let mut alloc = v4(&["10.0.2.0/24"]);
    let first = alloc.allocate(pod(0)).unwrap();
    alloc.release_owner(&pod(0));
    let next = alloc.allocate(pod(1)).unwrap();
    assert_ne!(next, first);
    assert_eq!(next, ip("10.0.2.2"));
}

#[test]
fn fills_cidrs_in_order_then_reports_exhaustion() {
    let mut alloc = v4(&["10.0.42.0/30", "10.0.84.0/30"]);
    let got: Vec<IpAddr> = (0..4).map(|n| alloc.allocate(pod(n)).unwrap()).collect();
    assert_eq!(got, ["10.0.42.1", "10.0.42.2", "10.0.84.1", "10.0.84.2"].map(ip));
    let err = alloc.allocate(pod(5)).unwrap_err().to_string();
    assert!(err.contains("4/4 allocated from 10.0.42.0/30, 10.0.84.0/30"), "{err}");
}

#[test]
fn tiny_node_cidrs_have_no_addresses() {
    for cidr in ["10.0.0.0/31", "10.0.0.5/32", "fd00::/127", "fd00::5/128"] {
        let cidr = net(cidr);
        let mut alloc = AddressAllocator::new(Family::of_net(&cidr), &[cidr]).unwrap();
        let err = alloc.allocate(Owner::Router).unwrap_err();
        assert!(matches!(&err, IpamError::Exhausted { status } if status.capacity == 0), "{cidr}: {err:?}");
        assert!(err.to_string().contains(&format!("0/0 allocated from {}", cidr.trunc())), "{err}");
        let any_addr = cidr.addr();
        assert!(alloc.restore(pod(0), any_addr).is_err(), "{cidr}: restore into a CIDR without usable addresses");
    }
}

#[test]
fn cidr_management_rejects_bad_input() {
    let mut alloc = v4(&["10.0.2.0/24"]);
    assert_eq!(alloc.add_cidr(net("10.0.2.0/24")), Ok(false));
    assert!(matches!(alloc.add_cidr(net("10.0.2.128/25")), Err(IpamError::CidrOverlap { .. })));
    assert!(matches!(alloc.add_cidr(net("10.0.0.0/16")), Err(IpamError::CidrOverlap { .. })));
    assert!(matches!(alloc.add_cidr(net("fd00::/120")), Err(IpamError::FamilyMismatch { .. })));
    assert_eq!(alloc.add_cidr(net("10.0.3.0/24")), Ok(true));
    assert!(AddressAllocator::new(Family::V4, &[net("10.0.0.0/24"), net("10.0.0.0/25")]).is_err());

    let addr = alloc.allocate(pod(0)).unwrap();
    assert_eq!(alloc.used_in(&net("10.0.2.0/24")), Some(1));
    assert!(matches!(alloc.remove_cidr(net("10.0.2.0/24")), Err(IpamError::CidrInUse { used: 1, .. })));
    assert_eq!(alloc.remove_cidr(net("10.0.3.0/24")), Ok(()));
    assert_eq!(alloc.remove_cidr(net("10.0.3.0/24")), Err(IpamError::UnknownCidr(net("10.0.3.0/24"))));
    alloc.release_addr(addr);
    assert_eq!(alloc.remove_cidr(net("10.0.2.0/24")), Ok(()));
    assert_eq!(alloc.capacity(), 0);
}

/// A node CIDR added later (multi-pool growth) serves allocations once the first is full.
#[test]
fn grows_by_adding_a_cidr() {
    let mut alloc = v4(&["10.10.0.0/30"]);
    alloc.allocate(pod(0)).unwrap();
    alloc.allocate(pod(1)).unwrap();
    assert!(alloc.allocate(pod(2)).is_err());
    alloc.add_cidr(net("10.10.0.32/27")).unwrap();
    assert_eq!(alloc.allocate(pod(2)).unwrap(), ip("10.10.0.33"));
    assert_eq!(alloc.status().to_string(), "IPv4: 3/32 allocated from 10.10.0.0/30, 10.10.0.32/27");
}

#[test]
fn large_ipv6_node_cidr_is_cheap() {
    let mut alloc = AddressAllocator::new(Family::V6, &[net("fd00:10::/64")]).unwrap();
    for n in 0..1000 {
        alloc.allocate(pod(n)).unwrap();
    }
    assert_eq!(alloc.ranges[0].used.run_count(), 1, "sequential allocations form one run");
    assert_eq!(alloc.addr_of(&pod(0)), Some(ip("fd00:10::1")));
    assert_eq!(alloc.addr_of(&pod(999)), Some(ip("fd00:10::3e8")));
    alloc.restore(pod(5000), ip("fd00:10::ffff:ffff:ffff:fffe")).unwrap();
    assert!(matches!(
        alloc.restore(pod(5001), ip("fd00:10::ffff:ffff:ffff:ffff")),
        Err(IpamError::ReservedAddress { .. })
    ));
}

/// Random allocate/release/restore sequences never hand out an address twice, never hand out a
/// network or last address, keep both indexes consistent, and fail only when truly full.
#[test]
fn random_sequences_keep_invariants() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..30 {
        let cidrs = [net("10.1.0.0/28"), net("10.1.0.64/29"), net("10.1.1.0/30")];
        let mut alloc = AddressAllocator::new(Family::V4, &cidrs).unwrap();
        let capacity = 14 + 6 + 2;
        let mut model: HashMap<Owner, IpAddr> = HashMap::new();
        for step in 0..500 {
            let owner = pod(rng.random_range(0..40));
            if rng.random_bool(0.6) {
                match alloc.allocate(owner.clone()) {
                    Ok(addr) => {
                        if let Some(prev) = model.get(&owner) {
                            assert_eq!(*prev, addr, "round {round} step {step}: idempotent");
                        }
                        assert!(
                            model.iter().all(|(o, a)| *a != addr || *o == owner),
                            "round {round} step {step}: {addr} handed out twice"
                        );
                        model.insert(owner, addr);
                    }
                    Err(IpamError::Exhausted { .. }) => {
                        assert!(!model.contains_key(&owner));
                        assert_eq!(model.len(), capacity, "round {round} step {step}: exhausted early");
                    }
                    Err(e) => panic!("round {round} step {step}: {e}"),
                }
            } else {
                assert_eq!(alloc.release_owner(&owner), model.remove(&owner), "round {round} step {step}");
            }
            assert_eq!(alloc.used(), model.len() as u128);
            for addr in model.values() {
                let inside = cidrs.iter().find(|c| c.contains(addr)).expect("inside a node CIDR");
                assert!(*addr != inside.network() && *addr != inside.broadcast(), "{addr} is reserved");
            }
        }
        // Restart: a new allocator restored from the model agrees and refuses duplicates.
        let mut restored = AddressAllocator::new(Family::V4, &cidrs).unwrap();
        for (owner, addr) in &model {
            restored.restore(owner.clone(), *addr).unwrap();
        }
        assert_eq!(restored.used(), alloc.used());
        let fresh: Vec<IpAddr> = (100..200).map_while(|n| restored.allocate(pod(n)).ok()).collect();
        assert_eq!(fresh.len(), capacity - model.len());
        assert!(fresh.iter().all(|a| !model.values().any(|m| m == a)));
    }
}
