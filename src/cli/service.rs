//! `beeline service list`: the services the datapath is balancing, read from the pinned LB maps (no
//! agent needed), in the shape of `cilium-dbg service list`: ID, frontend, type, and the backends
//! with their state, one per line, in slot order. IPv4 and IPv6 frontends together (one ID space).

use std::collections::BTreeMap;
use std::path::PathBuf;

use std::net::{SocketAddr, SocketAddrV6};

use beeline_common::lb::{
    backend_flags, svc_flags, svc_flags2, Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service, Lb6Backend, Lb6Key,
    LB_LOOKUP_SCOPE_INT,
};

use super::{print_structured, Output};
use crate::datapath::manager::backend::MapBackend;
use crate::datapath::manager::kernel::KernelMap;
use crate::datapath::manager::maps::{Lb4Backends, Lb4Services, Lb6Backends, Lb6Services};
use crate::datapath::tables::from_be;

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The bpffs directory the agent pins its maps in (`<bpf-root>/beeline`).
    #[arg(long, global = true, env = "BEELINE_PIN_DIR", default_value = "/sys/fs/bpf/beeline")]
    pub pin_dir: PathBuf,
    #[arg(short, long, global = true, value_enum, default_value_t)]
    pub output: Output,
    #[command(subcommand)]
    pub verb: super::bpf::Verb,
}

/// One frontend.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServiceRow {
    pub id: u16,
    pub frontend: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub backends: Vec<BackendRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackendRow {
    pub slot: u16,
    pub id: u32,
    pub address: String,
    pub state: String,
}

fn proto_name(proto: u8) -> String {
    match proto {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        0 => "ANY".into(),
        n => n.to_string(),
    }
}

/// A services-map key of either family, as the listing needs it.
pub trait ServiceKey: Ord + Copy {
    /// `addr:port` (`[addr]:port` for IPv6).
    fn socket(&self) -> String;
    fn proto(&self) -> u8;
    fn scope(&self) -> u8;
    fn slot(&self) -> u16;
    fn with_slot(&self, slot: u16) -> Self;
}

impl ServiceKey for Lb4Key {
    fn socket(&self) -> String {
        SocketAddr::new(from_be(self.address).into(), u16::from_be(self.dport)).to_string()
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn scope(&self) -> u8 {
        self.scope
    }
    fn slot(&self) -> u16 {
        self.backend_slot
    }
    fn with_slot(&self, slot: u16) -> Self {
        Lb4Key { backend_slot: slot, ..*self }
    }
}

impl ServiceKey for Lb6Key {
    fn socket(&self) -> String {
        SocketAddrV6::new(self.address.into(), u16::from_be(self.dport), 0, 0).to_string()
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn scope(&self) -> u8 {
        self.scope
    }
    fn slot(&self) -> u16 {
        self.backend_slot
    }
    fn with_slot(&self, slot: u16) -> Self {
        Lb6Key { backend_slot: slot, ..*self }
    }
}

/// A backends-map value of either family.
pub trait BackendValue {
    /// `addr:port/PROTO`.
    fn describe(&self) -> String;
    fn state_flags(&self) -> u8;
}

impl BackendValue for Lb4Backend {
    fn describe(&self) -> String {
        format!("{}:{}/{}", from_be(self.address), u16::from_be(self.port), proto_name(self.proto))
    }
    fn state_flags(&self) -> u8 {
        self.flags
    }
}

impl BackendValue for Lb6Backend {
    fn describe(&self) -> String {
        format!("{}/{}", SocketAddrV6::new(self.address.into(), u16::from_be(self.port), 0, 0), proto_name(self.proto))
    }
    fn state_flags(&self) -> u8 {
        self.flags
    }
}

/// Cilium's type column: the frontend kind, then the traffic-policy qualifiers it shows.
fn kind(key: &impl ServiceKey, svc: &Lb4Service) -> String {
    let f = svc.flags;
    let mut kind = if f & svc_flags::HOSTPORT != 0 {
        "HostPort"
    } else if f & svc_flags::LOADBALANCER != 0 {
        "LoadBalancer"
    } else if f & svc_flags::NODEPORT != 0 {
        "NodePort"
    } else if f & svc_flags::EXTERNAL_IP != 0 {
        "ExternalIPs"
    } else {
        "ClusterIP"
    }
    .to_string();
    if f & svc_flags::EXT_LOCAL_SCOPE != 0 && key.scope() != LB_LOOKUP_SCOPE_INT {
        kind.push_str(", Local");
    }
    if svc.flags2 & svc_flags2::INT_LOCAL_SCOPE != 0 {
        kind.push_str(", InternalLocal");
    }
    if f & svc_flags::AFFINITY != 0 {
        kind.push_str(", ClientIP");
    }
    kind
}

fn state_name(flags: u8) -> &'static str {
    match flags {
        backend_flags::ACTIVE => "active",
        backend_flags::TERMINATING => "terminating",
        backend_flags::QUARANTINED => "quarantined",
        backend_flags::MAINTENANCE => "maintenance",
        _ => "unknown",
    }
}

/// Groups the services map into frontends (master entry + slots) and resolves backend IDs. Slots
/// past `count` hold backends kept only for established connections; they are listed too, with
/// their state (a slot whose backend is missing shows as `missing`).
pub fn service_rows<K: ServiceKey, B: BackendValue>(
    services: &BTreeMap<K, Lb4Service>,
    backends: &BTreeMap<Lb4BackendKey, B>,
) -> Vec<ServiceRow> {
    let mut rows: Vec<ServiceRow> = services
        .iter()
        // Wildcard entries (no rev-NAT ID) only make the datapath drop undeclared ports.
        .filter(|(k, master)| k.slot() == 0 && master.rev_nat_index != 0)
        .map(|(key, master)| {
            let mut frontend = format!("{}/{}", key.socket(), proto_name(key.proto()));
            if key.scope() == LB_LOOKUP_SCOPE_INT {
                frontend.push_str("/i");
            }
            let slots = master.count.saturating_add(master.qcount);
            let backends = (1..=slots)
                .filter_map(|slot| services.get(&key.with_slot(slot)).map(|s| (slot, s.backend_id)))
                .map(|(slot, id)| match backends.get(&Lb4BackendKey { backend_id: id }) {
                    Some(b) => {
                        BackendRow { slot, id, address: b.describe(), state: state_name(b.state_flags()).into() }
                    }
                    None => BackendRow { slot, id, address: String::new(), state: "missing".into() },
                })
                .collect();
            ServiceRow { id: master.rev_nat_index, frontend, kind: kind(key, master), backends }
        })
        .collect();
    rows.sort_by(|a, b| (a.id, &a.frontend).cmp(&(b.id, &b.frontend)));
    rows
}

/// `ID  Frontend  Service Type  Backend`, backends one per line (`1 => addr (state)`).
pub fn render(rows: &[ServiceRow]) -> String {
    let w_id = rows.iter().map(|r| r.id.to_string().len()).chain([2]).max().unwrap_or(2);
    let w_fe = rows.iter().map(|r| r.frontend.len()).chain([8]).max().unwrap_or(8);
    let w_ty = rows.iter().map(|r| r.kind.len()).chain([12]).max().unwrap_or(12);
    let mut out = format!("{:<w_id$}   {:<w_fe$}   {:<w_ty$}   Backend\n", "ID", "Frontend", "Service Type");
    for row in rows {
        let backends: Vec<String> =
            row.backends.iter().map(|b| format!("{} => {} ({})", b.slot, b.address, b.state)).collect();
        let first = backends.first().cloned().unwrap_or_default();
        out.push_str(format!("{:<w_id$}   {:<w_fe$}   {:<w_ty$}   {first}", row.id, row.frontend, row.kind).trim_end());
        out.push('\n');
        for more in backends.iter().skip(1) {
            out.push_str(&format!("{:<w$}{more}\n", "", w = w_id + w_fe + w_ty + 9));
        }
    }
    out
}

pub async fn run(args: ServiceArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let super::bpf::Verb::List = args.verb;
    let services: BTreeMap<_, _> = KernelMap::open_pinned::<Lb4Services>(&args.pin_dir)?.dump()?.into_iter().collect();
    let backends: BTreeMap<_, _> = KernelMap::open_pinned::<Lb4Backends>(&args.pin_dir)?.dump()?.into_iter().collect();
    let mut rows = service_rows(&services, &backends);
    // A datapath pinned by an older agent has no IPv6 maps: then there is nothing IPv6 to list.
    if let (Ok(mut services6), Ok(mut backends6)) =
        (KernelMap::open_pinned::<Lb6Services>(&args.pin_dir), KernelMap::open_pinned::<Lb6Backends>(&args.pin_dir))
    {
        let services6: BTreeMap<_, _> = services6.dump()?.into_iter().collect();
        let backends6: BTreeMap<_, _> = backends6.dump()?.into_iter().collect();
        rows.extend(service_rows(&services6, &backends6));
        rows.sort_by(|a, b| (a.id, &a.frontend).cmp(&(b.id, &b.frontend)));
    }
    if !print_structured(args.output, &rows)? {
        print!("{}", render(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tables::be;

    fn key(ip: &str, port: u16, proto: u8, slot: u16, scope: u8) -> Lb4Key {
        Lb4Key { address: be(ip.parse().unwrap()), dport: port.to_be(), backend_slot: slot, proto, scope, pad: [0; 2] }
    }

    fn backend(ip: &str, port: u16, flags: u8) -> Lb4Backend {
        Lb4Backend { address: be(ip.parse().unwrap()), port: port.to_be(), proto: 6, flags, ..Default::default() }
    }

    #[test]
    fn frontends_list_their_slots_in_order_with_states_and_qualifiers() {
        let master = |count, qcount, id, flags, flags2| Lb4Service {
            count,
            qcount,
            rev_nat_index: id,
            flags,
            flags2,
            ..Default::default()
        };
        let slot = |backend_id, id| Lb4Service { backend_id, rev_nat_index: id, ..Default::default() };
        let services: BTreeMap<_, _> = [
            (key("10.96.0.10", 80, 6, 0, 0), master(1, 1, 2, svc_flags::AFFINITY, svc_flags2::INT_LOCAL_SCOPE)),
            (key("10.96.0.10", 80, 6, 1, 0), slot(11, 2)),
            (key("10.96.0.10", 80, 6, 2, 0), slot(12, 2)),
            (key("172.18.0.100", 80, 6, 0, 1), master(0, 0, 3, svc_flags::LOADBALANCER, svc_flags2::TWO_SCOPES)),
            (key("192.168.1.10", 30080, 6, 0, 0), master(1, 0, 1, svc_flags::NODEPORT | svc_flags::EXT_LOCAL_SCOPE, 0)),
            (key("192.168.1.10", 30080, 6, 1, 0), slot(13, 1)),
        ]
        .into_iter()
        .collect();
        let backends: BTreeMap<_, _> = [
            (Lb4BackendKey { backend_id: 11 }, backend("10.0.1.3", 8080, backend_flags::ACTIVE)),
            (Lb4BackendKey { backend_id: 12 }, backend("10.0.1.4", 8080, backend_flags::TERMINATING)),
        ]
        .into_iter()
        .collect();
        let rows = service_rows(&services, &backends);
        let summary: Vec<(u16, &str, &str, Vec<String>)> = rows
            .iter()
            .map(|r| {
                let bes = r.backends.iter().map(|b| format!("{} {} {} {}", b.slot, b.id, b.address, b.state)).collect();
                (r.id, r.frontend.as_str(), r.kind.as_str(), bes)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "192.168.1.10:30080/TCP", "NodePort, Local", vec!["1 13  missing".to_string()]),
                (
                    2,
                    "10.96.0.10:80/TCP",
                    "ClusterIP, InternalLocal, ClientIP",
                    vec!["1 11 10.0.1.3:8080/TCP active".to_string(), "2 12 10.0.1.4:8080/TCP terminating".to_string()]
                ),
                (3, "172.18.0.100:80/TCP/i", "LoadBalancer", vec![]),
            ]
        );
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].ends_with("Backend"), "{text}");
        assert!(lines[2].ends_with("1 => 10.0.1.3:8080/TCP (active)"), "{text}");
        assert!(lines[3].trim_start().starts_with("2 => 10.0.1.4:8080/TCP (terminating)"), "{text}");
        assert_eq!(lines.len(), 5, "{text}");
    }

    #[test]
    fn ipv6_frontends_and_backends_are_listed_as_bracketed_socket_addresses() {
        let vip: std::net::Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        let key = |slot| Lb6Key {
            address: vip.octets(),
            dport: 80u16.to_be(),
            backend_slot: slot,
            proto: 6,
            ..Default::default()
        };
        let services: BTreeMap<_, _> = [
            (key(0), Lb4Service { count: 1, rev_nat_index: 7, ..Default::default() }),
            (key(1), Lb4Service { backend_id: 21, rev_nat_index: 7, ..Default::default() }),
        ]
        .into_iter()
        .collect();
        let backend = Lb6Backend {
            address: "fd00:10:0:1::5".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            port: 8080u16.to_be(),
            proto: 6,
            ..Default::default()
        };
        let backends: BTreeMap<_, _> = [(Lb4BackendKey { backend_id: 21 }, backend)].into_iter().collect();
        let rows = service_rows(&services, &backends);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].id, rows[0].frontend.as_str(), rows[0].kind.as_str()),
            (7, "[fd00:10:96::a]:80/TCP", "ClusterIP")
        );
        assert_eq!(rows[0].backends[0].address, "[fd00:10:0:1::5]:8080/TCP");
        assert_eq!(rows[0].backends[0].state, "active");
    }
}
