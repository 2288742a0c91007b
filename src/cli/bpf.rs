//! `beeline bpf <map> list`: dumps a pinned map directly (no agent needed), like `cilium bpf lb list`.
//! `beeline bpf uninstall` removes the pinned datapath (links and maps).

use std::path::{Path, PathBuf};

use beeline_common::lb::{
    ct_flags, svc_flags, Ct4Entry, Ct4Tuple, Lb4AffinityKey, Lb4Key, Lb4Service, LbAffinityValue,
    AFFINITY_TIMEOUT_MASK, TUPLE_F_IN, TUPLE_F_SERVICE,
};

use super::{print_structured, Output};
use crate::datapath::manager::backend::MapBackend;
use crate::datapath::manager::kernel::{KernelLpmMap, KernelMap, LpmKey};
use crate::datapath::manager::maps::{Ipcache, Lb4Backends, Lb4RevNat, Lb4Services, TunnelMap};
use crate::datapath::manager::MapDef;
use crate::datapath::tables::from_be;

#[derive(Debug, clap::Args)]
pub struct BpfArgs {
    /// The bpffs directory the agent pins its maps in (`<bpf-root>/beeline`).
    #[arg(long, global = true, env = "BEELINE_PIN_DIR", default_value = "/sys/fs/bpf/beeline")]
    pub pin_dir: PathBuf,
    #[arg(short, long, global = true, value_enum, default_value_t)]
    pub output: Output,
    #[command(subcommand)]
    pub map: BpfMap,
}

#[derive(Debug, clap::Subcommand)]
pub enum BpfMap {
    /// Services: frontends (slot 0) and their backend slots.
    Lb {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Backends by backend ID.
    Backend {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Reverse-NAT entries by rev-NAT index.
    Revnat {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Connection tracking: service entries (client → frontend, with the chosen backend) and
    /// connection entries (client → backend, with the rev-NAT index replies are translated with).
    Ct {
        #[command(subcommand)]
        verb: Verb,
    },
    /// ClientIP session affinity: client + service (rev-NAT index) → remembered backend, with
    /// how long the entry has been idle and whether it is past the service's timeout.
    Affinity {
        #[command(subcommand)]
        verb: Verb,
    },
    /// The IP cache: prefix → identity and tunnel endpoint (`cilium bpf ipcache list`).
    Ipcache {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Remote pod CIDR → node IP (`cilium bpf tunnel list`).
    Tunnel {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Per-endpoint packet counters of `from_container`, by host-side veth.
    #[command(name = "ep-stats")]
    EpStats {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Drop counters per reason (summed over CPUs), with Cilium's reason names — what
    /// `cilium-dbg bpf metrics list` shows for drops.
    Drops {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Masquerading / SNAT translations, both directions (`cilium-dbg bpf nat list`).
    Nat {
        #[command(subcommand)]
        verb: Verb,
    },
    /// Not a map: detach every beeline program (unpin its links, remove clsact filters) and
    /// remove the pin directory with its maps. Stop the agent first.
    Uninstall,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Verb {
    /// Print every entry.
    List,
}

/// Every row of the pinned map `M`, rendered by the map's definition.
pub fn rows<M: MapDef>(pin_dir: &Path) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error + Send + Sync>> {
    let mut map = KernelMap::<M::Key, M::Value>::open_pinned::<M>(pin_dir)?;
    Ok(render_rows::<M>(map.dump()?))
}

/// Every row of the pinned LPM trie `M`.
pub fn lpm_rows<M: MapDef>(pin_dir: &Path) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error + Send + Sync>>
where
    M::Key: LpmKey + Send,
    <M::Key as LpmKey>::Data: Send,
{
    let mut map = KernelLpmMap::<M::Key, M::Value>::open_pinned::<M>(pin_dir)?;
    Ok(render_rows::<M>(map.dump()?))
}

fn render_rows<M: MapDef>(mut entries: Vec<(M::Key, M::Value)>) -> Vec<serde_json::Value> {
    entries.sort_by_key(|row| row.0);
    entries.iter().map(|(k, v)| M::row_json(k, v)).collect()
}

/// A plain text table: the columns are the keys of the first row.
pub fn render(rows: &[serde_json::Value]) -> String {
    let Some(first) = rows.first().and_then(|r| r.as_object()) else {
        return "(no entries)\n".to_string();
    };
    let columns: Vec<&String> = first.keys().collect();
    let cell = |row: &serde_json::Value, c: &str| match &row[c] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let widths: Vec<usize> =
        columns.iter().map(|c| rows.iter().map(|r| cell(r, c).len()).chain([c.len()]).max().unwrap_or(0)).collect();
    let mut out = String::new();
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    out.push_str(&line(columns.iter().map(|c| c.to_uppercase()).collect()));
    out.push('\n');
    for row in rows {
        out.push_str(&line(columns.iter().map(|c| cell(row, c)).collect()));
        out.push('\n');
    }
    out
}

pub async fn run(args: BpfArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let rows = match args.map {
        BpfMap::Lb { verb: Verb::List } => rows::<Lb4Services>(&args.pin_dir)?,
        BpfMap::Backend { verb: Verb::List } => rows::<Lb4Backends>(&args.pin_dir)?,
        BpfMap::Revnat { verb: Verb::List } => rows::<Lb4RevNat>(&args.pin_dir)?,
        BpfMap::Ct { verb: Verb::List } => {
            ct_rows(&crate::datapath::lb_tables::list_ct(&args.pin_dir)?, crate::datapath::lb_tables::monotonic_secs())
        }
        BpfMap::Affinity { verb: Verb::List } => {
            let services = KernelMap::open_pinned::<Lb4Services>(&args.pin_dir)?.dump()?;
            affinity_rows(
                &crate::datapath::lb_tables::list_affinity(&args.pin_dir)?,
                &services,
                crate::datapath::lb_tables::monotonic_secs(),
            )
        }
        BpfMap::Ipcache { verb: Verb::List } => lpm_rows::<Ipcache>(&args.pin_dir)?,
        BpfMap::Tunnel { verb: Verb::List } => rows::<TunnelMap>(&args.pin_dir)?,
        BpfMap::EpStats { verb: Verb::List } => {
            ep_stats_rows(&crate::datapath::loader::read_pinned_endpoint_stats(&args.pin_dir)?)
        }
        BpfMap::Drops { verb: Verb::List } => drop_rows(&crate::datapath::tables::read_drops(&args.pin_dir)?),
        BpfMap::Nat { verb: Verb::List } => nat_rows(&crate::datapath::tables::list_snat(&args.pin_dir)?),
        BpfMap::Uninstall => return uninstall(&args.pin_dir),
    };
    if !print_structured(args.output, &rows)? {
        print!("{}", render(&rows));
    }
    Ok(())
}

/// `beeline_ep_stats` rows; the ifindex is also shown as a name when the interface exists in
/// this process's network namespace (run it inside the node's namespace).
fn ep_stats_rows(stats: &std::collections::BTreeMap<u32, beeline_common::EndpointStats>) -> Vec<serde_json::Value> {
    stats
        .iter()
        .map(|(ifindex, s)| {
            serde_json::json!({
                "ifindex": ifindex,
                "ifname": crate::datapath::attach::ifname(*ifindex),
                "packets": s.packets,
                "bytes": s.bytes,
            })
        })
        .collect()
}

/// Conntrack rows, sorted by tuple; `expires_in` is negative for entries past their lifetime that
/// nothing has overwritten or evicted yet.
fn ct_rows(entries: &[(Ct4Tuple, Ct4Entry)], now: u64) -> Vec<serde_json::Value> {
    let mut entries = entries.to_vec();
    entries.sort_by_key(|(t, _)| *t);
    entries
        .iter()
        .map(|(t, e)| {
            let kind = match t.flags {
                TUPLE_F_SERVICE => "service",
                TUPLE_F_IN => "in",
                _ => "out",
            };
            let flags: Vec<&str> = [
                (ct_flags::RX_CLOSING, "rx-closing"),
                (ct_flags::TX_CLOSING, "tx-closing"),
                (ct_flags::SEEN_NON_SYN, "seen-non-syn"),
            ]
            .into_iter()
            .filter(|(bit, _)| e.flags & bit != 0)
            .map(|(_, name)| name)
            .collect();
            let proto = match t.nexthdr {
                6 => "TCP".to_string(),
                17 => "UDP".to_string(),
                n => n.to_string(),
            };
            serde_json::json!({
                "proto": proto,
                "type": kind,
                "tuple": format!(
                    "{}:{} -> {}:{}",
                    from_be(t.saddr), u16::from_be(t.sport), from_be(t.daddr), u16::from_be(t.dport)
                ),
                "expires_in": i64::from(e.lifetime) - now as i64,
                "flags": flags.join(","),
                "rev_nat_index": e.rev_nat_index,
                "backend_id": e.backend_id,
                "packets": e.packets,
                "bytes": e.bytes,
            })
        })
        .collect()
}

/// Affinity rows, by client then service. The timeout is the service's (its master entry carries
/// it), so `state` says what the datapath will decide on the client's next new connection:
/// `expired` entries are removed and replaced then, not before (the map is not swept).
fn affinity_rows(
    entries: &[(Lb4AffinityKey, LbAffinityValue)],
    services: &[(Lb4Key, Lb4Service)],
    now: u64,
) -> Vec<serde_json::Value> {
    let timeouts: std::collections::BTreeMap<u16, u32> = services
        .iter()
        .filter(|(k, s)| k.backend_slot == 0 && s.flags & svc_flags::AFFINITY != 0)
        .map(|(_, s)| (s.rev_nat_index, s.backend_id & AFFINITY_TIMEOUT_MASK))
        .collect();
    let mut entries = entries.to_vec();
    entries.sort_by_key(|(k, _)| (from_be(k.client_ip), k.rev_nat_id));
    entries
        .iter()
        .map(|(k, v)| {
            let idle = now as i64 - v.last_used as i64;
            let timeout = timeouts.get(&k.rev_nat_id).copied();
            let state = match timeout {
                None => "no affinity service",
                Some(t) if idle > i64::from(t) => "expired",
                Some(_) => "valid",
            };
            serde_json::json!({
                "client": from_be(k.client_ip).to_string(),
                "rev_nat_index": k.rev_nat_id,
                "backend_id": v.backend_id,
                "last_used": v.last_used,
                "idle_s": idle,
                "timeout_s": timeout,
                "state": state,
            })
        })
        .collect()
}

/// One row per drop reason seen, by reason code.
fn drop_rows(drops: &std::collections::BTreeMap<u32, beeline_common::datapath::DropStats>) -> Vec<serde_json::Value> {
    use beeline_common::datapath::drop_reason;
    drops
        .iter()
        .map(|(reason, s)| {
            serde_json::json!({
                "reason": reason,
                "description": drop_reason::name(*reason),
                "packets": s.packets,
                "bytes": s.bytes,
            })
        })
        .collect()
}

/// SNAT rows like `cilium-dbg bpf nat list`: the tuple as the packet carries it, then where it is
/// translated to.
fn nat_rows(rows: &[(beeline_common::nat::NatTuple, beeline_common::nat::NatEntry)]) -> Vec<serde_json::Value> {
    use crate::datapath::tables::from_be;
    use beeline_common::nat::NAT_DIR_EGRESS;
    let mut out: Vec<serde_json::Value> = rows
        .iter()
        .map(|(t, e)| {
            let proto = match t.nexthdr {
                1 => "ICMP".to_string(),
                6 => "TCP".to_string(),
                17 => "UDP".to_string(),
                other => other.to_string(),
            };
            let (direction, rewrites) =
                if t.flags == NAT_DIR_EGRESS { ("OUT", "source") } else { ("IN", "destination") };
            serde_json::json!({
                "proto": proto,
                "direction": direction,
                "from": format!("{}:{}", from_be(t.saddr), u16::from_be(t.sport)),
                "to": format!("{}:{}", from_be(t.daddr), u16::from_be(t.dport)),
                "xlate": format!("{rewrites} {}:{}", from_be(e.to_addr), u16::from_be(e.to_port)),
            })
        })
        .collect();
    out.sort_by_key(|r| r.to_string());
    out
}

fn uninstall(pin_dir: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let report = crate::datapath::uninstall(pin_dir)?;
    for link in &report.links_unpinned {
        println!("unpinned link {}", link.display());
    }
    for filter in &report.netlink_filters_removed {
        println!("removed clsact filter {filter}");
    }
    match &report.pin_dir_removed {
        Some(dir) => println!("removed {}", dir.display()),
        None => println!("nothing pinned at {}", pin_dir.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_aligns_columns_and_handles_empty_maps() {
        assert_eq!(render(&[]), "(no entries)\n");
        let rows = vec![
            json!({"backend_id": 1, "address": "10.0.0.1:80"}),
            json!({"backend_id": 12, "address": "10.0.0.2:8080"}),
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ADDRESS"), "serde_json orders keys: {text}");
        assert!(lines[2].contains("10.0.0.2:8080") && lines[2].ends_with("12"), "{text}");
    }

    #[test]
    fn ct_rows_show_tuples_in_host_order_with_kind_flags_and_remaining_lifetime() {
        use crate::datapath::tables::be;
        let tuple = |flags, dport: u16| Ct4Tuple {
            saddr: be("10.0.1.2".parse().unwrap()),
            daddr: be("10.96.0.10".parse().unwrap()),
            sport: 40000u16.to_be(),
            dport: dport.to_be(),
            nexthdr: 6,
            flags,
            pad: 0,
        };
        let entry = |lifetime, flags| Ct4Entry {
            lifetime,
            flags,
            rev_nat_index: 2,
            backend_id: 7,
            packets: 3,
            ..Default::default()
        };
        let rows = ct_rows(
            &[
                (tuple(TUPLE_F_SERVICE, 80), entry(160, ct_flags::SEEN_NON_SYN)),
                (tuple(0, 8080), entry(90, ct_flags::RX_CLOSING | ct_flags::TX_CLOSING)),
            ],
            100,
        );
        // Sorted by tuple (destination first): the service entry (port 80) before the connection.
        assert_eq!(rows[1]["type"], "out");
        assert_eq!(rows[1]["tuple"], "10.0.1.2:40000 -> 10.96.0.10:8080");
        assert_eq!(rows[1]["expires_in"], -10);
        assert_eq!(rows[1]["flags"], "rx-closing,tx-closing");
        assert_eq!(rows[0]["type"], "service");
        assert_eq!((rows[0]["proto"].as_str(), rows[0]["expires_in"].as_i64()), (Some("TCP"), Some(60)));
        assert_eq!((rows[0]["backend_id"].as_u64(), rows[0]["rev_nat_index"].as_u64()), (Some(7), Some(2)));
    }

    #[test]
    fn affinity_rows_judge_entries_against_their_services_timeout() {
        use crate::datapath::tables::be;
        let key =
            |client: &str, rev_nat_id| Lb4AffinityKey { client_ip: be(client.parse().unwrap()), rev_nat_id, pad: 0 };
        let seen = |last_used, backend_id| LbAffinityValue { last_used, backend_id, pad: 0 };
        let master = |rev_nat_index, flags, timeout| {
            (
                Lb4Key { backend_slot: 0, ..Default::default() },
                Lb4Service { backend_id: timeout, flags, rev_nat_index, ..Default::default() },
            )
        };
        let services = [
            master(3, svc_flags::AFFINITY, 5),
            // A backend slot of service 3 (its backend_id is a backend, not a timeout).
            (
                Lb4Key { backend_slot: 1, ..Default::default() },
                Lb4Service { backend_id: 99, rev_nat_index: 3, ..Default::default() },
            ),
            master(4, 0, 0),
        ];
        let rows = affinity_rows(
            &[
                (key("10.0.2.7", 3), seen(90, 11)),
                (key("10.0.1.5", 3), seen(96, 12)),
                (key("10.0.1.5", 4), seen(99, 13)),
            ],
            &services,
            100,
        );
        let cells: Vec<(&str, u64, i64, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r["client"].as_str().unwrap(),
                    r["backend_id"].as_u64().unwrap(),
                    r["idle_s"].as_i64().unwrap(),
                    r["state"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            cells,
            [("10.0.1.5", 12, 4, "valid"), ("10.0.1.5", 13, 1, "no affinity service"), ("10.0.2.7", 11, 10, "expired")]
        );
        assert_eq!(rows[0]["timeout_s"], 5);
    }

    #[test]
    fn ep_stats_rows_name_known_interfaces() {
        let stats = [
            (1, beeline_common::EndpointStats { packets: 3, bytes: 294 }),
            (u32::MAX, beeline_common::EndpointStats { packets: 1, bytes: 60 }),
        ]
        .into_iter()
        .collect();
        let rows = ep_stats_rows(&stats);
        // ifindex 1 is the loopback device in every network namespace.
        assert_eq!(rows[0], json!({"ifindex": 1, "ifname": "lo", "packets": 3, "bytes": 294}));
        assert_eq!(rows[1]["ifname"], serde_json::Value::Null);
        assert!(render(&rows).lines().nth(1).unwrap().contains("lo"));
    }

    #[test]
    fn drop_rows_carry_ciliums_reason_names() {
        use beeline_common::datapath::{drop_reason, DropStats};
        let drops = [
            (drop_reason::INVALID_SIP, DropStats { packets: 2, bytes: 120 }),
            (drop_reason::NAT_NO_MAPPING, DropStats { packets: 1, bytes: 60 }),
        ]
        .into_iter()
        .collect();
        let rows = drop_rows(&drops);
        assert_eq!(rows[0], json!({"reason": 132, "description": "Invalid source ip", "packets": 2, "bytes": 120}));
        assert_eq!(rows[1]["description"], "No mapping for NAT masquerade");
        assert!(render(&rows).contains("Invalid source ip"));
    }

    #[test]
    fn nat_rows_show_both_directions() {
        use crate::datapath::tables::be;
        use beeline_common::nat::{NatEntry, NatTuple, NAT_DIR_EGRESS, NAT_DIR_INGRESS};
        let ip = |s: &str| be(s.parse().unwrap());
        let out = NatTuple {
            saddr: ip("10.0.1.2"),
            daddr: ip("1.1.1.1"),
            sport: 40000u16.to_be(),
            dport: 443u16.to_be(),
            nexthdr: 6,
            flags: NAT_DIR_EGRESS,
            ..Default::default()
        };
        let xlate = NatEntry { to_addr: ip("192.168.0.1"), to_port: 50000u16.to_be(), ..Default::default() };
        let back = out.reply_after_snat(xlate.to_addr, xlate.to_port);
        let orig = NatEntry { to_addr: out.saddr, to_port: out.sport, ..Default::default() };
        assert_eq!(back.flags, NAT_DIR_INGRESS);
        let rows = nat_rows(&[(out, xlate), (back, orig)]);
        let text = render(&rows);
        assert!(text.contains("10.0.1.2:40000") && text.contains("source 192.168.0.1:50000"), "{text}");
        assert!(text.contains("1.1.1.1:443") && text.contains("destination 10.0.1.2:40000"), "{text}");
    }
}
