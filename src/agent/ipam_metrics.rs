//! IPAM usage of this node per pool and family, read from the allocator when `/metrics` is
//! scraped: `beeline_agent_ipam_addresses{pool,family,state="used"|"available"}`. `available` is
//! what the pool's CIDRs on this node can still give (2^n − 2 per CIDR, less what is used), so a
//! dashboard sees a node running out before its pods stay Pending.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::controllers::agent::{ipam_state::PoolUsage, pod_ipam::PodIpam};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    family: String,
    state: String,
}

pub struct IpamCollector {
    ipam: Arc<dyn PodIpam>,
}

impl std::fmt::Debug for IpamCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpamCollector")
    }
}

impl IpamCollector {
    pub fn register(ipam: Arc<dyn PodIpam>, registry: &mut Registry) {
        registry.register_collector(Box::new(Self { ipam }));
    }
}

/// The gauges of one scrape (pure: tested without an allocator).
fn gauges(pools: &[PoolUsage]) -> Family<PoolLabels, Gauge> {
    let family: Family<PoolLabels, Gauge> = Family::default();
    for p in pools {
        let labels = |state: &str| PoolLabels {
            pool: p.pool.clone(),
            family: p.family.to_string().to_ascii_lowercase(),
            state: state.into(),
        };
        let clamp = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
        family.get_or_create(&labels("used")).set(clamp(p.used));
        family.get_or_create(&labels("available")).set(clamp(p.capacity.saturating_sub(p.used)));
    }
    family
}

impl Collector for IpamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = gauges(&self.ipam.listing().pools);
        let help = "Pod addresses of this node by pool, family and state (used, available)";
        g.encode(encoder.encode_descriptor("ipam_addresses", help, None, g.metric_type())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Family as IpFamily;

    #[test]
    fn each_pool_and_family_reports_used_and_available() {
        let pools = [
            PoolUsage { pool: "default".into(), family: IpFamily::V4, used: 6, capacity: 254 },
            PoolUsage { pool: "tenant-a".into(), family: IpFamily::V6, used: 3, capacity: 2 },
        ];
        let mut registry = Registry::with_prefix("beeline_agent");
        registry.register("ipam_addresses", "h", gauges(&pools));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "beeline_agent_ipam_addresses{pool=\"default\",family=\"ipv4\",state=\"used\"} 6",
            "beeline_agent_ipam_addresses{pool=\"default\",family=\"ipv4\",state=\"available\"} 248",
            "beeline_agent_ipam_addresses{pool=\"tenant-a\",family=\"ipv6\",state=\"used\"} 3",
            // More used than the CIDRs hold (a CIDR released under live addresses): none available.
            "beeline_agent_ipam_addresses{pool=\"tenant-a\",family=\"ipv6\",state=\"available\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
