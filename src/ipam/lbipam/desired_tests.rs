//! Table-driven tests of the desired-state function, with real k8s-openapi Services and pool CRs.
//! Multi-step scenarios feed each result back into the Services' status, as the controller would.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::addr::{Count, Family};
use super::status::{service_status_released, service_status_with};
use super::*;
use crate::crds::cilium_load_balancer_ip_pool::{AllowFirstLastIps, CiliumLoadBalancerIPPool, LbIpBlock, LbIpPoolSpec};
use crate::crds::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

pub(super) fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

pub(super) fn cidr(c: &str) -> LbIpBlock {
    LbIpBlock { cidr: Some(c.into()), ..Default::default() }
}

pub(super) fn range(start: &str, stop: Option<&str>) -> LbIpBlock {
    LbIpBlock { start: Some(start.into()), stop: stop.map(Into::into), ..Default::default() }
}

pub(super) fn pool(name: &str, created: i64, blocks: Vec<LbIpBlock>) -> CiliumLoadBalancerIPPool {
    let mut p = CiliumLoadBalancerIPPool::new(name, LbIpPoolSpec { blocks, ..Default::default() });
    p.metadata.creation_timestamp = Some(time(created));
    p.metadata.generation = Some(1);
    p
}

fn with_selector(mut p: CiliumLoadBalancerIPPool, labels: &[(&str, &str)]) -> CiliumLoadBalancerIPPool {
    let match_labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    p.spec.service_selector = Some(LabelSelector { match_labels, ..Default::default() });
    p
}

fn first_last(mut p: CiliumLoadBalancerIPPool, allow: AllowFirstLastIps) -> CiliumLoadBalancerIPPool {
    p.spec.allow_first_last_ips = Some(allow);
    p
}

fn disabled(mut p: CiliumLoadBalancerIPPool) -> CiliumLoadBalancerIPPool {
    p.spec.disabled = true;
    p
}

/// A `type: LoadBalancer` Service with one TCP port 80, created at `created` seconds.
pub(super) fn svc(ns: &str, name: &str, created: i64) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            creation_timestamp: Some(time(created)),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort { port: 80, protocol: Some("TCP".into()), ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    }
}

pub(super) fn annotate(mut s: Service, key: &str, value: &str) -> Service {
    s.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
    s
}

fn label(mut s: Service, key: &str, value: &str) -> Service {
    s.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
    s
}

pub(super) fn ports(mut s: Service, ports: &[i32]) -> Service {
    s.spec.as_mut().unwrap().ports = Some(
        ports.iter().map(|p| ServicePort { port: *p, protocol: Some("TCP".into()), ..Default::default() }).collect(),
    );
    s
}

fn spec(mut s: Service, f: impl FnOnce(&mut ServiceSpec)) -> Service {
    f(s.spec.as_mut().unwrap());
    s
}

fn with_ingress(mut s: Service, ips: &[&str]) -> Service {
    let ingress = ips.iter().map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() }).collect();
    let status = service_status_with(
        None,
        &ingress_vec(ingress),
        &DesiredCondition::new(CONDITION_REQUEST_SATISFIED, "True", reason::SATISFIED, ""),
        &time(0),
    );
    s.status = Some(status);
    s
}

fn ingress_vec(v: Vec<LoadBalancerIngress>) -> Vec<LoadBalancerIngress> {
    v
}

fn key(s: &Service) -> ServiceKey {
    ServiceKey::new(s.metadata.namespace.clone().unwrap(), s.metadata.name.clone().unwrap())
}

pub(super) fn config() -> LbIpamConfig {
    LbIpamConfig { ipv4: true, ipv6: true, ..Default::default() }
}

/// Writes `state` into the Services' status, as the controller's patch would.
pub(super) fn apply(services: &mut [Service], state: &DesiredState) {
    for s in services.iter_mut() {
        match state.services.get(&key(s)) {
            Some(ServiceOutcome::Assign { ingress, condition }) => {
                s.status = Some(service_status_with(s.status.as_ref(), ingress, condition, &time(1)));
            }
            Some(ServiceOutcome::Release) => {
                s.status = Some(service_status_released(s.status.as_ref(), CONDITION_REQUEST_SATISFIED));
            }
            None => {}
        }
    }
}

/// Running the function on Services that already carry its output changes no Service status.
pub(super) fn assert_fixed_point(pools: &[CiliumLoadBalancerIPPool], services: &[Service]) {
    let again = desired_state(pools, services, &config());
    let mut reapplied = services.to_vec();
    apply(&mut reapplied, &again);
    assert_eq!(reapplied, services, "running on its own output must change nothing");
    assert!(!again.services.values().any(|o| *o == ServiceOutcome::Release), "nothing left to release");
}

/// Runs the function, applies the result, and checks it is a fixed point.
pub(super) fn step(pools: &[CiliumLoadBalancerIPPool], services: &mut [Service]) -> DesiredState {
    let state = desired_state(pools, services, &config());
    apply(services, &state);
    assert_fixed_point(pools, services);
    state
}

fn ips(state: &DesiredState, s: &Service) -> Vec<String> {
    match state.services.get(&key(s)) {
        Some(ServiceOutcome::Assign { ingress, .. }) => ingress.iter().filter_map(|i| i.ip.clone()).collect(),
        other => panic!("{} not assigned: {other:?}", key(s)),
    }
}

fn cond(state: &DesiredState, s: &Service) -> DesiredCondition {
    match state.services.get(&key(s)) {
        Some(ServiceOutcome::Assign { condition, .. }) => condition.clone(),
        other => panic!("{} not assigned: {other:?}", key(s)),
    }
}

fn pool_cond(state: &DesiredState, pool: &str, type_: &str) -> DesiredCondition {
    state.pools[pool].conditions.iter().find(|c| c.type_ == type_).cloned().unwrap()
}

/// One-shot cases: (name, pools, services, expected addresses per service, expected reason per service).
#[test]
fn single_pass_semantics() {
    type Case = (&'static str, Vec<CiliumLoadBalancerIPPool>, Vec<Service>, Vec<Vec<&'static str>>, Vec<&'static str>);
    let p = |name, created, c| pool(name, created, vec![cidr(c)]);
    let cases: Vec<Case> = vec![
        (
            "first free address, oldest service first",
            vec![p("a", 1, "10.0.0.0/30")],
            vec![svc("ns", "y", 2), svc("ns", "x", 1)],
            vec![vec!["10.0.0.1"], vec!["10.0.0.0"]],
            vec!["satisfied", "satisfied"],
        ),
        (
            "pool order is creation order, then blocks in order",
            vec![
                pool("young", 5, vec![cidr("10.9.0.0/32")]),
                pool("old", 1, vec![range("10.1.0.5", Some("10.1.0.5")), range("10.0.0.1", None)]),
            ],
            vec![svc("ns", "a", 1), svc("ns", "b", 2), svc("ns", "c", 3), svc("ns", "d", 4)],
            vec![vec!["10.1.0.5"], vec!["10.0.0.1"], vec!["10.9.0.0"], vec![]],
            vec!["satisfied", "satisfied", "satisfied", "out_of_ips"],
        ),
        (
            "allowFirstLastIPs No skips network and broadcast",
            vec![first_last(p("a", 1, "10.0.0.0/30"), AllowFirstLastIps::No)],
            vec![svc("ns", "a", 1), svc("ns", "b", 2), svc("ns", "c", 3)],
            vec![vec!["10.0.0.1"], vec!["10.0.0.2"], vec![]],
            vec!["satisfied", "satisfied", "out_of_ips"],
        ),
        (
            "allowFirstLastIPs No reserves nothing in a /31 or a start/stop range",
            vec![first_last(
                pool("a", 1, vec![cidr("10.0.0.0/31"), range("10.0.1.0", Some("10.0.1.2"))]),
                AllowFirstLastIps::No,
            )],
            vec![svc("ns", "a", 1), svc("ns", "b", 2), svc("ns", "c", 3)],
            vec![vec!["10.0.0.0"], vec!["10.0.0.1"], vec!["10.0.1.0"]],
            vec!["satisfied"; 3],
        ),
        (
            "no pool for the family",
            vec![p("a", 1, "fd00::/120")],
            vec![svc("ns", "a", 1)],
            vec![vec![]],
            vec!["no_pool"],
        ),
        (
            "serviceSelector matchLabels",
            vec![with_selector(p("a", 1, "10.0.0.0/24"), &[("env", "prod")])],
            vec![label(svc("ns", "a", 1), "env", "prod"), label(svc("ns", "b", 1), "env", "dev")],
            vec![vec!["10.0.0.0"], vec![]],
            vec!["satisfied", "no_pool"],
        ),
        (
            "namespace label is set by LB-IPAM and cannot be spoofed",
            vec![with_selector(p("a", 1, "10.0.0.0/24"), &[("io.kubernetes.service.namespace", "payments")])],
            vec![label(svc("evil", "a", 1), "io.kubernetes.service.namespace", "payments"), svc("payments", "b", 2)],
            vec![vec![], vec!["10.0.0.0"]],
            vec!["no_pool", "satisfied"],
        ),
        (
            "name label selects one service",
            vec![with_selector(p("a", 1, "10.0.0.0/24"), &[("io.kubernetes.service.name", "b")])],
            vec![svc("ns", "a", 1), svc("ns", "b", 2)],
            vec![vec![], vec!["10.0.0.0"]],
            vec!["no_pool", "satisfied"],
        ),
        (
            "matchExpressions",
            vec![{
                let mut pl = p("a", 1, "10.0.0.0/24");
                pl.spec.service_selector = Some(LabelSelector {
                    match_expressions: vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: SelectorOperator::NotIn,
                        values: vec!["internal".into()],
                    }],
                    ..Default::default()
                });
                pl
            }],
            vec![label(svc("ns", "a", 1), "tier", "internal"), svc("ns", "b", 2)],
            vec![vec![], vec!["10.0.0.0"]],
            vec!["no_pool", "satisfied"],
        ),
        (
            "disabled pool makes no new assignments",
            vec![disabled(p("a", 1, "10.0.0.0/24"))],
            vec![svc("ns", "a", 1)],
            vec![vec![]],
            vec!["no_pool"],
        ),
        (
            "requested by spec.loadBalancerIP and annotation (alias), all must be assigned",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                spec(annotate(svc("ns", "a", 1), "io.cilium/lb-ipam-ips", "10.0.0.7, 10.0.0.9"), |s| {
                    s.load_balancer_ip = Some("10.0.0.5".into())
                }),
                annotate(svc("ns", "b", 2), "lbipam.cilium.io/ips", "10.0.0.8,10.1.0.1"),
            ],
            vec![vec!["10.0.0.5", "10.0.0.7", "10.0.0.9"], vec!["10.0.0.8"]],
            vec!["satisfied", "no_pool"],
        ),
        (
            "requested address taken by another service",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(svc("ns", "a", 1), ANNOTATION_IPS, "10.0.0.3"),
                annotate(svc("ns", "b", 2), ANNOTATION_IPS, "10.0.0.3"),
            ],
            vec![vec!["10.0.0.3"], vec![]],
            vec!["satisfied", "already_allocated"],
        ),
        (
            "requested address in a pool that doesn't select the service",
            vec![with_selector(p("a", 1, "10.0.0.0/24"), &[("env", "prod")])],
            vec![annotate(svc("ns", "a", 1), ANNOTATION_IPS, "10.0.0.3")],
            vec![vec![]],
            vec!["pool_selector_mismatch"],
        ),
        (
            "requested addresses are served before generic ones in the same pass",
            vec![p("a", 1, "10.0.0.0/31")],
            vec![svc("ns", "generic", 1), annotate(svc("ns", "wants", 2), ANNOTATION_IPS, "10.0.0.0")],
            vec![vec!["10.0.0.1"], vec!["10.0.0.0"]],
            vec!["satisfied", "satisfied"],
        ),
        (
            "sharing key: different ports share, same port does not",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(svc("ns", "a", 1), ANNOTATION_SHARING_KEY, "k"),
                annotate(ports(svc("ns", "b", 2), &[443]), ANNOTATION_SHARING_KEY, "k"),
                annotate(ports(svc("ns", "c", 3), &[80, 8080]), ANNOTATION_SHARING_KEY, "k"),
            ],
            vec![vec!["10.0.0.0"], vec!["10.0.0.0"], vec!["10.0.0.1"]],
            vec!["satisfied"; 3],
        ),
        (
            "same port with a different protocol still cannot share",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(svc("ns", "a", 1), ANNOTATION_SHARING_KEY, "k"),
                annotate(
                    spec(svc("ns", "b", 2), |s| s.ports.as_mut().unwrap()[0].protocol = Some("UDP".into())),
                    ANNOTATION_SHARING_KEY,
                    "k",
                ),
            ],
            vec![vec!["10.0.0.0"], vec!["10.0.0.1"]],
            vec!["satisfied"; 2],
        ),
        (
            "different keys never share",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(svc("ns", "a", 1), ANNOTATION_SHARING_KEY, "k1"),
                annotate(ports(svc("ns", "b", 2), &[443]), ANNOTATION_SHARING_KEY, "k2"),
            ],
            vec![vec!["10.0.0.0"], vec!["10.0.0.1"]],
            vec!["satisfied"; 2],
        ),
        (
            "cross-namespace sharing needs both sides",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(
                    annotate(svc("a", "s", 1), ANNOTATION_SHARING_KEY, "k"),
                    ANNOTATION_SHARING_CROSS_NAMESPACE,
                    "b",
                ),
                annotate(ports(svc("b", "s", 2), &[443]), ANNOTATION_SHARING_KEY, "k"),
                annotate(
                    annotate(ports(svc("c", "s", 3), &[444]), ANNOTATION_SHARING_KEY, "k"),
                    ANNOTATION_SHARING_CROSS_NAMESPACE,
                    "*",
                ),
            ],
            // b did not allow a; c allows everyone but a only allows b: neither joins a.
            vec![vec!["10.0.0.0"], vec!["10.0.0.1"], vec!["10.0.0.2"]],
            vec!["satisfied"; 3],
        ),
        (
            "cross-namespace sharing allowed on both sides",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(
                    annotate(svc("a", "s", 1), ANNOTATION_SHARING_KEY, "k"),
                    ANNOTATION_SHARING_CROSS_NAMESPACE,
                    "b,c",
                ),
                annotate(
                    annotate(ports(svc("b", "s", 2), &[443]), ANNOTATION_SHARING_KEY, "k"),
                    ANNOTATION_SHARING_CROSS_NAMESPACE,
                    "*",
                ),
            ],
            vec![vec!["10.0.0.0"], vec!["10.0.0.0"]],
            vec!["satisfied"; 2],
        ),
        (
            "Local traffic policy shares only with identical non-empty selectors",
            vec![p("a", 1, "10.0.0.0/24")],
            {
                let local = |s: Service, sel: &[(&str, &str)]| {
                    spec(annotate(s, ANNOTATION_SHARING_KEY, "k"), |sp| {
                        sp.external_traffic_policy = Some("Local".into());
                        sp.selector = Some(sel.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
                    })
                };
                vec![
                    local(svc("ns", "a", 1), &[("app", "x")]),
                    local(ports(svc("ns", "b", 2), &[443]), &[("app", "x")]),
                    local(ports(svc("ns", "c", 3), &[444]), &[("app", "y")]),
                    local(ports(svc("ns", "d", 4), &[445]), &[]),
                    annotate(ports(svc("ns", "e", 5), &[446]), ANNOTATION_SHARING_KEY, "k"),
                ]
            },
            vec![vec!["10.0.0.0"], vec!["10.0.0.0"], vec!["10.0.0.1"], vec!["10.0.0.2"], vec!["10.0.0.3"]],
            vec!["satisfied"; 5],
        ),
        (
            "requested shared address with an incompatible holder",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                annotate(annotate(svc("ns", "a", 1), ANNOTATION_SHARING_KEY, "k"), ANNOTATION_IPS, "10.0.0.9"),
                annotate(annotate(svc("ns", "b", 2), ANNOTATION_SHARING_KEY, "k"), ANNOTATION_IPS, "10.0.0.9"),
            ],
            vec![vec!["10.0.0.9"], vec![]],
            vec!["satisfied", "already_allocated_incompatible_service"],
        ),
        (
            "other load balancer classes are ignored; Cilium's classes are handled",
            vec![p("a", 1, "10.0.0.0/24")],
            vec![
                spec(svc("ns", "bgp", 1), |s| s.load_balancer_class = Some("io.cilium/bgp-control-plane".into())),
                spec(svc("ns", "l2", 2), |s| s.load_balancer_class = Some("io.cilium/l2-announcer".into())),
            ],
            vec![vec!["10.0.0.0"], vec!["10.0.0.1"]],
            vec!["satisfied"; 2],
        ),
    ];
    for (name, pools, mut services, want_ips, want_reasons) in cases {
        let state = step(&pools, &mut services);
        for (i, s) in services.iter().enumerate() {
            assert_eq!(ips(&state, s), want_ips[i], "{name}: addresses of {}", key(s));
            assert_eq!(cond(&state, s).reason, want_reasons[i], "{name}: reason of {}: {:?}", key(s), cond(&state, s));
            let status = if want_reasons[i] == "satisfied" { "True" } else { "False" };
            assert_eq!(cond(&state, s).status, status, "{name}");
        }
    }
}

#[test]
fn other_classes_and_types_are_left_alone() {
    let pools = [pool("a", 1, vec![cidr("10.0.0.0/24")])];
    let services = [
        spec(svc("ns", "metallb", 1), |s| s.load_balancer_class = Some("metallb.io/x".into())),
        spec(svc("ns", "cluster-ip", 1), |s| s.type_ = Some("ClusterIP".into())),
    ];
    let state = desired_state(&pools, &services, &config());
    assert!(state.services.is_empty(), "{state:?}");
}

#[test]
fn a_service_that_stops_qualifying_is_released() {
    let pools = [pool("a", 1, vec![cidr("10.0.0.0/24")])];
    let mut services = vec![svc("ns", "a", 1)];
    let state = step(&pools, &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"]);
    for change in [
        |s: &mut ServiceSpec| s.type_ = Some("NodePort".into()),
        |s: &mut ServiceSpec| s.load_balancer_class = Some("example.com/other".into()),
    ] {
        let mut changed = vec![spec(services[0].clone(), change)];
        let state = step(&pools, &mut changed);
        assert_eq!(state.services[&key(&changed[0])], ServiceOutcome::Release);
        let status = changed[0].status.as_ref().unwrap();
        assert!(status.load_balancer.as_ref().unwrap().ingress.is_none());
        assert!(!status.conditions.as_ref().unwrap().iter().any(|c| c.type_ == CONDITION_REQUEST_SATISFIED));
        assert_eq!(state.pools["a"].used, Count::ZERO, "its address is free again");
        // Released and clean: the next pass leaves it alone.
        assert!(desired_state(&pools, &changed, &config()).services.is_empty());
    }
}

#[test]
fn dormant_without_pools_until_the_first_pool_exists() {
    let mut services = vec![svc("ns", "a", 1)];
    let state = step(&[], &mut services);
    assert!(state.services.is_empty(), "no pool: LB-IPAM does not touch Services");
    assert!(services[0].status.is_none());

    let pools = vec![pool("late", 10, vec![cidr("10.0.0.0/24")])];
    let state = step(&pools, &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"]);

    // The last pool goes: the Service LB-IPAM addressed loses the address and says why.
    let state = step(&[], &mut services);
    assert_eq!(ips(&state, &services[0]), Vec::<String>::new());
    assert_eq!(cond(&state, &services[0]).reason, reason::NO_POOL);
}

#[test]
fn allow_first_last_no_refuses_the_requested_first_address_until_flipped() {
    let no = first_last(pool("a", 1, vec![cidr("10.0.0.0/30")]), AllowFirstLastIps::No);
    let mut services = vec![annotate(svc("ns", "a", 1), ANNOTATION_IPS, "10.0.0.0")];
    let state = step(std::slice::from_ref(&no), &mut services);
    assert_eq!(ips(&state, &services[0]), Vec::<String>::new());
    let c = cond(&state, &services[0]);
    assert_eq!((c.status, c.reason.as_str()), ("False", reason::ALREADY_ALLOCATED));
    assert!(c.message.contains("allowFirstLastIPs: No") && c.message.contains("10.0.0.0 - 10.0.0.3"), "{}", c.message);
    assert_eq!(pool_cond(&state, "a", CONDITION_IPS_AVAILABLE).message, "2");

    let yes = first_last(no.clone(), AllowFirstLastIps::Yes);
    let state = step(std::slice::from_ref(&yes), &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"]);
    assert_eq!(cond(&state, &services[0]).reason, reason::SATISFIED);

    // Flipping back to No never takes the address away; the other end stays reserved.
    let state = step(std::slice::from_ref(&no), &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"]);
    assert_eq!(pool_cond(&state, "a", CONDITION_IPS_TOTAL).message, "3");
    assert_eq!(pool_cond(&state, "a", CONDITION_IPS_USED).message, "1");
    assert_eq!(pool_cond(&state, "a", CONDITION_IPS_AVAILABLE).message, "2");
    services.push(svc("ns", "b", 2));
    services.push(svc("ns", "c", 3));
    services.push(svc("ns", "d", 4));
    let state = step(std::slice::from_ref(&no), &mut services);
    assert_eq!(ips(&state, &services[1]), ["10.0.0.1"]);
    assert_eq!(ips(&state, &services[2]), ["10.0.0.2"]);
    assert_eq!(cond(&state, &services[3]).reason, reason::OUT_OF_IPS, "10.0.0.3 stays reserved");
}

#[test]
fn three_pools_one_deleted_readdresses_its_services() {
    let pools = vec![
        with_selector(pool("a", 1, vec![cidr("10.0.1.0/31")]), &[("pool", "a")]),
        pool("b", 2, vec![cidr("10.0.2.0/31")]),
        pool("c", 3, vec![cidr("10.0.3.0/31")]),
    ];
    let mut services =
        vec![label(svc("ns", "x", 1), "pool", "a"), svc("ns", "y", 2), svc("ns", "z", 3), svc("ns", "w", 4)];
    let state = step(&pools, &mut services);
    let before: Vec<_> = services.iter().map(|s| ips(&state, s)).collect();
    assert_eq!(before, [vec!["10.0.1.0"], vec!["10.0.2.0"], vec!["10.0.2.1"], vec!["10.0.3.0"]]);

    let remaining = [pools[0].clone(), pools[2].clone()];
    let state = step(&remaining, &mut services);
    let after: Vec<_> = services.iter().map(|s| ips(&state, s)).collect();
    // x and w keep theirs; y and z move to the next matching pool (x's pool only selects x), oldest first.
    assert_eq!(after, [vec!["10.0.1.0"], vec!["10.0.3.1"], vec![], vec!["10.0.3.0"]]);
    assert_eq!(cond(&state, &services[2]).reason, reason::OUT_OF_IPS);
    assert!(!state.pools.contains_key("b"));
}

#[test]
fn shrinking_a_pool_moves_services_outside_it() {
    let mut services = vec![svc("ns", "a", 1), svc("ns", "b", 2)];
    let state = step(&[pool("p", 1, vec![cidr("10.0.0.0/24")])], &mut services);
    assert_eq!([ips(&state, &services[0]), ips(&state, &services[1])], [vec!["10.0.0.0"], vec!["10.0.0.1"]]);
    // As in the seed walk-through: narrowing to start/stop re-addresses the Service on .0.
    let state = step(&[pool("p", 1, vec![range("10.0.0.1", Some("10.0.0.254"))])], &mut services);
    assert_eq!([ips(&state, &services[0]), ips(&state, &services[1])], [vec!["10.0.0.2"], vec!["10.0.0.1"]]);
}

#[test]
fn selector_change_strips_addresses_that_no_longer_match() {
    let mut services = vec![label(svc("ns", "a", 1), "env", "prod")];
    let pools = vec![
        with_selector(pool("prod", 1, vec![cidr("10.1.0.0/24")]), &[("env", "prod")]),
        pool("any", 2, vec![cidr("10.2.0.0/24")]),
    ];
    let state = step(&pools, &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.1.0.0"]);
    let pools = vec![with_selector(pools[0].clone(), &[("env", "staging")]), pools[1].clone()];
    let state = step(&pools, &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.2.0.0"]);
}

#[test]
fn disabled_pool_keeps_existing_assignments() {
    let mut services = vec![svc("ns", "a", 1)];
    let p = pool("p", 1, vec![cidr("10.0.0.0/24")]);
    step(std::slice::from_ref(&p), &mut services);
    services.push(svc("ns", "b", 2));
    let state = step(&[disabled(p)], &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"]);
    assert_eq!(ips(&state, &services[1]), Vec::<String>::new());
    assert_eq!(cond(&state, &services[1]).reason, reason::NO_POOL);
}

#[test]
fn restart_adopts_valid_ingress_and_replaces_the_rest() {
    let pools = [pool("p", 1, vec![cidr("10.0.0.0/24")]), pool("v6", 1, vec![cidr("fd00::/120")])];
    let dual = |s: Service| spec(s, |sp| sp.ip_family_policy = Some("RequireDualStack".into()));
    let mut services = vec![
        with_ingress(svc("ns", "keeps", 1), &["10.0.0.77"]),
        with_ingress(svc("ns", "outside", 2), &["192.168.1.1"]),
        with_ingress(svc("ns", "dup", 3), &["10.0.0.77"]),
        with_ingress(svc("ns", "self-dup", 4), &["10.0.0.9", "10.0.0.9", "10.0.0.10"]),
        with_ingress(dual(svc("ns", "dual", 5)), &["fd00::42", "10.0.0.42"]),
    ];
    let state = step(&pools, &mut services);
    let got: Vec<_> = services.iter().map(|s| ips(&state, s)).collect();
    assert_eq!(
        got,
        [vec!["10.0.0.77"], vec!["10.0.0.0"], vec!["10.0.0.1"], vec!["10.0.0.9"], vec!["fd00::42", "10.0.0.42"],]
    );
}

#[test]
fn ip_family_policies() {
    let pools = [pool("v4", 1, vec![cidr("10.0.0.0/24")]), pool("v6", 2, vec![cidr("fd00::/120")])];
    let fam = |policy: Option<&str>, families: &[&str]| {
        let (policy, families) = (policy.map(String::from), families.iter().map(|f| f.to_string()).collect::<Vec<_>>());
        move |s: &mut ServiceSpec| {
            s.ip_family_policy = policy;
            s.ip_families = (!families.is_empty()).then_some(families);
        }
    };
    // (spec, cluster v4, cluster v6, expected families of the addresses)
    let cases: Vec<(Service, bool, bool, Vec<Family>)> = vec![
        (spec(svc("ns", "a", 1), fam(None, &[])), true, true, vec![Family::V4]),
        (spec(svc("ns", "a", 1), fam(None, &["IPv6"])), true, true, vec![Family::V6]),
        (spec(svc("ns", "a", 1), fam(Some("SingleStack"), &["IPv6", "IPv4"])), true, true, vec![Family::V6]),
        (spec(svc("ns", "a", 1), fam(Some("SingleStack"), &[])), false, true, vec![Family::V6]),
        (
            spec(svc("ns", "a", 1), fam(Some("PreferDualStack"), &["IPv6", "IPv4"])),
            true,
            true,
            vec![Family::V4, Family::V6],
        ),
        (spec(svc("ns", "a", 1), fam(Some("PreferDualStack"), &["IPv6", "IPv4"])), true, false, vec![Family::V4]),
        (spec(svc("ns", "a", 1), fam(Some("PreferDualStack"), &[])), true, true, vec![Family::V4, Family::V6]),
        (spec(svc("ns", "a", 1), fam(Some("RequireDualStack"), &["IPv4"])), true, true, vec![Family::V4, Family::V6]),
        (spec(svc("ns", "a", 1), fam(Some("RequireDualStack"), &[])), false, true, vec![Family::V6]),
    ];
    for (i, (service, v4, v6, want)) in cases.into_iter().enumerate() {
        let cfg = LbIpamConfig { ipv4: v4, ipv6: v6, ..Default::default() };
        let state = desired_state(&pools, std::slice::from_ref(&service), &cfg);
        let got: Vec<Family> =
            ips(&state, &service).iter().map(|ip| Family::of(ip.parse::<IpAddr>().unwrap())).collect();
        assert_eq!(got, want, "case {i}");
        assert_eq!(cond(&state, &service).reason, reason::SATISFIED, "case {i}");
    }
}

#[test]
fn dual_stack_is_unsatisfied_until_every_family_is_assigned() {
    let mut services = vec![spec(svc("ns", "a", 1), |s| s.ip_family_policy = Some("RequireDualStack".into()))];
    let state = step(&[pool("v4", 1, vec![cidr("10.0.0.0/24")])], &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"]);
    let c = cond(&state, &services[0]);
    assert_eq!((c.status, c.reason.as_str()), ("False", reason::NO_POOL));
    assert!(c.message.contains("IPv6"), "{}", c.message);
    let state =
        step(&[pool("v4", 1, vec![cidr("10.0.0.0/24")]), pool("v6", 2, vec![cidr("fd00::/64")])], &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0", "fd00::"]);
}

#[test]
fn shared_address_is_freed_when_its_last_sharer_goes() {
    let pools = [pool("p", 1, vec![cidr("10.0.0.0/24")])];
    let a = annotate(svc("ns", "a", 1), ANNOTATION_SHARING_KEY, "k");
    let b = annotate(ports(svc("ns", "b", 2), &[443]), ANNOTATION_SHARING_KEY, "k");
    let mut services = vec![a, b];
    let state = step(&pools, &mut services);
    assert_eq!(pool_cond(&state, "p", CONDITION_IPS_USED).message, "1", "a shared address counts once");
    services.remove(0);
    let state = step(&pools, &mut services);
    assert_eq!(ips(&state, &services[0]), ["10.0.0.0"], "the remaining sharer keeps it");
    services.clear();
    let state = step(&pools, &mut services);
    assert_eq!(pool_cond(&state, "p", CONDITION_IPS_AVAILABLE).message, "256");
    let mut next = vec![svc("ns", "c", 3)];
    let state = step(&pools, &mut next);
    assert_eq!(ips(&state, &next[0]), ["10.0.0.0"], "freed and reused");
}

#[test]
fn newer_overlapping_pool_conflicts_and_recovers() {
    let old = with_selector(pool("old", 1, vec![cidr("10.0.0.0/24")]), &[("want", "old")]);
    let new = with_selector(pool("new", 2, vec![cidr("10.1.0.0/24"), cidr("10.0.0.128/25")]), &[("want", "new")]);
    let mut services = vec![with_selector_label(svc("ns", "a", 1))];
    let pools = vec![new.clone(), old.clone()];
    let state = step(&pools, &mut services);
    let c = pool_cond(&state, "new", CONDITION_POOL_CONFLICT);
    assert_eq!((c.status, c.reason.as_str()), ("True", reason::CIDR_OVERLAP));
    assert_eq!(
        c.message,
        "Pool conflicts since range '10.0.0.128 - 10.0.0.255' overlaps range '10.0.0.0 - 10.0.0.255' from IP Pool 'old'"
    );
    assert_eq!(pool_cond(&state, "old", CONDITION_POOL_CONFLICT).status, "False");
    // The conflicting pool serves nothing, not even its non-overlapping block.
    assert_eq!(cond(&state, &services[0]).reason, reason::NO_POOL);

    let fixed = with_selector(pool("new", 2, vec![cidr("10.1.0.0/24")]), &[("want", "new")]);
    let state = step(&[old.clone(), fixed], &mut services);
    let c = pool_cond(&state, "new", CONDITION_POOL_CONFLICT);
    assert_eq!((c.status, c.reason.as_str(), c.message.as_str()), ("False", reason::RESOLVED, ""));
    assert_eq!(ips(&state, &services[0]), ["10.1.0.0"]);

    fn with_selector_label(s: Service) -> Service {
        label(s, "want", "new")
    }
}

#[test]
fn newer_overlapping_pool_conflicts_and_recovers_without_selectors() {
    let old = pool("old", 1, vec![cidr("10.0.0.0/31")]);
    let new = pool("new", 2, vec![cidr("10.0.0.0/30")]);
    let mut services = vec![svc("ns", "a", 1), svc("ns", "b", 2), svc("ns", "c", 3)];
    let state = step(&[old.clone(), new.clone()], &mut services);
    let got: Vec<_> = services.iter().map(|s| ips(&state, s)).collect();
    assert_eq!(got, [vec!["10.0.0.0"], vec!["10.0.0.1"], vec![]], "the conflicting pool adds nothing");
    // The old pool goes away: the newer one is no longer conflicting and serves, keeping .0 and .1.
    let state = step(&[new], &mut services);
    let got: Vec<_> = services.iter().map(|s| ips(&state, s)).collect();
    assert_eq!(got, [vec!["10.0.0.0"], vec!["10.0.0.1"], vec!["10.0.0.2"]]);
    assert_eq!(pool_cond(&state, "new", CONDITION_POOL_CONFLICT).reason, reason::RESOLVED);
}

#[test]
fn a_pool_overlapping_itself_conflicts() {
    let p = pool("self", 1, vec![cidr("10.0.0.0/24"), range("10.0.0.10", Some("10.0.1.5"))]);
    let state = desired_state(&[p], &[svc("ns", "a", 1)], &config());
    let c = pool_cond(&state, "self", CONDITION_POOL_CONFLICT);
    assert_eq!((c.status, c.reason.as_str()), ("True", reason::CIDR_OVERLAP));
    assert!(c.message.ends_with("from IP Pool 'self'"), "{}", c.message);
}

#[test]
fn pool_conditions_report_counts_and_invalid_blocks() {
    let p = first_last(
        pool(
            "p",
            1,
            vec![
                cidr("10.0.0.0/24"),
                range("10.0.1.9", Some("10.0.1.1")),
                LbIpBlock { cidr: Some("10.0.2.0/24".into()), start: Some("10.0.2.1".into()), stop: None },
                cidr("fd00::/64"),
            ],
        ),
        AllowFirstLastIps::No,
    );
    let state = desired_state(&[p], &[svc("ns", "a", 1)], &config());
    let counts: Vec<String> = [CONDITION_IPS_TOTAL, CONDITION_IPS_AVAILABLE, CONDITION_IPS_USED]
        .iter()
        .map(|t| pool_cond(&state, "p", t).message)
        .collect();
    // 254 + (2^64 - 2) total; one used.
    assert_eq!(counts, ["18446744073709551868", "18446744073709551867", "1"]);
    for t in [CONDITION_IPS_TOTAL, CONDITION_IPS_AVAILABLE, CONDITION_IPS_USED] {
        let c = pool_cond(&state, "p", t);
        assert_eq!((c.status, c.reason.as_str(), c.observed_generation), ("Unknown", reason::NO_REASON, Some(1)));
    }
    let v = pool_cond(&state, "p", CONDITION_BLOCKS_VALID);
    assert_eq!((v.status, v.reason.as_str()), ("False", reason::INVALID_BLOCK));
    assert_eq!(
        v.message,
        "spec.blocks[1].stop: stop '10.0.1.1' is before start '10.0.1.9'; \
         spec.blocks[2]: cidr and start/stop are mutually exclusive; use one or the other"
    );
}

#[test]
fn unparseable_requests_are_reported_and_otherwise_ignored() {
    let s = annotate(svc("ns", "a", 1), ANNOTATION_IPS, "10.0.0.4,not-an-ip");
    let state = desired_state(&[pool("p", 1, vec![cidr("10.0.0.0/24")])], std::slice::from_ref(&s), &config());
    assert_eq!(ips(&state, &s), ["10.0.0.4"]);
    let c = cond(&state, &s);
    assert_eq!(c.reason, reason::SATISFIED);
    assert!(c.message.contains("not-an-ip"), "{}", c.message);
}

#[test]
fn condition_transition_time_moves_only_when_status_changes() {
    let c = DesiredCondition::new(CONDITION_REQUEST_SATISFIED, "False", reason::NO_POOL, "x");
    let first = c.merge_into(&[], &time(10));
    let reworded = DesiredCondition { message: "y".into(), ..c.clone() }.merge_into(&first, &time(20));
    assert_eq!(reworded[0].last_transition_time, time(10));
    assert_eq!(reworded[0].message, "y");
    let flipped = DesiredCondition::new(CONDITION_REQUEST_SATISFIED, "True", reason::SATISFIED, "")
        .merge_into(&reworded, &time(30));
    assert_eq!((flipped.len(), flipped[0].last_transition_time.clone()), (1, time(30)));
}
