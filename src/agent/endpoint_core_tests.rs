use super::*;

pub(crate) fn request(ips: &[&str]) -> EndpointRequest {
    EndpointRequest {
        namespace: "default".into(),
        pod: "web-1".into(),
        ifname: "eth0".into(),
        host_ifname: "lxc0123456789ab".into(),
        host_ifindex: 11,
        host_mac: "aa:bb:cc:00:00:01".into(),
        mac: "02:00:00:00:00:05".into(),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        netns: "/var/run/netns/p1".into(),
    }
}

#[test]
fn ids_are_the_smallest_free_and_kept_on_reregistration() {
    let mut table = EndpointTable::default();
    // (container, ips, expected id or error)
    let steps: &[(&str, &[&str], Result<u16, &str>)] = &[
        ("a", &["10.0.0.5"], Ok(1)),
        ("b", &["10.0.0.6"], Ok(2)),
        ("a", &["10.0.0.5"], Ok(1)),
        ("c", &["10.0.0.6"], Err("10.0.0.6 is already used by endpoint 2 (container b)")),
        ("c", &["10.0.0.7"], Ok(3)),
    ];
    for (container, ips, want) in steps {
        let got = table.plan(container, request(ips), 300, vec![]);
        match (got, want) {
            (Ok(e), Ok(id)) => {
                assert_eq!(e.id, *id, "{container}");
                assert_eq!(e.state, STATE_READY);
                table.insert(e);
            }
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), *msg),
            (got, want) => panic!("{container}: got {got:?}, want {want:?}"),
        }
    }
    table.remove("b");
    assert_eq!(table.free_id(), Ok(2), "a freed ID is reused");
    assert!(table.holds("a", "eth0") && !table.holds("a", "eth1") && !table.holds("b", "eth0"));
    assert_eq!(table.holder_of("10.0.0.7".parse().unwrap()).map(|e| e.id), Some(3));
}

#[test]
fn the_id_space_runs_out_at_4095() {
    let mut table = EndpointTable::default();
    for id in 1..=MAX_ENDPOINT_ID {
        let mut e = table.plan(&format!("c{id}"), request(&[]), 5, vec![]).unwrap();
        e.id = id;
        table.insert(e);
    }
    assert_eq!(table.free_id(), Err(CoreError::NoFreeId));
}

#[test]
fn macs_parse_strictly() {
    let cases: &[(&str, Option<[u8; 6]>)] = &[
        ("aa:bb:cc:00:00:01", Some([0xaa, 0xbb, 0xcc, 0, 0, 1])),
        ("AA:BB:CC:00:00:01", Some([0xaa, 0xbb, 0xcc, 0, 0, 1])),
        ("aa:bb:cc:00:00", None),
        ("aa:bb:cc:00:00:001", None),
        ("aa:bb:cc:00:00:zz", None),
        ("", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_mac(text).ok(), *want, "{text}");
    }
}

#[test]
fn rows_carry_ifindex_macs_id_and_identity_for_each_family() {
    let table = EndpointTable::default();
    type Case = (&'static [&'static str], &'static [&'static str]);
    let cases: &[Case] = &[
        (&["10.0.0.5"], &["10.0.0.5"]),
        (&["10.0.0.5", "fd00::5"], &["10.0.0.5", "fd00::5"]),
        (&["fd00::5"], &["fd00::5"]),
    ];
    for (ips, want) in cases {
        let e = table.plan("a", request(ips), 4242, vec!["k8s:app=web".into()]).unwrap();
        let rows = endpoint_rows(&e).unwrap();
        let got: Vec<IpAddr> = rows.iter().map(|(ip, _)| *ip).collect();
        let want: Vec<IpAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(got, want, "{ips:?}");
        for (_, info) in rows {
            assert_eq!(
                (info.ifindex, info.lxc_id, info.sec_id, info.mac, info.node_mac, info.flags),
                (11, 1, 4242, [2, 0, 0, 0, 0, 5], [0xaa, 0xbb, 0xcc, 0, 0, 1], 0),
                "{ips:?}: every family's row is the same endpoint"
            );
        }
    }
    let e = table.plan("a", request(&["10.0.0.5"]), 4242, vec![]).unwrap();
    let mut bad = e.clone();
    bad.spec.mac = "nope".into();
    assert_eq!(endpoint_rows(&bad), Err(CoreError::BadMac("nope".into())));
}

#[test]
fn the_api_shape_is_camel_case_with_container_id() {
    let table = EndpointTable::default();
    let e = table.plan("a", request(&["10.0.0.5"]), 300, vec!["k8s:app=web".into()]).unwrap();
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "id": 1, "containerID": "a", "namespace": "default", "pod": "web-1", "ifname": "eth0",
            "hostIfname": "lxc0123456789ab", "hostIfindex": 11, "hostMac": "aa:bb:cc:00:00:01",
            "mac": "02:00:00:00:00:05", "ips": ["10.0.0.5"], "netns": "/var/run/netns/p1",
            "identity": 300, "identityLabels": ["k8s:app=web"], "state": "ready"
        })
    );
    assert_eq!(serde_json::from_value::<Endpoint>(json).unwrap(), e);
}
