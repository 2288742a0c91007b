//! Synthetic cluster state for the services benchmark: `n` ClusterIP Services with `b` ready
//! endpoints each, numbered the way the kube-proxy baseline's `gen_rules.py` numbers them
//! (service `i` → ClusterIP `10.96.0.1 + i` port 80, endpoint `j` → `10.244.0.1 + i·b + j` port
//! 8080), so both sides program the same shape. One service can be pointed at real pods (the ones
//! the connection-path measurement talks to).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::services::frontends::SERVICE_NAME_LABEL;

/// First ClusterIP (service 0), as in the baseline.
pub const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// First endpoint address (service 0, endpoint 0), as in the baseline.
pub const POD_BASE: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
pub const NAMESPACE: &str = "bench";

/// An extra port, only on a service with real backends: the bulk-transfer (throughput) sink.
pub const BULK_PORT: u16 = 5201;

/// The cluster objects of one benchmark state.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Number of services.
    pub services: u32,
    /// Endpoints per service.
    pub backends: u32,
    /// The service backed by real pods (index, pod addresses): the one the connection-path
    /// measurement talks to. It also gets the bulk-transfer port.
    pub probe: Option<(u32, Vec<Ipv4Addr>)>,
    /// Services whose endpoint 0 moved to another address (index → generation), the baseline's
    /// "change 1 backend".
    pub moved_backend: BTreeMap<u32, u32>,
}

impl Shape {
    pub fn new(services: u32, backends: u32) -> Self {
        Self { services, backends, probe: None, moved_backend: BTreeMap::new() }
    }

    /// With service `index` backed by `pods`.
    pub fn with_probe(mut self, index: u32, pods: Vec<Ipv4Addr>) -> Self {
        self.probe = Some((index, pods));
        self
    }

    /// With endpoint 0 of service `index` at its `generation`-th replacement address.
    pub fn with_moved_backend(mut self, index: u32, generation: u32) -> Self {
        self.moved_backend.insert(index, generation);
        self
    }

    /// The objects (services and their slices, in index order).
    pub fn objects(&self) -> Objects {
        let mut out = Objects::default();
        for i in 0..self.services {
            let (ports, addrs): (&[(&str, u16, u16)], Vec<Ipv4Addr>) = match &self.probe {
                Some((p, pods)) if *p == i => {
                    (&[("http", SERVICE_PORT, TARGET_PORT), ("bulk", BULK_PORT, BULK_PORT)], pods.clone())
                }
                _ => {
                    let generation = |j: u32| if j == 0 { self.moved_backend.get(&i).copied().unwrap_or(0) } else { 0 };
                    let addrs = (0..self.backends).map(|j| endpoint_ip(i, self.backends, j, generation(j))).collect();
                    (&[("http", SERVICE_PORT, TARGET_PORT)], addrs)
                }
            };
            out.services.push(service(i, ports));
            out.endpoint_slices.push(slice(i, ports, &addrs));
        }
        out
    }
}

/// ClusterIP of service `index`.
pub fn cluster_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SERVICE_BASE) + index)
}

/// Endpoint `j` of service `index`; `generation` moves it to another /16 (a "changed backend"),
/// like the baseline's `with_ep0`.
pub fn endpoint_ip(index: u32, backends: u32, j: u32, generation: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POD_BASE) + index * backends + j + generation * 65536)
}

pub fn service_name(index: u32) -> String {
    format!("svc-{index}")
}

fn meta(name: String, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta { namespace: Some(NAMESPACE.into()), name: Some(name), labels, ..Default::default() }
}

fn service(index: u32, ports: &[(&str, u16, u16)]) -> Service {
    let ip = cluster_ip(index).to_string();
    Service {
        metadata: meta(service_name(index), None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port, target)| ServicePort {
                        name: Some((*name).into()),
                        port: i32::from(*port),
                        target_port: Some(IntOrString::Int(i32::from(*target))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(index: u32, ports: &[(&str, u16, u16)], addrs: &[Ipv4Addr]) -> EndpointSlice {
    let labels = BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), service_name(index))]);
    EndpointSlice {
        metadata: meta(format!("{}-0", service_name(index)), Some(labels)),
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(name, _, target)| EndpointPort {
                    name: Some((*name).into()),
                    port: Some(i32::from(*target)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: addrs
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbAlgorithm;
    use crate::services::{desired_state, Inputs, LbIds, ServicesConfig};

    fn cfg() -> ServicesConfig {
        ServicesConfig {
            node_name: "bench-node".into(),
            extra_node_addresses: vec![],
            kube_proxy_replacement: true,
            node_port_range: (30000, 32767),
            lb_algorithm: LbAlgorithm::Random,
            service_proxy_name: None,
            maglev_table_size: 251,
        }
    }

    #[test]
    fn addresses_follow_the_baseline_numbering() {
        let cases = [
            (cluster_ip(0), "10.96.0.1"),
            (cluster_ip(9_999), "10.96.39.16"),
            (endpoint_ip(0, 3, 0, 0), "10.244.0.1"),
            // Values printed by the baseline's `gen_rules.make_services(10000, 3)[-1].eps`.
            (endpoint_ip(9_999, 3, 0, 0), "10.244.117.46"),
            (endpoint_ip(9_999, 3, 2, 0), "10.244.117.48"),
            (endpoint_ip(9_999, 3, 0, 1), "10.245.117.46"),
        ];
        for (got, want) in cases {
            assert_eq!(got.to_string(), want);
        }
    }

    /// The objects become exactly the rows the benchmark expects: per service one rev-NAT entry,
    /// a master plus one slot per backend, and one backend entry per endpoint; the overridden
    /// service points at the given pods on both of its ports.
    #[test]
    fn objects_program_one_frontend_per_service_with_its_backends() {
        let pods = vec![Ipv4Addr::new(10, 246, 0, 11), Ipv4Addr::new(10, 246, 0, 12)];
        let cases = [(1, 3, None), (50, 3, None), (20, 1, Some(19)), (7, 2, Some(0))];
        for (n, b, probe) in cases {
            let mut shape = Shape::new(n, b);
            if let Some(p) = probe {
                shape = shape.with_probe(p, pods.clone());
            }
            let o = shape.objects();
            let inputs = Inputs { services: &o.services, endpoint_slices: &o.endpoint_slices, ..Default::default() };
            let d = desired_state(&inputs, &cfg(), &mut LbIds::new());
            assert!(d.notes.is_empty(), "{:?}", d.notes);
            let probe_frontends = usize::from(probe.is_some()) * 2;
            let plain = n as usize - usize::from(probe.is_some());
            assert_eq!(d.frontends.len(), plain + probe_frontends, "n={n} b={b}");
            assert_eq!(d.rev_nat.len(), d.frontends.len());
            let slots = plain * (b as usize + 1) + probe_frontends * (pods.len() + 1);
            assert_eq!(d.services.len(), slots, "n={n} b={b}");
            let backends = plain * b as usize + if probe.is_some() { 2 * pods.len() } else { 0 };
            assert_eq!(d.backends.len(), backends, "n={n} b={b}");
            if let Some(p) = probe {
                let fe =
                    d.frontends.iter().find(|f| f.addr.ip == cluster_ip(p) && f.addr.port == SERVICE_PORT).unwrap();
                let ips: Vec<std::net::IpAddr> = fe.backends.iter().map(|b| b.1.ip).collect();
                let pods: Vec<std::net::IpAddr> = pods.iter().map(|p| (*p).into()).collect();
                assert_eq!(ips, pods);
                assert!(fe.backends.iter().all(|b| b.1.port == TARGET_PORT));
            }
        }
    }

    /// Moving one backend changes exactly one backend address: the old one leaves, the new one
    /// comes, every other row stays (what the incremental measurement relies on).
    #[test]
    fn a_moved_backend_changes_one_address_only() {
        let state = |shape: Shape| {
            let o = shape.objects();
            let inputs = Inputs { services: &o.services, endpoint_slices: &o.endpoint_slices, ..Default::default() };
            let d = desired_state(&inputs, &cfg(), &mut LbIds::new());
            d.frontends
                .iter()
                .flat_map(|f| f.backends.iter().map(|b| b.1.ip))
                .collect::<std::collections::BTreeSet<_>>()
        };
        let before = state(Shape::new(10, 3));
        let after = state(Shape::new(10, 3).with_moved_backend(9, 1));
        let gone: Vec<_> = before.difference(&after).collect();
        let new: Vec<_> = after.difference(&before).collect();
        assert_eq!(gone, vec![&endpoint_ip(9, 3, 0, 0)]);
        assert_eq!(new, vec![&endpoint_ip(9, 3, 0, 1)]);
        assert_eq!(state(Shape::new(10, 3).with_moved_backend(9, 0)), before, "generation 0 is the original");
    }
}
