//! The pure policy state: which endpoints a change recompiles, and what rows come out.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;

fn identity(id: u32, ns: &str, app: &str) -> CiliumIdentity {
    let labels = BTreeMap::from([
        ("k8s:app".to_string(), app.to_string()),
        ("k8s:io.kubernetes.pod.namespace".to_string(), ns.to_string()),
    ]);
    CiliumIdentity::new(id, labels)
}

fn endpoint(id: u16, identity: u32, app: &str) -> (u16, LocalEndpoint) {
    let labels = BTreeMap::from([("app".to_string(), app.to_string())]);
    (id, LocalEndpoint { id, identity, labels, namespace: "default".into(), pod: format!("{app}-{id}") })
}

fn cnp(name: &str, spec: serde_json::Value) -> CiliumNetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "default", "name": name}, "spec": spec})).unwrap()
}

/// nginx accepts app=client on TCP 80; db accepts app=api on every port.
fn policies() -> Vec<CiliumNetworkPolicy> {
    vec![
        cnp(
            "nginx",
            json!({
                "endpointSelector": {"matchLabels": {"app": "nginx"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
            }),
        ),
        cnp(
            "db",
            json!({
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}]}],
            }),
        ),
    ]
}

struct World {
    cnps: Vec<CiliumNetworkPolicy>,
    identities: Vec<CiliumIdentity>,
    endpoints: BTreeMap<u16, LocalEndpoint>,
}

impl World {
    fn pass(&self, state: &mut PolicyState) -> PassOutput {
        state.pass(&PolicyInputs {
            cnps: &self.cnps,
            ccnps: &[],
            knps: &[],
            namespaces: &[],
            identities: &self.identities,
            endpoints: &self.endpoints,
        })
    }
}

fn ingress_peers(out: &PassOutput, ep: u32) -> Vec<u32> {
    out.rows.keys().filter(|k| k.data.endpoint_id == ep).map(|k| k.data.identity).collect()
}

#[test]
fn identity_churn_recompiles_only_endpoints_whose_selectors_changed() {
    let mut world = World {
        cnps: policies(),
        identities: vec![identity(1000, "default", "nginx"), identity(1001, "default", "client")],
        endpoints: BTreeMap::from([endpoint(1, 1000, "nginx"), endpoint(2, 2000, "db")]),
    };
    let mut state = PolicyState::new(CompilerConfig::default(), ParseContext::default());
    let first = world.pass(&mut state);
    assert_eq!(first.recompiled, [1, 2].into());
    assert_eq!(ingress_peers(&first, 1), vec![1, 1001], "host + client");
    assert_eq!(ingress_peers(&first, 2), vec![1], "host only: no api identity yet");

    // Nothing changed: nothing is recompiled, the rows stay.
    let same = world.pass(&mut state);
    assert!(same.recompiled.is_empty());
    assert_eq!(same.rows, first.rows);

    // A new api identity changes db's selection only.
    world.identities.push(identity(1002, "default", "api"));
    let api = world.pass(&mut state);
    assert_eq!(api.recompiled, [2].into());
    assert_eq!(ingress_peers(&api, 2), vec![1, 1002]);
    assert_eq!(ingress_peers(&api, 1), vec![1, 1001], "nginx's rows reused");

    // An identity nobody selects (another namespace's client) recompiles nothing.
    world.identities.push(identity(1003, "other", "client"));
    assert!(world.pass(&mut state).recompiled.is_empty());

    // A new endpoint is compiled on its own; a policy change recompiles everyone.
    world.endpoints.extend([endpoint(3, 1001, "client")]);
    assert_eq!(world.pass(&mut state).recompiled, [3].into());
    world.cnps.pop();
    let fewer = world.pass(&mut state);
    assert_eq!(fewer.recompiled, [1, 2, 3].into());
    assert!(ingress_peers(&fewer, 2).is_empty(), "db no longer enforces, so it has no rows");
    assert_eq!(fewer.enforcement[&PolicyEndpointKey { endpoint_id: 2 }].flags, 0);

    // A removed endpoint's rows disappear.
    world.endpoints.remove(&1);
    let gone = world.pass(&mut state);
    assert!(ingress_peers(&gone, 1).is_empty());
    assert!(!gone.enforcement.contains_key(&PolicyEndpointKey { endpoint_id: 1 }));
}

#[test]
fn a_local_endpoint_without_a_cilium_identity_uses_its_own_labels() {
    // The client's CiliumIdentity has not arrived: its labels come from the local endpoint.
    let world = World {
        cnps: policies(),
        identities: vec![],
        endpoints: BTreeMap::from([endpoint(1, 1000, "nginx"), endpoint(2, 1001, "client")]),
    };
    let mut state = PolicyState::new(CompilerConfig::default(), ParseContext::default());
    let out = world.pass(&mut state);
    assert_eq!(ingress_peers(&out, 1), vec![1, 1001]);
}

#[test]
fn enforcement_modes_and_validity() {
    let mut world = World {
        cnps: policies(),
        identities: vec![],
        endpoints: BTreeMap::from([endpoint(1, 1000, "nginx"), endpoint(2, 1005, "other")]),
    };
    let flags = |out: &PassOutput| -> Vec<u32> { out.enforcement.values().map(|c| c.flags).collect() };
    let mode = |m| CompilerConfig { mode: m, ..Default::default() };
    let mut never = PolicyState::new(mode(crate::policy::EnforcementMode::Never), ParseContext::default());
    let out = world.pass(&mut never);
    assert_eq!((flags(&out), out.rows.len()), (vec![0, 0], 0));
    let mut always = PolicyState::new(mode(crate::policy::EnforcementMode::Always), ParseContext::default());
    assert_eq!(flags(&world.pass(&mut always)), vec![3, 3]);

    // An L7 rule is accepted, enforced at L4, and reported; a bad CIDR is rejected with its path.
    world.cnps.push(cnp(
        "l7",
        json!({
            "endpointSelector": {"matchLabels": {"app": "nginx"}},
            "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                      "rules": {"http": [{"method": "GET"}]}}]}],
        }),
    ));
    world.cnps.push(cnp("bad", json!({"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.0/33"]}]})));
    let mut state = PolicyState::new(CompilerConfig::default(), ParseContext::default());
    let out = world.pass(&mut state);
    let v = |name: &str| out.validity[&PolicySource::Cnp { namespace: "default".into(), name: name.into() }].clone();
    assert_eq!(v("nginx"), Validity { valid: true, message: VALID_MESSAGE.into() });
    assert!(v("l7").valid && v("l7").message.contains("not enforced"), "{:?}", v("l7"));
    assert!(!v("bad").valid && v("bad").message.contains("10.0.0.0/33"), "{:?}", v("bad"));
    assert_eq!(flags(&out), vec![1, 0], "the rejected egress policy enforces nothing");
}

#[test]
fn cidr_prefixes_reach_the_ipcache_and_endpoints_report_their_enforcement() {
    let mut world = World {
        cnps: vec![cnp(
            "egress",
            json!({
                "endpointSelector": {"matchLabels": {"app": "client"}},
                "egress": [{"toCIDRSet": [{"cidr": "172.18.0.0/16", "except": ["172.18.255.254/32"]}]},
                           {"toCIDR": ["192.0.2.7/32"]}],
            }),
        )],
        identities: vec![],
        endpoints: BTreeMap::from([endpoint(1, 1000, "client"), endpoint(2, 1001, "nginx")]),
    };
    let mut state = PolicyState::new(CompilerConfig::default(), ParseContext::default());
    let out = world.pass(&mut state);
    let rows: BTreeMap<String, u32> = out
        .ipcache
        .iter()
        .map(|(k, v)| {
            let ip = std::net::Ipv4Addr::from(u32::from_be(k.data.ip4));
            (format!("{ip}/{}", k.prefixlen - 32), v.sec_identity)
        })
        .collect();
    // The allowed prefixes get node-local identities; the except is carved out of the /16, so the
    // excepted address resolves to no CIDR identity (world) while its neighbours do.
    let covers = |addr: &str| {
        let addr: std::net::Ipv4Addr = addr.parse().unwrap();
        rows.keys().any(|p| p.parse::<ipnet::Ipv4Net>().unwrap().contains(&addr))
    };
    assert!(covers("172.18.0.1") && covers("172.18.255.253") && covers("172.18.255.255"), "{rows:?}");
    assert!(!covers("172.18.255.254"), "{rows:?}");
    assert!(rows.contains_key("192.0.2.7/32"), "{rows:?}");
    assert!(rows.values().all(|id| NumericIdentity(*id).is_local()), "{rows:?}");
    assert!(out.ipcache.values().all(|v| v.tunnel_endpoint == 0));
    let status = |out: &PassOutput, pod: &str| out.endpoint_status[&("default".to_string(), pod.to_string())];
    assert_eq!(status(&out, "client-1"), Enforcing { ingress: false, egress: true });
    assert_eq!(status(&out, "nginx-2"), Enforcing { ingress: false, egress: false });

    // The policy gone, its prefixes leave the ipcache and the client stops enforcing.
    world.cnps.clear();
    let out = world.pass(&mut state);
    assert!(out.ipcache.is_empty());
    assert_eq!(status(&out, "client-1"), Enforcing::default());
}
