//! `hubble observe`'s one-line text format:
//! `Mar 14 11:22:41.654: default/client:50976 (ID:18901) -> web/nginx-1:80 (ID:4437) to-endpoint FORWARDED (TCP Flags: SYN)`.

use super::flow::{Flow, FlowEndpoint};

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `Mon DD HH:MM:SS.mmm` (UTC) of Unix nanoseconds.
pub fn timestamp(unix_ns: i128) -> String {
    let ms = unix_ns.div_euclid(1_000_000);
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 → civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}.{:03}",
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

fn reserved_name(identity: u32) -> Option<&'static str> {
    match identity {
        1 => Some("host"),
        2 => Some("world"),
        6 => Some("remote-node"),
        _ => None,
    }
}

fn side(ep: &FlowEndpoint, ip: std::net::Ipv4Addr, port: u16) -> String {
    let name = if ep.pod_name.is_empty() { ip.to_string() } else { format!("{}/{}", ep.namespace, ep.pod_name) };
    let port = if port != 0 { format!(":{port}") } else { String::new() };
    let id = match reserved_name(ep.identity) {
        Some(r) => format!("({r})"),
        None => format!("(ID:{})", ep.identity),
    };
    format!("{name}{port} {id}")
}

fn summary(f: &Flow) -> String {
    if f.l4.protocol == "TCP" {
        format!("TCP Flags: {}", f.l4.flags.join(", "))
    } else {
        f.l4.protocol.clone()
    }
}

/// One line, as `hubble observe` prints it.
pub fn line(f: &Flow) -> String {
    // Hubble prints `<>` when it cannot tell request from reply; beeline knows the direction for
    // everything but denied policy verdicts, which Hubble shows with `<>` too.
    let arrow = if f.policy_verdict == "DENIED" { "<>" } else { "->" };
    let what = match f.event_type.as_str() {
        "policy-verdict" => format!("{} {} {}", f.observation_point, f.traffic_direction, f.policy_verdict),
        _ => format!("{} {}", f.observation_point, f.verdict),
    };
    format!(
        "{}: {} {arrow} {} {what} ({})",
        timestamp(f.time_ns),
        side(&f.source, f.ip.source, f.l4.source_port),
        side(&f.destination, f.ip.destination, f.l4.destination_port),
        summary(f)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::{FlowIp, FlowL4};

    #[test]
    fn timestamps_are_utc_month_day_time_millis() {
        let cases = [
            (0, "Jan  1 00:00:00.000"),
            (1_710_415_361_654_000_000, "Mar 14 11:22:41.654"),
            // 2024 is a leap year.
            (1_709_164_800_000_000_000, "Feb 29 00:00:00.000"),
            (1_735_689_599_999_999_999, "Dec 31 23:59:59.999"),
        ];
        for (ns, want) in cases {
            assert_eq!(timestamp(ns), want);
        }
    }

    fn pod(ns: &str, name: &str, identity: u32) -> FlowEndpoint {
        FlowEndpoint { identity, namespace: ns.into(), pod_name: name.into(), ..Default::default() }
    }

    fn base() -> Flow {
        Flow {
            time_ns: 1_710_415_361_654_000_000,
            verdict: "FORWARDED".into(),
            ip: FlowIp { source: "10.0.1.2".parse().unwrap(), destination: "10.0.2.3".parse().unwrap() },
            l4: FlowL4 { protocol: "TCP".into(), source_port: 50976, destination_port: 80, flags: vec!["SYN".into()] },
            source: pod("default", "client", 18901),
            destination: pod("web", "nginx-1", 4437),
            event_type: "trace".into(),
            observation_point: "to-endpoint".into(),
            ..Default::default()
        }
    }

    #[test]
    fn lines_look_like_hubbles() {
        let trace = base();
        let denied = Flow {
            event_type: "policy-verdict".into(),
            observation_point: "policy-verdict:none".into(),
            verdict: "DROPPED".into(),
            traffic_direction: "INGRESS".into(),
            policy_verdict: "DENIED".into(),
            ..base()
        };
        let drop = Flow {
            event_type: "drop".into(),
            observation_point: "Policy denied".into(),
            verdict: "DROPPED".into(),
            ..base()
        };
        let world = Flow {
            destination: FlowEndpoint { identity: 2, ..Default::default() },
            ip: FlowIp { source: "10.0.1.2".parse().unwrap(), destination: "8.8.8.8".parse().unwrap() },
            l4: FlowL4 { protocol: "UDP".into(), source_port: 5000, destination_port: 53, flags: vec![] },
            observation_point: "to-stack".into(),
            ..base()
        };
        let cases = [
            (trace, "Mar 14 11:22:41.654: default/client:50976 (ID:18901) -> web/nginx-1:80 (ID:4437) to-endpoint FORWARDED (TCP Flags: SYN)"),
            (denied, "Mar 14 11:22:41.654: default/client:50976 (ID:18901) <> web/nginx-1:80 (ID:4437) policy-verdict:none INGRESS DENIED (TCP Flags: SYN)"),
            (drop, "Mar 14 11:22:41.654: default/client:50976 (ID:18901) -> web/nginx-1:80 (ID:4437) Policy denied DROPPED (TCP Flags: SYN)"),
            (world, "Mar 14 11:22:41.654: default/client:5000 (ID:18901) -> 8.8.8.8:53 (world) to-stack FORWARDED (UDP)"),
        ];
        for (flow, want) in cases {
            assert_eq!(line(&flow), want);
        }
    }
}
