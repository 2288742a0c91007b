//! A datapath event enriched into a flow, Hubble's shape (`flow.Flow` of Hubble's API, the fields
//! `hubble observe -o json` shows that beeline can fill): who talked to whom (pod, namespace,
//! identity, labels), where it was seen, what happened, on which node.
//!
//! Enrichment is a pure function over a [`Snapshot`] of what the agent knows (endpoints with
//! identities from CiliumEndpoints, Services), so it is table-tested without a cluster.

use std::{collections::BTreeMap, net::Ipv4Addr};

use beeline_common::{
    datapath::drop_reason,
    events::{point, policy_match},
    ipcache::{IDENTITY_UNKNOWN, IDENTITY_WORLD},
};

use super::decode::{DatapathEvent, Endpoint, EventKind};

/// Cilium's reserved identity of the local host.
const IDENTITY_HOST: u32 = 1;

/// A pod (or any address with an identity) as the snapshot knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownEndpoint {
    pub namespace: String,
    pub pod_name: String,
    pub identity: u32,
    /// `k8s:app=nginx`, … (the identity's labels, as Cilium lists them).
    pub labels: Vec<String>,
    pub node_name: String,
}

/// A service frontend: (address, port, protocol) → namespace/name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownService {
    pub namespace: String,
    pub name: String,
}

/// What enrichment looks things up in; refreshed by the agent.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// This node's name (the flow's `node_name`).
    pub node_name: String,
    pub endpoints: BTreeMap<Ipv4Addr, KnownEndpoint>,
    /// Keyed by (frontend address, port, IP protocol).
    pub services: BTreeMap<(Ipv4Addr, u16, u8), KnownService>,
    /// Node addresses (identity `host` on their own node, `remote-node` elsewhere; shown as such).
    pub node_ips: BTreeMap<Ipv4Addr, String>,
    /// Monotonic → wall clock: add to `ktime_ns` to get Unix nanoseconds.
    pub boot_offset_ns: i128,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowEndpoint {
    #[serde(rename = "ID", default, skip_serializing_if = "is_zero")]
    pub id: u32,
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowIp {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
}

impl Default for FlowIp {
    fn default() -> Self {
        FlowIp { source: Ipv4Addr::UNSPECIFIED, destination: Ipv4Addr::UNSPECIFIED }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowL4 {
    /// `TCP`, `UDP`, `ICMPv4`, or the protocol number.
    pub protocol: String,
    #[serde(default)]
    pub source_port: u16,
    #[serde(default)]
    pub destination_port: u16,
    /// TCP flags set, in Hubble's order (`SYN`, `ACK`, `FIN`, `RST`, `PSH`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowService {
    pub namespace: String,
    pub name: String,
}

/// One flow. Field names follow Hubble's JSON (`hubble observe -o json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    /// Unix nanoseconds (Hubble prints RFC 3339; the CLI formats).
    pub time_ns: i128,
    /// `FORWARDED` or `DROPPED`.
    pub verdict: String,
    /// Cilium's drop reason number, 0 unless dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drop_reason: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub drop_reason_desc: String,
    #[serde(rename = "IP")]
    pub ip: FlowIp,
    pub l4: FlowL4,
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    /// `L3_L4` for every datapath event (`L7` would be the proxy's).
    #[serde(rename = "Type")]
    pub flow_type: String,
    pub node_name: String,
    /// `trace`, `drop` or `policy-verdict` (what `-t` selects).
    pub event_type: String,
    /// Trace: `to-endpoint`, …; policy verdict: `policy-verdict:L3-L4`; drop: the reason text.
    pub observation_point: String,
    /// `INGRESS` / `EGRESS` for policy verdicts, empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic_direction: String,
    /// Policy verdict only: `ALLOWED` / `DENIED`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<FlowService>,
    /// The frontend the client addressed, for service translations (`10.96.0.10:80`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub original_destination: String,
    #[serde(default)]
    pub ifindex: u32,
}

impl Flow {
    pub fn is_dropped(&self) -> bool {
        self.verdict == "DROPPED"
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "ICMPv4".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        p => p.to_string(),
    }
}

/// Set TCP flags in Hubble's order of its `TCPFlags` message.
pub fn tcp_flag_names(flags: u8) -> Vec<String> {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| n.to_string()).collect()
}

/// An endpoint of the flow: the snapshot's pod at that address, else the identity the datapath
/// reported (a node address shows as `host`/`remote-node`, anything unknown as `world`).
fn endpoint(snap: &Snapshot, addr: Ipv4Addr, reported: u32) -> FlowEndpoint {
    if let Some(known) = snap.endpoints.get(&addr) {
        return FlowEndpoint {
            id: 0,
            identity: if reported != 0 { reported } else { known.identity },
            namespace: known.namespace.clone(),
            labels: known.labels.clone(),
            pod_name: known.pod_name.clone(),
        };
    }
    let (identity, label) = match (reported, snap.node_ips.get(&addr)) {
        (r, _) if r != 0 && r != IDENTITY_UNKNOWN => (r, None),
        (_, Some(node)) if *node == snap.node_name => (IDENTITY_HOST, Some("reserved:host")),
        (_, Some(_)) => (6, Some("reserved:remote-node")),
        _ if addr.is_unspecified() => (0, None),
        _ => (IDENTITY_WORLD, Some("reserved:world")),
    };
    FlowEndpoint { identity, labels: label.map(|l| vec![l.to_string()]).unwrap_or_default(), ..Default::default() }
}

/// The event as a flow, enriched from `snap`.
pub fn enrich(ev: &DatapathEvent, snap: &Snapshot) -> Flow {
    let (event_type, observation_point, verdict, direction, policy) = match ev.kind {
        EventKind::Trace { point } => ("trace", point::name(point).to_string(), "FORWARDED", "", ""),
        EventKind::Drop { reason } => ("drop", drop_reason::name(u32::from(reason)).to_string(), "DROPPED", "", ""),
        EventKind::PolicyVerdict { egress, allowed, match_type } => (
            "policy-verdict",
            format!("policy-verdict:{}", policy_match::name(match_type)),
            if allowed { "FORWARDED" } else { "DROPPED" },
            if egress { "EGRESS" } else { "INGRESS" },
            if allowed { "ALLOWED" } else { "DENIED" },
        ),
    };
    let drop_code = match ev.kind {
        EventKind::Drop { reason } => u32::from(reason),
        _ => 0,
    };
    // The service: the translation's frontend, else the destination when it is itself a frontend.
    let frontend = ev.orig_dst.unwrap_or(ev.dst);
    let service = snap
        .services
        .get(&(frontend.ip, frontend.port, ev.protocol))
        .map(|s| FlowService { namespace: s.namespace.clone(), name: s.name.clone() });
    Flow {
        time_ns: i128::from(ev.ktime_ns) + snap.boot_offset_ns,
        verdict: verdict.into(),
        drop_reason: drop_code,
        drop_reason_desc: if drop_code != 0 { drop_reason::name(drop_code).into() } else { String::new() },
        ip: FlowIp { source: ev.src.ip, destination: ev.dst.ip },
        l4: FlowL4 {
            protocol: protocol_name(ev.protocol),
            source_port: ev.src.port,
            destination_port: ev.dst.port,
            flags: if ev.protocol == 6 { tcp_flag_names(ev.tcp_flags) } else { vec![] },
        },
        source: endpoint(snap, ev.src.ip, ev.src_identity),
        destination: endpoint(snap, ev.dst.ip, ev.dst_identity),
        flow_type: "L3_L4".into(),
        node_name: snap.node_name.clone(),
        event_type: event_type.into(),
        observation_point,
        traffic_direction: direction.into(),
        policy_verdict: policy.into(),
        destination_service: service,
        original_destination: ev.orig_dst.map(|Endpoint { ip, port }| format!("{ip}:{port}")).unwrap_or_default(),
        ifindex: ev.ifindex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot { node_name: "node-a".into(), boot_offset_ns: 1_000, ..Default::default() };
        let pod = |ns: &str, name: &str, identity, app: &str| KnownEndpoint {
            namespace: ns.into(),
            pod_name: name.into(),
            identity,
            labels: vec![format!("k8s:app={app}")],
            node_name: "node-a".into(),
        };
        s.endpoints.insert(ip("10.0.1.2"), pod("default", "client", 51234, "client"));
        s.endpoints.insert(ip("10.0.2.3"), pod("web", "nginx-1", 40000, "nginx"));
        s.services.insert((ip("10.96.0.10"), 80, 6), KnownService { namespace: "web".into(), name: "nginx".into() });
        s.node_ips.insert(ip("192.168.0.1"), "node-a".into());
        s.node_ips.insert(ip("192.168.0.2"), "node-b".into());
        s
    }

    fn event(kind: EventKind, src: &str, dst: &str) -> DatapathEvent {
        DatapathEvent {
            ktime_ns: 5,
            kind,
            protocol: 6,
            tcp_flags: 0x12,
            src_identity: 0,
            dst_identity: 0,
            ifindex: 3,
            src: Endpoint { ip: ip(src), port: 40000 },
            dst: Endpoint { ip: ip(dst), port: 80 },
            orig_dst: None,
            len: 60,
        }
    }

    #[test]
    fn events_become_flows_with_names_identities_and_verdicts() {
        let snap = snapshot();
        let trace = EventKind::Trace { point: point::TO_ENDPOINT };
        let denied = EventKind::PolicyVerdict { egress: false, allowed: false, match_type: policy_match::NONE };
        let allowed = EventKind::PolicyVerdict { egress: true, allowed: true, match_type: policy_match::L3_L4 };
        let dropped = EventKind::Drop { reason: 133 };
        // (kind, event type, point, verdict, direction, policy verdict, drop reason)
        let cases = [
            (trace, "trace", "to-endpoint", "FORWARDED", "", "", 0),
            (denied, "policy-verdict", "policy-verdict:none", "DROPPED", "INGRESS", "DENIED", 0),
            (allowed, "policy-verdict", "policy-verdict:L3-L4", "FORWARDED", "EGRESS", "ALLOWED", 0),
            (dropped, "drop", "Policy denied", "DROPPED", "", "", 133),
        ];
        for (kind, ty, point, verdict, dir, policy, reason) in cases {
            let flow = enrich(&event(kind, "10.0.1.2", "10.0.2.3"), &snap);
            let got = (
                flow.event_type.as_str(),
                flow.observation_point.as_str(),
                flow.verdict.as_str(),
                flow.traffic_direction.as_str(),
                flow.policy_verdict.as_str(),
                flow.drop_reason,
            );
            assert_eq!(got, (ty, point, verdict, dir, policy, reason), "{kind:?}");
            assert_eq!((flow.source.namespace.as_str(), flow.source.pod_name.as_str()), ("default", "client"));
            assert_eq!((flow.destination.namespace.as_str(), flow.destination.pod_name.as_str()), ("web", "nginx-1"));
            assert_eq!((flow.source.identity, flow.destination.identity), (51234, 40000), "filled from the snapshot");
            assert_eq!(flow.destination.labels, ["k8s:app=nginx"]);
            assert_eq!(flow.l4.flags, ["SYN", "ACK"]);
            assert_eq!((flow.time_ns, flow.node_name.as_str()), (1_005, "node-a"));
        }
    }

    #[test]
    fn unknown_addresses_get_reserved_identities_and_reported_ones_win() {
        let snap = snapshot();
        let trace = EventKind::Trace { point: point::TO_STACK };
        let cases = [
            ("8.8.8.8", 0, 2, "reserved:world"),
            ("192.168.0.1", 0, 1, "reserved:host"),
            ("192.168.0.2", 0, 6, "reserved:remote-node"),
            ("172.16.0.9", 777, 777, ""),
        ];
        for (dst, reported, want_identity, want_label) in cases {
            let mut ev = event(trace, "10.0.1.2", dst);
            ev.dst_identity = reported;
            let flow = enrich(&ev, &snap);
            assert_eq!(flow.destination.identity, want_identity, "{dst}");
            let labels: Vec<&str> = flow.destination.labels.iter().map(String::as_str).collect();
            assert_eq!(labels, if want_label.is_empty() { vec![] } else { vec![want_label] }, "{dst}");
            assert!(flow.destination.pod_name.is_empty());
        }
    }

    #[test]
    fn service_translations_name_the_service_and_keep_the_frontend() {
        let snap = snapshot();
        let mut ev = event(EventKind::Trace { point: point::SERVICE }, "10.0.1.2", "10.0.2.3");
        ev.orig_dst = Some(Endpoint { ip: ip("10.96.0.10"), port: 80 });
        let flow = enrich(&ev, &snap);
        assert_eq!(flow.destination_service, Some(FlowService { namespace: "web".into(), name: "nginx".into() }));
        assert_eq!(flow.original_destination, "10.96.0.10:80");
        assert_eq!(flow.observation_point, "service-translation");
        // A packet to the frontend itself (before translation) names the service too; UDP does not
        // match a TCP frontend.
        let to_vip = event(EventKind::Trace { point: point::FROM_ENDPOINT }, "10.0.1.2", "10.96.0.10");
        assert_eq!(enrich(&to_vip, &snap).destination_service.map(|s| s.name), Some("nginx".into()));
        let udp = DatapathEvent { protocol: 17, ..to_vip };
        assert_eq!(enrich(&udp, &snap).destination_service, None);
        assert!(enrich(&udp, &snap).l4.flags.is_empty());
    }
}
