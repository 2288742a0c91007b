use super::*;

fn net(addresses: &[(&str, &str)]) -> PodNetwork {
    PodNetwork {
        ifname: "eth0".into(),
        host_ifname: host_ifname("c1"),
        mtu: 1450,
        addresses: addresses.iter().map(|(a, g)| (a.parse().unwrap(), g.parse().unwrap())).collect(),
    }
}

#[test]
fn host_ifnames_are_lxc_and_twelve_hex_digits_stable_and_distinct() {
    let names: Vec<String> = (0..1000).map(|i| host_ifname(&format!("container-{i}"))).collect();
    for name in &names {
        assert_eq!(name.len(), 15, "{name}");
        assert!(name.starts_with("lxc") && name[3..].chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    }
    let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "no collisions among 1000 container IDs");
    assert_eq!(host_ifname("container-7"), names[7], "stable");
}

#[test]
fn pod_and_host_commands_per_family() {
    type Addresses<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Addresses, &[&str], &[&str])] = &[
        (
            &[("10.0.1.5", "10.0.1.1")],
            &[
                "link set lo up",
                "link set eth0 up",
                "addr add 10.0.1.5/32 dev eth0",
                "route add 10.0.1.1/32 dev eth0 scope link",
                "route add default via 10.0.1.1 dev eth0",
            ],
            &["route replace 10.0.1.5/32 dev LXC"],
        ),
        (
            &[("10.0.1.5", "10.0.1.1"), ("fd00::5", "fd00::1")],
            &[
                "link set lo up",
                "link set eth0 up",
                "addr add 10.0.1.5/32 dev eth0",
                "route add 10.0.1.1/32 dev eth0 scope link",
                "route add default via 10.0.1.1 dev eth0",
                "addr add fd00::5/128 dev eth0 nodad",
                "route add fd00::1/128 dev eth0 scope link",
                "route add default via fd00::1 dev eth0",
            ],
            &["route replace 10.0.1.5/32 dev LXC", "route replace fd00::5/128 dev LXC"],
        ),
    ];
    for (addresses, pod, host) in cases {
        let n = net(addresses);
        assert_eq!(pod_commands(&n), pod.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut want_host = vec![format!("link set {} up", n.host_ifname)];
        want_host.extend(host.iter().map(|s| s.replace("LXC", &n.host_ifname)));
        assert_eq!(host_commands(&n), want_host);
    }
}

#[test]
fn add_result_has_both_interfaces_and_ips_on_the_pod_interface() {
    let n = net(&[("10.0.1.5", "10.0.1.1")]);
    let host = LinkInfo { ifindex: 12, ifname: n.host_ifname.clone(), address: "aa:aa:aa:aa:aa:01".into(), mtu: 1450 };
    let pod = LinkInfo { ifindex: 2, ifname: "eth0".into(), address: "bb:bb:bb:bb:bb:02".into(), mtu: 1450 };
    let result = add_result(&n, &host, &pod, Path::new("/var/run/netns/p1"));
    let json = serde_json::to_value(result.for_version(super::super::types::SpecVersion(1, 1, 0))).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [
                {"name": n.host_ifname, "mac": "aa:aa:aa:aa:aa:01", "mtu": 1450},
                {"name": "eth0", "mac": "bb:bb:bb:bb:bb:02", "mtu": 1450, "sandbox": "/var/run/netns/p1"}
            ],
            "ips": [{"address": "10.0.1.5/32", "gateway": "10.0.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.1.1"}]
        })
    );
    result.validate().unwrap();
}

fn route(dst: &str, gw: Option<&str>, scope: Option<&str>) -> RouteInfo {
    RouteInfo { dst: dst.into(), gateway: gw.map(|g| g.parse().unwrap()), scope: scope.map(str::to_string) }
}

#[test]
fn verify_pod_reports_each_missing_piece() {
    let n = net(&[("10.0.1.5", "10.0.1.1")]);
    let host = LinkInfo { ifindex: 12, ifname: n.host_ifname.clone(), address: String::new(), mtu: 0 };
    let pod = LinkInfo { ifindex: 2, ifname: "eth0".into(), address: String::new(), mtu: 0 };
    let prev = add_result(&n, &host, &pod, Path::new("/x"));
    let addr = |a: &str, p: u8| AddrInfo { local: a.parse().unwrap(), prefixlen: p };
    let good_routes = vec![route("default", Some("10.0.1.1"), None), route("10.0.1.1", None, Some("link"))];
    let cases: Vec<(Vec<AddrInfo>, Vec<RouteInfo>, Option<&str>)> = vec![
        (vec![addr("10.0.1.5", 32)], good_routes.clone(), None),
        (vec![addr("10.0.1.5", 24)], good_routes.clone(), Some("address 10.0.1.5/32")),
        (vec![], good_routes.clone(), Some("address 10.0.1.5/32")),
        (vec![addr("10.0.1.5", 32)], vec![good_routes[1].clone()], Some("default route via 10.0.1.1")),
        (vec![addr("10.0.1.5", 32)], vec![good_routes[0].clone()], Some("route 10.0.1.1/32 scope link")),
        (
            vec![addr("10.0.1.5", 32)],
            vec![route("default", Some("10.0.1.9"), None), good_routes[1].clone()],
            Some("default route via 10.0.1.1"),
        ),
    ];
    for (addrs, routes, want) in cases {
        match (verify_pod(&prev, &addrs, &routes), want) {
            (Ok(()), None) => {}
            (Err(e), Some(w)) => assert!(e.contains(w), "{e} should mention {w}"),
            (got, want) => panic!("got {got:?}, want {want:?} for {addrs:?} {routes:?}"),
        }
    }
}

#[test]
fn dual_stack_add_result_lists_both_families_on_the_pod_interface() {
    let n = net(&[("10.0.1.5", "10.0.1.1"), ("fd00:10:244:1::5", "fd00:10:244:1::1")]);
    let host = LinkInfo { ifindex: 12, ifname: n.host_ifname.clone(), address: "aa:aa:aa:aa:aa:01".into(), mtu: 1500 };
    let pod = LinkInfo { ifindex: 2, ifname: "eth0".into(), address: "bb:bb:bb:bb:bb:02".into(), mtu: 1500 };
    let result = add_result(&n, &host, &pod, Path::new("/var/run/netns/p1"));
    let json = serde_json::to_value(result.for_version(super::super::types::SpecVersion(1, 1, 0))).unwrap();
    assert_eq!(
        (&json["ips"], &json["routes"]),
        (
            &serde_json::json!([
                {"address": "10.0.1.5/32", "gateway": "10.0.1.1", "interface": 1},
                {"address": "fd00:10:244:1::5/128", "gateway": "fd00:10:244:1::1", "interface": 1}
            ]),
            &serde_json::json!([{"dst": "0.0.0.0/0", "gw": "10.0.1.1"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}])
        )
    );
    result.validate().unwrap();
}
