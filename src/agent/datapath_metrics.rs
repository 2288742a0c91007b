//! Datapath counters read from the pinned maps at scrape time (exact at the moment of the scrape,
//! no polling task): forwarded packets/bytes by direction (Cilium's `cilium_forward_count_total`,
//! `cilium_forward_bytes_total`) and map pressure (`cilium_bpf_map_pressure{map_name}`).

use std::path::PathBuf;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::datapath::pressure::MapPressure;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map_name: String,
}

#[derive(Debug)]
pub struct DatapathCollector {
    pin_dir: PathBuf,
}

impl DatapathCollector {
    pub fn register(pin_dir: PathBuf, registry: &mut Registry) {
        registry.register_collector(Box::new(Self { pin_dir }));
    }
}

/// The families one scrape encodes, from what the maps held (pure: tested without a kernel).
struct Families {
    forward_count: Family<DirectionLabels, Counter>,
    forward_bytes: Family<DirectionLabels, Counter>,
    pressure: Family<MapLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    services: Family<FamilyLabels, Gauge>,
    backends: Family<FamilyLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: String,
}

fn families(
    forwards: &[(u32, beeline_common::datapath::DropStats)],
    maps: &[MapPressure],
    lb4: Option<(u64, u64)>,
    lb6: Option<(u64, u64)>,
) -> Families {
    let f = Families {
        forward_count: Family::default(),
        forward_bytes: Family::default(),
        pressure: Family::default(),
        services: Family::default(),
        backends: Family::default(),
    };
    for (family, programmed) in [("ipv4", lb4), ("ipv6", lb6)] {
        if let Some((services, backends)) = programmed {
            let labels = FamilyLabels { family: family.into() };
            f.services.get_or_create(&labels).set(services as i64);
            f.backends.get_or_create(&labels).set(backends as i64);
        }
    }
    for (dir, stats) in forwards {
        let labels = DirectionLabels { direction: beeline_common::events::metric_dir::name(*dir).to_string() };
        f.forward_count.get_or_create(&labels).inc_by(stats.packets);
        f.forward_bytes.get_or_create(&labels).inc_by(stats.bytes);
    }
    for m in maps {
        f.pressure.get_or_create(&MapLabels { map_name: m.name.clone() }).set(m.pressure());
    }
    f
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A datapath not loaded (yet) has nothing to report; the scrape still answers.
        let forwards = crate::datapath::events::read_forwards(&self.pin_dir).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "forward counters unavailable");
            Vec::new()
        });
        let maps = crate::datapath::pressure::read_all(&self.pin_dir).unwrap_or_default();
        let lb4 = crate::datapath::pressure::lb4_programmed(&self.pin_dir)
            .inspect_err(|e| tracing::debug!(error = %e, "load-balancer maps unavailable"))
            .ok();
        let lb6 = crate::datapath::pressure::lb6_programmed(&self.pin_dir)
            .inspect_err(|e| tracing::debug!(error = %e, "IPv6 load-balancer maps unavailable"))
            .ok();
        let f = families(&forwards, &maps, lb4, lb6);
        let desc = |e: &mut DescriptorEncoder, name, help, m: &dyn EncodeMetric| -> Result<(), std::fmt::Error> {
            m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
        };
        desc(&mut encoder, "forward_count", "Packets forwarded by the datapath, by direction", &f.forward_count)?;
        desc(&mut encoder, "forward_bytes", "Bytes forwarded by the datapath, by direction", &f.forward_bytes)?;
        desc(&mut encoder, "bpf_map_pressure", "Fill ratio (entries / max entries) of each BPF map", &f.pressure)?;
        desc(&mut encoder, "services", "Service frontends programmed in the datapath", &f.services)?;
        desc(&mut encoder, "service_backends", "Service backends programmed in the datapath", &f.backends)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beeline_common::{datapath::DropStats, events::metric_dir};

    #[test]
    fn scrape_families_carry_the_map_values() {
        let forwards = [
            (metric_dir::INGRESS, DropStats { packets: 7, bytes: 700 }),
            (metric_dir::EGRESS, DropStats { packets: 3, bytes: 252 }),
        ];
        let maps = [MapPressure { name: "beeline_lxc".into(), entries: 4, max_entries: 16 }];
        let mut registry = Registry::with_prefix("beeline_agent");
        let f = families(&forwards, &maps, Some((2, 5)), Some((1, 2)));
        registry.register("services", "s", f.services);
        registry.register("service_backends", "b", f.backends);
        registry.register("forward_count", "c", f.forward_count);
        registry.register("forward_bytes", "b", f.forward_bytes);
        registry.register("bpf_map_pressure", "p", f.pressure);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "beeline_agent_forward_count_total{direction=\"INGRESS\"} 7",
            "beeline_agent_forward_count_total{direction=\"EGRESS\"} 3",
            "beeline_agent_forward_bytes_total{direction=\"INGRESS\"} 700",
            "beeline_agent_bpf_map_pressure{map_name=\"beeline_lxc\"} 0.25",
            "beeline_agent_services{family=\"ipv4\"} 2",
            "beeline_agent_service_backends{family=\"ipv4\"} 5",
            "beeline_agent_services{family=\"ipv6\"} 1",
            "beeline_agent_service_backends{family=\"ipv6\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
