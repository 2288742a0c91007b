use std::time::Duration;

use super::fake::FakeDatapath;
use super::*;
use crate::agent::endpoint_core::EndpointRequest;
use crate::agent::ipam_expiry::ManualClock;
use crate::controllers::agent::ipam_state::NodeIpam;
use crate::ipam::Family;

struct Setup {
    dir: tempfile::TempDir,
    ipam: Arc<NodeIpam>,
    datapath: Arc<FakeDatapath>,
    clock: Arc<ManualClock>,
    manager: EndpointManager,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], dir.path()));
    ipam.set_cidrs(&["10.0.9.0/24".parse().unwrap()]).unwrap();
    let datapath = Arc::new(FakeDatapath::default());
    let clock = Arc::new(ManualClock::default());
    let manager = EndpointManager::new(dir.path(), datapath.clone(), ipam.clone(), clock.clone());
    Setup { dir, ipam, datapath, clock, manager }
}

fn allocate(s: &Setup, container: &str) -> IpAddr {
    s.ipam.allocate(&Owner::endpoint("default", container, container, "eth0"), None).unwrap()[0].ip
}

fn request(container: &str, ip: IpAddr) -> EndpointRequest {
    EndpointRequest {
        namespace: "default".into(),
        pod: container.into(),
        ifname: "eth0".into(),
        host_ifname: crate::cni::network::host_ifname(container),
        host_ifindex: 20,
        host_mac: "aa:00:00:00:00:01".into(),
        mac: "02:00:00:00:00:02".into(),
        ips: vec![ip],
        netns: format!("/var/run/netns/{container}"),
    }
}

#[test]
fn register_attaches_writes_the_row_and_persists_remove_undoes_and_releases() {
    let s = setup();
    let ip = allocate(&s, "c1");
    let e = s.manager.register("c1", request("c1", ip), 300, vec!["k8s:app=web".into()]).unwrap();
    assert_eq!(e.id, 1);
    let host = crate::cni::network::host_ifname("c1");
    assert!(s.datapath.attached.lock().unwrap().contains(&host));
    let row = s.datapath.rows.lock().unwrap()[&ip];
    assert_eq!((row.ifindex, row.lxc_id, row.sec_id), (20, 1, 300));
    let saved: EndpointTable = serde_json::from_slice(&std::fs::read(s.dir.path().join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(saved.endpoints["c1"], e);
    assert!(s.manager.holds("c1", "eth0"));

    let outcome = s.manager.remove("c1").unwrap();
    assert_eq!(outcome.removed, Some(e));
    assert_eq!(outcome.released, vec![ip]);
    assert!(s.datapath.attached.lock().unwrap().is_empty() && s.datapath.rows.lock().unwrap().is_empty());
    assert!(s.ipam.attachment_ips("c1", "eth0").is_empty());
    let again = s.manager.remove("c1").unwrap();
    assert_eq!((again.removed, again.released), (None, vec![]), "remove is idempotent");
}

#[test]
fn registration_needs_the_addresses_allocated_to_the_attachment() {
    let s = setup();
    let ip = allocate(&s, "c1");
    let cases: Vec<(&str, EndpointRequest, &str)> = vec![
        ("c2", request("c2", ip), "is not allocated to container c2"),
        ("c1", EndpointRequest { ips: vec![], ..request("c1", ip) }, "ips are required"),
        (
            "c1",
            EndpointRequest { ifname: "eth1".into(), ..request("c1", ip) },
            "is not allocated to container c1 (eth1)",
        ),
        ("c1", EndpointRequest { mac: "zz".into(), ..request("c1", ip) }, "invalid MAC"),
    ];
    for (container, req, want) in cases {
        let err = s.manager.register(container, req, 5, vec![]).unwrap_err().to_string();
        assert!(err.contains(want), "{err} should contain {want}");
    }
    assert!(s.manager.list().is_empty() && s.datapath.rows.lock().unwrap().is_empty());
    *s.datapath.fail_attach.lock().unwrap() = Some("no such device".into());
    let err = s.manager.register("c1", request("c1", ip), 5, vec![]).unwrap_err().to_string();
    assert!(err.contains("no such device") && s.manager.list().is_empty(), "{err}");
}

#[test]
fn restore_keeps_endpoints_whose_veth_exists_and_drops_the_others() {
    let s = setup();
    let (a, b) = (allocate(&s, "a"), allocate(&s, "b"));
    let ea = s.manager.register("a", request("a", a), 300, vec![]).unwrap();
    let mut rb = request("b", b);
    rb.host_ifindex = 21;
    s.manager.register("b", rb, 301, vec![]).unwrap();

    // A new agent: empty kernel state, only a's veth still there (with the same ifindex).
    let datapath = Arc::new(FakeDatapath::default());
    *datapath.interfaces.lock().unwrap() = Some([(crate::cni::network::host_ifname("a"), 20)].into());
    let manager = EndpointManager::new(s.dir.path(), datapath.clone(), s.ipam.clone(), s.clock.clone());
    let warnings = manager.restore();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("dropping endpoint 2 (b)"), "{warnings:?}");
    assert_eq!(manager.list(), vec![ea]);
    assert_eq!(datapath.rows.lock().unwrap().keys().copied().collect::<Vec<_>>(), vec![a]);
    assert!(datapath.attached.lock().unwrap().contains(&crate::cni::network::host_ifname("a")));
    // The next endpoint gets the freed ID 2.
    let c = allocate(&s, "c");
    assert_eq!(manager.register("c", request("c", c), 5, vec![]).unwrap().id, 2);
}

#[test]
fn local_endpoints_are_published_after_restore_and_on_every_register_and_remove() {
    let s = setup();
    let ip = allocate(&s, "a");
    s.manager.register("a", request("a", ip), 300, vec!["k8s:app=web".into()]).unwrap();

    // A new agent: nothing published before restore; a subscriber joining after restore still
    // sees the restored set as a change (that is what tells the policy controller it is known).
    let datapath = Arc::new(FakeDatapath::default());
    *datapath.interfaces.lock().unwrap() = Some([(crate::cni::network::host_ifname("a"), 20)].into());
    let manager = EndpointManager::new(s.dir.path(), datapath, s.ipam.clone(), s.clock.clone());
    assert!(!manager.subscribe().has_changed().unwrap(), "nothing known before restore");
    assert!(manager.restore().is_empty());
    let mut rx = manager.subscribe();
    assert!(rx.has_changed().unwrap());
    let want = LocalEndpoint {
        id: 1,
        identity: 300,
        labels: [("app".to_string(), "web".to_string())].into(),
        namespace: "default".into(),
        pod: "a".into(),
    };
    assert_eq!(rx.borrow_and_update().values().cloned().collect::<Vec<_>>(), vec![want]);

    let b = allocate(&s, "b");
    let mut rb = request("b", b);
    rb.host_ifindex = 21;
    manager.register("b", rb, 301, vec![]).unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    manager.remove("a").unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().keys().copied().collect::<Vec<_>>(), vec![2]);
    // A refused registration publishes nothing.
    assert!(manager.register("c", request("c", b), 5, vec![]).is_err());
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn allocations_without_an_endpoint_expire_after_ten_minutes_registered_ones_never() {
    let s = setup();
    let registered = allocate(&s, "reg");
    s.manager.register("reg", request("reg", registered), 5, vec![]).unwrap();
    let orphan = allocate(&s, "orphan");
    assert!(s.manager.expire_pending().is_empty(), "first sight starts the timer");
    s.clock.advance(Duration::from_secs(599));
    assert!(s.manager.expire_pending().is_empty());
    let late = allocate(&s, "late");
    s.clock.advance(Duration::from_secs(1));
    let expired = s.manager.expire_pending();
    assert_eq!(expired, vec![(("orphan".to_string(), "eth0".to_string()), vec![orphan])]);
    assert!(s.ipam.attachment_ips("orphan", "eth0").is_empty());
    assert_eq!(s.ipam.attachment_ips("reg", "eth0"), vec![registered]);
    assert_eq!(s.ipam.attachment_ips("late", "eth0"), vec![late], "late's timer started later");
    s.clock.advance(Duration::from_secs(3600));
    let expired = s.manager.expire_pending();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(s.ipam.attachment_ips("reg", "eth0"), vec![registered], "a registered endpoint's address stays");
    // An expired allocation cannot be registered any more.
    let err = s.manager.register("orphan", request("orphan", orphan), 5, vec![]).unwrap_err();
    assert!(matches!(err, EndpointError::NotAllocated { .. }), "{err}");
}
