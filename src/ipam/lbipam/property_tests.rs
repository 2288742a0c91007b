//! Property test: thousands of random pool and Service operations, each followed by a reconcile pass
//! written back into the Services. After every pass: no address is on two Services that may not share
//! it, every address lies in the pool it is counted against, pool counts add up, and the result is a
//! fixed point. At the end, with every Service gone, every pool is whole again (nothing leaked).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::addr::Count;
use super::desired_tests::{annotate, apply, assert_fixed_point, cidr, config, pool, ports, range, svc};
use super::*;
use crate::crds::cilium_load_balancer_ip_pool::{AllowFirstLastIps, CiliumLoadBalancerIPPool, LbIpBlock};
use crate::crds::selector::LabelSelector;

/// xorshift64*: deterministic, dependency-free randomness; the seed is in every failure message.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const POOLS: usize = 4;
const SERVICES: usize = 12;
const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const REQUESTABLE: [&str; 6] = ["10.0.0.1", "10.0.0.5", "10.0.1.2", "10.0.0.7", "fd00::2", "192.168.0.1"];

fn random_block(rng: &mut Rng) -> LbIpBlock {
    match rng.below(8) {
        0 => cidr("10.0.0.0/29"),
        1 => cidr("10.0.0.4/30"),
        2 => cidr("10.0.1.0/30"),
        3 => range("10.0.0.6", Some("10.0.0.9")),
        4 => range("10.0.2.1", None),
        5 => cidr("fd00::/126"),
        6 => range("10.0.3.9", Some("10.0.3.1")), // invalid: start after stop
        _ => cidr("10.0.4.0/31"),
    }
}

fn random_pool(rng: &mut Rng, index: usize) -> CiliumLoadBalancerIPPool {
    let blocks = (0..1 + rng.below(2)).map(|_| random_block(rng)).collect();
    let mut p = pool(&format!("p{index}"), rng.below(5) as i64, blocks);
    if rng.chance(30) {
        let env = rng.pick(&["a", "b"]);
        p.spec.service_selector =
            Some(LabelSelector { match_labels: [("env".to_string(), env.to_string())].into(), ..Default::default() });
    }
    if rng.chance(40) {
        p.spec.allow_first_last_ips = Some(rng.pick(&[AllowFirstLastIps::No, AllowFirstLastIps::Yes]));
    }
    p.spec.disabled = rng.chance(10);
    p
}

fn random_service(rng: &mut Rng, index: usize, created: i64) -> Service {
    let ns = rng.pick(&NAMESPACES);
    let mut s = svc(ns, &format!("s{index}"), created);
    let port_sets: [&[i32]; 4] = [&[80], &[443], &[80, 8080], &[53]];
    let chosen: &[i32] = port_sets[rng.below(port_sets.len())];
    s = ports(s, chosen);
    if rng.chance(50) {
        s = annotate(s, ANNOTATION_SHARING_KEY, rng.pick(&["k1", "k2"]));
    }
    if rng.chance(20) {
        s = annotate(s, ANNOTATION_SHARING_CROSS_NAMESPACE, rng.pick(&["*", "n0", "n1,n2"]));
    }
    if rng.chance(25) {
        let n = 1 + rng.below(2);
        let ips: Vec<&str> = (0..n).map(|_| rng.pick(&REQUESTABLE)).collect();
        s = annotate(s, ANNOTATION_IPS, &ips.join(","));
    }
    if rng.chance(40) {
        s.metadata.labels = Some([("env".to_string(), rng.pick(&["a", "b"]).to_string())].into());
    }
    let spec = s.spec.as_mut().unwrap();
    if rng.chance(20) {
        spec.external_traffic_policy = Some("Local".into());
        if rng.chance(70) {
            spec.selector = Some([("app".to_string(), rng.pick(&["x", "y"]).to_string())].into());
        }
    }
    if rng.chance(30) {
        spec.ip_family_policy = Some(rng.pick(&["SingleStack", "PreferDualStack", "RequireDualStack"]).to_string());
        if rng.chance(50) {
            spec.ip_families = Some(vec![rng.pick(&["IPv4", "IPv6"]).to_string()]);
        }
    }
    if rng.chance(8) {
        spec.type_ = Some("NodePort".into());
    }
    s
}

fn ingress_ips(s: &Service) -> Vec<IpAddr> {
    s.status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|e| e.ip.as_deref()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn check_invariants(
    seed: u64,
    op: usize,
    pools: &[CiliumLoadBalancerIPPool],
    services: &[Service],
    state: &DesiredState,
) {
    let ctx = format!("seed {seed}, op {op}");
    let requests: BTreeMap<ServiceKey, ServiceRequest> = services
        .iter()
        .filter_map(|s| match classify(s, &config()) {
            Responsibility::Ours(r) => Some((r.key.clone(), *r)),
            _ => None,
        })
        .collect();
    let mut holders: BTreeMap<IpAddr, Vec<&ServiceKey>> = BTreeMap::new();
    for s in services {
        let ips = ingress_ips(s);
        let key = ServiceKey::new(s.metadata.namespace.clone().unwrap(), s.metadata.name.clone().unwrap());
        if !requests.contains_key(&key) {
            assert!(ips.is_empty(), "{ctx}: {key} is not a LoadBalancer Service LB-IPAM handles but has {ips:?}");
            continue;
        }
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len(), "{ctx}: {key} lists an address twice: {ips:?}");
        for ip in ips {
            holders.entry(ip).or_default().push(requests.get_key_value(&key).unwrap().0);
        }
    }
    for (ip, keys) in &holders {
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                let why = requests[*a].sharing_incompatibility(&requests[*b]);
                assert!(why.is_none(), "{ctx}: {ip} is on {a} and {b}, which may not share it: {why:?}");
            }
        }
        let pool_name = state.address_pools.get(ip).unwrap_or_else(|| panic!("{ctx}: {ip} is held but untracked"));
        let pool = pools.iter().find(|p| p.metadata.name.as_deref() == Some(pool_name.as_str())).unwrap();
        let view = PoolView::from_pool(pool);
        assert!(view.range_of(*ip).is_some(), "{ctx}: {ip} is outside pool {pool_name}");
        for key in keys {
            assert!(view.selects(&requests[*key]), "{ctx}: pool {pool_name} does not select {key}, which holds {ip}");
        }
    }
    assert_eq!(
        state.address_pools.keys().collect::<BTreeSet<_>>(),
        holders.keys().collect::<BTreeSet<_>>(),
        "{ctx}: tracked addresses differ from the addresses Services hold"
    );
    for (name, outcome) in &state.pools {
        let held = state.address_pools.values().filter(|p| *p == name).count();
        assert_eq!(outcome.used, held as u128, "{ctx}: used count of {name}");
        assert_eq!(outcome.used + outcome.available, outcome.total, "{ctx}: {name}: used + available != total");
    }
}

fn run(seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let mut pools: Vec<Option<CiliumLoadBalancerIPPool>> = vec![None; POOLS];
    let mut services: Vec<Option<Service>> = vec![None; SERVICES];
    for op in 0..ops {
        match rng.below(10) {
            0..=1 => {
                let i = rng.below(POOLS);
                pools[i] = Some(random_pool(&mut rng, i));
            }
            2 => pools[rng.below(POOLS)] = None,
            3..=6 => {
                // Create or update; an update keeps the status the controller wrote.
                let i = rng.below(SERVICES);
                let mut fresh = random_service(&mut rng, i, op as i64);
                if let Some(old) = &services[i] {
                    fresh.metadata.namespace = old.metadata.namespace.clone();
                    fresh.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                    fresh.status = old.status.clone();
                }
                services[i] = Some(fresh);
            }
            _ => services[rng.below(SERVICES)] = None,
        }
        let live_pools: Vec<_> = pools.iter().flatten().cloned().collect();
        let mut live: Vec<Service> = services.iter().flatten().cloned().collect();
        let state = desired_state(&live_pools, &live, &config());
        apply(&mut live, &state);
        for s in live {
            let idx: usize = s.metadata.name.as_ref().unwrap()[1..].parse().unwrap();
            services[idx] = Some(s);
        }
        let live: Vec<Service> = services.iter().flatten().cloned().collect();
        check_invariants(seed, op, &live_pools, &live, &state);
        assert_fixed_point(&live_pools, &live);
    }
    // Every Service goes: every pool is whole again.
    let live_pools: Vec<_> = pools.iter().flatten().cloned().collect();
    let state = desired_state(&live_pools, &[], &config());
    for (name, outcome) in &state.pools {
        assert_eq!(outcome.used, Count::ZERO, "seed {seed}: {name} still counts addresses as used");
        assert_eq!(outcome.available, outcome.total, "seed {seed}: {name} lost addresses");
    }
}

#[test]
fn random_operations_never_double_assign_or_leak() {
    for seed in [1u64, 0x5eed, 0xdead_beef, 42_424_242] {
        run(seed, 1500);
    }
}
