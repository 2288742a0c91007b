//! `beeline observe`'s filters as one predicate, with `hubble observe`'s meaning: every given
//! filter must hold (AND); `--pod`, `--namespace`, `--label` and `--port` match either side.

use super::flow::{Flow, FlowEndpoint};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowFilter {
    /// `[namespace/]pod-name-prefix` of the source (namespace `default` when omitted, as Hubble).
    pub from_pod: Option<String>,
    pub to_pod: Option<String>,
    /// Either side.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// `key=value` (or a bare `key`) on either side; the label source prefix (`k8s:`) is ignored.
    pub labels: Vec<String>,
    /// `FORWARDED` / `DROPPED`.
    pub verdict: Option<String>,
    /// `trace`, `drop`, `policy-verdict` (any of them).
    pub types: Vec<String>,
    /// `tcp`, `udp`, `icmp` (case-insensitive; `icmp` matches ICMPv4).
    pub protocol: Option<String>,
    pub port: Option<u16>,
}

fn pod_matches(ep: &FlowEndpoint, spec: &str) -> bool {
    let (ns, prefix) = spec.split_once('/').unwrap_or(("default", spec));
    !ep.pod_name.is_empty() && ep.namespace == ns && ep.pod_name.starts_with(prefix)
}

fn label_matches(ep: &FlowEndpoint, want: &str) -> bool {
    ep.labels.iter().any(|l| {
        let bare = l.split_once(':').map(|(_, rest)| rest).unwrap_or(l);
        bare == want || (!want.contains('=') && bare.split('=').next() == Some(want))
    })
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        let either = |pred: &dyn Fn(&FlowEndpoint) -> bool| pred(&f.source) || pred(&f.destination);
        self.from_pod.as_deref().is_none_or(|p| pod_matches(&f.source, p))
            && self.to_pod.as_deref().is_none_or(|p| pod_matches(&f.destination, p))
            && self.pod.as_deref().is_none_or(|p| either(&|ep| pod_matches(ep, p)))
            && self.namespace.as_deref().is_none_or(|ns| either(&|ep| ep.namespace == ns))
            && self.labels.iter().all(|l| either(&|ep| label_matches(ep, l)))
            && self.verdict.as_deref().is_none_or(|v| f.verdict.eq_ignore_ascii_case(v))
            && (self.types.is_empty() || self.types.iter().any(|t| f.event_type.eq_ignore_ascii_case(t)))
            && self.protocol.as_deref().is_none_or(|p| {
                let p = if p.eq_ignore_ascii_case("icmp") { "icmpv4" } else { p };
                f.l4.protocol.eq_ignore_ascii_case(p)
            })
            && self.port.is_none_or(|p| f.l4.source_port == p || f.l4.destination_port == p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::FlowL4;

    fn ep(ns: &str, pod: &str, label: &str) -> FlowEndpoint {
        FlowEndpoint {
            identity: 1000,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: vec![format!("k8s:{label}")],
            ..Default::default()
        }
    }

    fn flow(verdict: &str, ty: &str, proto: &str, dport: u16) -> Flow {
        Flow {
            verdict: verdict.into(),
            event_type: ty.into(),
            source: ep("default", "client-7d9f", "app=client"),
            destination: ep("web", "nginx-1", "app=nginx"),
            l4: FlowL4 { protocol: proto.into(), source_port: 40000, destination_port: dport, flags: vec![] },
            ..Default::default()
        }
    }

    #[test]
    fn each_filter_selects_exactly_its_flows() {
        let f = flow("FORWARDED", "trace", "TCP", 80);
        let s = |v: &str| Some(v.to_string());
        let cases: Vec<(&str, FlowFilter, bool)> = vec![
            ("no filter", FlowFilter::default(), true),
            ("from-pod prefix, default ns", FlowFilter { from_pod: s("client"), ..Default::default() }, true),
            ("from-pod is the source only", FlowFilter { from_pod: s("web/nginx"), ..Default::default() }, false),
            ("from-pod other ns", FlowFilter { from_pod: s("kube-system/client"), ..Default::default() }, false),
            ("to-pod", FlowFilter { to_pod: s("web/nginx-1"), ..Default::default() }, true),
            ("to-pod wrong", FlowFilter { to_pod: s("client"), ..Default::default() }, false),
            ("pod either side", FlowFilter { pod: s("web/nginx"), ..Default::default() }, true),
            ("namespace either side", FlowFilter { namespace: s("web"), ..Default::default() }, true),
            ("namespace none", FlowFilter { namespace: s("kube-system"), ..Default::default() }, false),
            ("label k=v", FlowFilter { labels: vec!["app=nginx".into()], ..Default::default() }, true),
            ("label key", FlowFilter { labels: vec!["app".into()], ..Default::default() }, true),
            ("label absent", FlowFilter { labels: vec!["app=db".into()], ..Default::default() }, false),
            ("verdict", FlowFilter { verdict: s("forwarded"), ..Default::default() }, true),
            ("verdict other", FlowFilter { verdict: s("DROPPED"), ..Default::default() }, false),
            ("type", FlowFilter { types: vec!["drop".into(), "trace".into()], ..Default::default() }, true),
            ("type other", FlowFilter { types: vec!["policy-verdict".into()], ..Default::default() }, false),
            ("protocol", FlowFilter { protocol: s("tcp"), ..Default::default() }, true),
            ("protocol other", FlowFilter { protocol: s("udp"), ..Default::default() }, false),
            ("port dst", FlowFilter { port: Some(80), ..Default::default() }, true),
            ("port src", FlowFilter { port: Some(40000), ..Default::default() }, true),
            ("port other", FlowFilter { port: Some(443), ..Default::default() }, false),
            (
                "AND of filters",
                FlowFilter { from_pod: s("client"), verdict: s("DROPPED"), ..Default::default() },
                false,
            ),
        ];
        for (name, filter, want) in cases {
            assert_eq!(filter.matches(&f), want, "{name}");
        }
        let icmp = flow("DROPPED", "drop", "ICMPv4", 0);
        assert!(FlowFilter { protocol: s("icmp"), verdict: s("DROPPED"), ..Default::default() }.matches(&icmp));
    }

    #[test]
    fn a_pod_filter_never_matches_an_address_without_a_pod() {
        let mut f = flow("FORWARDED", "trace", "TCP", 80);
        f.source = FlowEndpoint { identity: 2, ..Default::default() };
        assert!(!FlowFilter { from_pod: Some(String::new()), ..Default::default() }.matches(&f));
        assert!(FlowFilter { to_pod: Some("web/".into()), ..Default::default() }.matches(&f));
    }
}
