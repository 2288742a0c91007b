//! Layer 4: `from_container` on a real veth between two namespaces, moved by real packets —
//! with TCX, with the clsact fallback, and across an interface being recreated.

mod integration;

use std::{net::SocketAddr, process::Command};

use beeline::datapath::{
    attach::{tcx_programs, AttachAction, Mechanism},
    loader::programs::FROM_CONTAINER,
    AttachMode,
};
use integration::{ifindex_in, require_root, traffic, BpffsDir, Datapath, Direction, PodOnNode, Topology};

const DATAGRAMS: u32 = 20;
const PAYLOAD: usize = 100;
/// Ethernet + IPv4 + UDP headers around each payload.
const FRAME_OVERHEAD: u64 = 14 + 20 + 8;

fn attach(dp: &mut Datapath, pair: &PodOnNode, mode: AttachMode) -> beeline::datapath::Attachment {
    pair.node
        .run(|| dp.attach(FROM_CONTAINER, &pair.host_if, Direction::Ingress, mode))
        .expect("enter node namespace")
        .expect("attach from_container")
}

/// Sends `DATAGRAMS` UDP datagrams pod → node and checks that all arrived.
fn send_udp(pair: &PodOnNode, port: u16) {
    let server = SocketAddr::new(pair.node_addr, port);
    let received = traffic::udp_exchange(&pair.pod, pair.pod_addr, &pair.node, server, DATAGRAMS, PAYLOAD).unwrap();
    assert_eq!(received, DATAGRAMS, "UDP datagrams lost between the namespaces");
}

#[test]
fn udp_from_the_pod_moves_the_counter_of_its_host_veth() {
    require_root();
    let mut topo = Topology::new("netns");
    let pair = topo.pod_on_node("10.201.0").unwrap();
    let bpffs = BpffsDir::new("netns");
    let mut dp = Datapath::load(&bpffs.pin_dir()).unwrap();
    integration::register_pod_endpoint(&topo, &bpffs.pin_dir(), &pair);
    let attachment = attach(&mut dp, &pair, AttachMode::Auto);
    assert_eq!((attachment.mechanism, attachment.action), (Mechanism::Tcx, AttachAction::Created));
    assert!(attachment.pin.as_ref().unwrap().exists(), "link pin missing");
    let attached = pair.node.run(|| tcx_programs(&pair.host_if, Direction::Ingress)).unwrap().unwrap();
    assert_eq!(attached.iter().map(|p| p.id).collect::<Vec<_>>(), vec![attachment.program_id]);

    let host_ifindex = ifindex_in(&pair.node, &pair.host_if);
    let before = dp.endpoint_stats().unwrap().get(&host_ifindex).copied().unwrap_or_default();
    send_udp(&pair, 41000);
    let stats = dp.endpoint_stats().unwrap();
    let after = stats[&host_ifindex];
    // ARP and IPv6 neighbour discovery may add a few packets of their own; never fewer.
    assert!(after.packets >= before.packets + u64::from(DATAGRAMS), "{before:?} -> {after:?}");
    assert!(after.bytes >= before.bytes + u64::from(DATAGRAMS) * (PAYLOAD as u64 + FRAME_OVERHEAD));
    assert_eq!(stats.keys().copied().collect::<Vec<_>>(), vec![host_ifindex], "only the host veth is attached");
}

#[test]
fn clsact_fallback_counts_and_is_replaced_in_place_then_uninstalled() {
    require_root();
    let mut topo = Topology::new("clsact");
    let pair = topo.pod_on_node("10.202.0").unwrap();
    let bpffs = BpffsDir::new("clsact");
    let host_ifindex = ifindex_in(&pair.node, &pair.host_if);

    let mut first = Datapath::load(&bpffs.pin_dir()).unwrap();
    integration::register_pod_endpoint(&topo, &bpffs.pin_dir(), &pair);
    let a = attach(&mut first, &pair, AttachMode::Netlink);
    assert_eq!((a.mechanism, a.action, a.link_id), (Mechanism::Netlink, AttachAction::Created, None));
    drop(first); // the filter, not our process, keeps the program attached
    send_udp(&pair, 41001);
    let counted = integration::pinned_packets(&bpffs.pin_dir(), host_ifindex);
    assert!(counted >= u64::from(DATAGRAMS), "clsact program did not count: {counted}");

    let mut second = Datapath::load(&bpffs.pin_dir()).unwrap();
    let b = attach(&mut second, &pair, AttachMode::Netlink);
    assert_eq!(b.action, AttachAction::Replaced);
    assert_eq!(filters(&pair), 1, "replacement must not add a second filter:\n{}", filter_text(&pair));
    assert!(filter_text(&pair).contains(&format!("id {}", b.program_id)), "{}", filter_text(&pair));
    send_udp(&pair, 41002);
    assert!(integration::pinned_packets(&bpffs.pin_dir(), host_ifindex) >= counted + u64::from(DATAGRAMS));

    drop(second);
    let report = pair.node.run(|| beeline::datapath::uninstall(&bpffs.pin_dir())).unwrap().unwrap();
    assert_eq!(report.netlink_filters_removed, vec![format!("{}/ingress/{FROM_CONTAINER}", pair.host_if)]);
    assert_eq!(filters(&pair), 0, "{}", filter_text(&pair));
    assert!(!bpffs.pin_dir().exists());
}

fn filter_text(pair: &PodOnNode) -> String {
    let out = Command::new("tc")
        .args(["-n", pair.node.name(), "filter", "show", "dev", &pair.host_if, "ingress"])
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn filters(pair: &PodOnNode) -> usize {
    filter_text(pair).lines().filter(|l| l.contains(FROM_CONTAINER)).count()
}

#[test]
fn a_defunct_link_is_replaced_when_the_interface_is_recreated() {
    require_root();
    let mut topo = Topology::new("recreate");
    let pair = topo.pod_on_node("10.203.0").unwrap();
    let bpffs = BpffsDir::new("recreate");
    let mut dp = Datapath::load(&bpffs.pin_dir()).unwrap();
    integration::register_pod_endpoint(&topo, &bpffs.pin_dir(), &pair);
    let first = attach(&mut dp, &pair, AttachMode::Tcx);

    // The pod's veth goes away (pod deleted) and a new pod gets the same host-side name.
    beeline::datapath::netns::run_ip(&["-n", pair.node.name(), "link", "del", &pair.host_if]).unwrap();
    topo.veth((&pair.node, &pair.host_if), (&pair.pod, &pair.pod_if)).unwrap();
    topo.address(&pair.node, &pair.host_if, "10.203.0.1/24").unwrap();
    topo.address(&pair.pod, &pair.pod_if, "10.203.0.2/24").unwrap();

    // The new pod's endpoint row names the new veth.
    integration::register_pod_endpoint(&topo, &bpffs.pin_dir(), &pair);
    let second = attach(&mut dp, &pair, AttachMode::Tcx);
    assert_eq!(second.action, AttachAction::RecreatedStale);
    assert_ne!(second.link_id, first.link_id, "a defunct link cannot be reused");
    let host_ifindex = ifindex_in(&pair.node, &pair.host_if);
    send_udp(&pair, 41003);
    assert!(dp.endpoint_stats().unwrap()[&host_ifindex].packets >= u64::from(DATAGRAMS));
}
