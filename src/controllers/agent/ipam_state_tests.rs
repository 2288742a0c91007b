use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn pod(n: usize) -> Owner {
    Owner::endpoint("default", &format!("pod-{n}"), &format!("ctr-{n}"), "eth0")
}

#[test]
fn not_ready_until_every_family_has_a_cidr_and_the_error_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = NodeIpam::new(vec![Family::V4, Family::V6], dir.path());
    let err = ipam.allocate(&pod(1), None).unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("try again later"), "{err}");
    let err = ipam.set_cidrs(&nets(&["10.0.2.0/24"])).unwrap_err();
    assert!(err.to_string().contains("no IPv6 pod CIDR"), "{err}");
    assert!(ipam.allocate(&pod(1), None).unwrap_err().to_string().contains("no IPv6 pod CIDR"));
    ipam.set_cidrs(&nets(&["10.0.2.0/24", "fd00:2::/120"])).unwrap();
    let ips = ipam.allocate(&pod(1), None).unwrap();
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0].gateway, "10.0.2.1".parse::<IpAddr>().unwrap(), "router holds the first address");
    assert_eq!(ips[1].cidr, "fd00:2::/120".parse::<IpNet>().unwrap());
}

#[test]
fn small_cidr_fills_up_with_the_seeds_status_line_and_release_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = NodeIpam::new(vec![Family::V4], dir.path());
    ipam.set_cidrs(&nets(&["10.0.42.0/29"])).unwrap();
    let mut held = BTreeSet::new();
    for n in 0..4 {
        let ip = ipam.allocate(&pod(n), Some(Family::V4)).unwrap()[0].ip;
        assert!(held.insert(ip), "{ip} handed out twice");
        assert_eq!(ipam.allocate(&pod(n), None).unwrap()[0].ip, ip, "a retried ADD gets the same address");
    }
    assert_eq!(ipam.listing().status, ["IPv4: 6/6 allocated from 10.0.42.0/29"]);
    let err = ipam.allocate(&pod(9), None).unwrap_err();
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("IPv4: 6/6 allocated from 10.0.42.0/29"), "{err}");
    assert_eq!(ipam.release("ctr-1", "eth0").unwrap().len(), 1);
    assert_eq!(ipam.release("ctr-1", "eth0").unwrap(), Vec::<IpAddr>::new(), "second DEL is a no-op");
    assert_eq!(ipam.release("never-seen", "eth0").unwrap(), Vec::<IpAddr>::new());
    assert!(ipam.allocate(&pod(9), None).is_ok(), "the freed address is reusable");
    assert!(matches!(ipam.allocate(&pod(10), Some(Family::V6)), Err(NodeIpamError::FamilyDisabled(Family::V6))));
}

#[test]
fn restart_restores_router_health_and_pods_from_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeIpam::new(vec![Family::V4], dir.path());
    first.set_cidrs(&nets(&["10.0.3.0/24"])).unwrap();
    let a = first.allocate(&pod(1), None).unwrap();
    let b = first.allocate(&pod(2), None).unwrap();
    first.release("ctr-1", "eth0").unwrap();
    let c = first.allocate(&pod(3), None).unwrap();
    let before = first.listing().allocations;
    drop(first);

    let second = NodeIpam::new(vec![Family::V4], dir.path());
    second.set_cidrs(&nets(&["10.0.3.0/24"])).unwrap();
    assert_eq!(second.listing().allocations, before);
    assert_eq!(second.allocate(&pod(2), None).unwrap(), b, "pod-2 keeps its address");
    assert_eq!(second.allocate(&pod(3), None).unwrap(), c);
    let fresh = second.allocate(&pod(4), None).unwrap()[0].ip;
    assert!(fresh != b[0].ip && fresh != c[0].ip && fresh != a[0].gateway, "{fresh}");
}

#[test]
fn dual_stack_allocation_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = NodeIpam::new(vec![Family::V4, Family::V6], dir.path());
    // The /125 holds 6 addresses: router, health and four pods.
    ipam.set_cidrs(&nets(&["10.0.4.0/24", "fd00:4::/125"])).unwrap();
    for n in 0..4 {
        ipam.allocate(&pod(n), None).unwrap();
    }
    let used_before = ipam.statuses()[0].used;
    let err = ipam.allocate(&pod(5), None).unwrap_err();
    assert!(err.to_string().contains("no free IPv6 addresses"), "{err}");
    assert_eq!(ipam.statuses()[0].used, used_before, "the IPv4 address taken for pod-5 was given back");
}

#[test]
fn concurrent_burst_never_duplicates_or_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], dir.path()));
    ipam.set_cidrs(&nets(&["10.0.5.0/24"])).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ipam = ipam.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let n = t * 100 + i;
                    ipam.allocate(&pod(n), None).unwrap();
                    if i % 2 == 0 {
                        ipam.release(&format!("ctr-{n}"), "eth0").unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let listing = ipam.listing();
    let ips: BTreeSet<IpAddr> = listing.allocations.iter().map(|r| r.ip).collect();
    assert_eq!(ips.len(), listing.allocations.len(), "no address has two owners");
    // 8 threads × 12 kept pods + router + health.
    assert_eq!(listing.allocations.len(), 8 * 12 + 2);
    let restored = NodeIpam::new(vec![Family::V4], dir.path());
    restored.set_cidrs(&nets(&["10.0.5.0/24"])).unwrap();
    assert_eq!(restored.listing().allocations, listing.allocations, "the state file matches memory");
}
