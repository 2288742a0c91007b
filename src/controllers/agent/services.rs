//! The services controller's map-manager side: restores LB IDs from what the pinned maps held at
//! start, and turns each full computation of [`crate::services::desired_state`] into
//! `replace_owner` calls on the LB tables. The first call reports the owner's initial pass, which is
//! what lets the manager prune rows of Services deleted while the agent was down — never earlier.
//!
//! Still to come (not here yet): the reflector loop (Services, EndpointSlices, Nodes, Pods) that calls
//! [`ServicesSync::sync`] once every reflector has listed, then on every change (debounced).

use beeline_common::lb::{Lb4SrcRangeData, Lb4SrcRangeKey, LbAffinityMatchKey, LbMaglevKey, SRC_RANGE_STATIC_PREFIX};

use crate::agent::health_check::HealthChecks;
use crate::datapath::manager::maps::{
    Lb4Backends, Lb4Maglev, Lb4RevNat, Lb4Services, Lb4SourceRange, Lb6Backends, Lb6RevNat, Lb6Services,
    LbAffinityMatch,
};
use crate::datapath::manager::{Owner, TableHandle};
use crate::services::{desired_state, health_checks, DesiredLb, Inputs, LbIds, ServicesConfig, SourceRange};

/// The LB tables the services controller writes.
#[derive(Clone)]
pub struct LbTables {
    pub backends: TableHandle<Lb4Backends>,
    pub rev_nat: TableHandle<Lb4RevNat>,
    pub services: TableHandle<Lb4Services>,
    pub affinity_match: TableHandle<LbAffinityMatch>,
    pub maglev: TableHandle<Lb4Maglev>,
    pub source_ranges: TableHandle<Lb4SourceRange>,
    pub backends6: TableHandle<Lb6Backends>,
    pub rev_nat6: TableHandle<Lb6RevNat>,
    pub services6: TableHandle<Lb6Services>,
}

/// Owns the ID state between passes.
pub struct ServicesSync {
    owner: Owner,
    tables: LbTables,
    ids: LbIds,
    cfg: ServicesConfig,
    passes: u64,
    /// Where the health-check node port answers go (the agent's servers), if anywhere.
    health_checks: Option<tokio::sync::watch::Sender<HealthChecks>>,
}

impl ServicesSync {
    /// Restores IDs from the tables' restored rows; problems (unreadable entries) are logged.
    pub fn new(owner: Owner, tables: LbTables, cfg: ServicesConfig) -> Self {
        let mut ids = LbIds::new();
        let problems = ids.restore_families(
            tables.services.restored(),
            tables.backends.restored(),
            tables.services6.restored(),
            tables.backends6.restored(),
        );
        for problem in problems {
            tracing::warn!(%problem, "LB ID not restored");
        }
        let (rev_nat, backends) = ids.len();
        tracing::info!(rev_nat, backends, "restored LB IDs from the pinned maps");
        Self { owner, tables, ids, cfg, passes: 0, health_checks: None }
    }

    /// Also publishes the health-check node port answers of every pass to `tx`.
    pub fn with_health_checks(mut self, tx: tokio::sync::watch::Sender<HealthChecks>) -> Self {
        self.health_checks = Some(tx);
        self
    }

    /// One full pass over a complete view of the cluster. Returns what was submitted.
    pub fn sync(&mut self, inputs: &Inputs<'_>) -> DesiredLb {
        let _span = tracing::info_span!("services_sync", pass = self.passes).entered();
        let desired = desired_state(inputs, &self.cfg, &mut self.ids);
        for note in &desired.notes {
            tracing::info!(object = %note.object, "{}", note.message);
        }
        // Order does not matter here: the manager's LB group writes backends, rev-NAT, slots, master.
        self.tables.backends.replace_owner(&self.owner, desired.backends.iter().map(|(k, v)| (*k, *v)));
        self.tables.rev_nat.replace_owner(&self.owner, desired.rev_nat.iter().map(|(k, v)| (*k, *v)));
        self.tables.services.replace_owner(&self.owner, desired.services.iter().map(|(k, v)| (*k, *v)));
        self.tables.backends6.replace_owner(&self.owner, desired.backends6.iter().map(|(k, v)| (*k, *v)));
        self.tables.rev_nat6.replace_owner(&self.owner, desired.rev_nat6.iter().map(|(k, v)| (*k, *v)));
        self.tables.services6.replace_owner(&self.owner, desired.services6.iter().map(|(k, v)| (*k, *v)));
        let affinity = desired
            .affinity_match
            .iter()
            .map(|m| (LbAffinityMatchKey { backend_id: m.backend_id, rev_nat_id: m.rev_nat_id, pad: 0 }, 0u8));
        self.tables.affinity_match.replace_owner(&self.owner, affinity);
        self.tables.maglev.replace_owner(&self.owner, maglev_rows(&desired));
        let ranges = desired.source_ranges.iter().map(|r| (source_range_key(r), 0u8));
        self.tables.source_ranges.replace_owner(&self.owner, ranges);
        if let Some(tx) = &self.health_checks {
            let answers = health_checks(inputs.services, inputs.endpoint_slices, &self.cfg.node_name);
            tx.send_if_modified(|current| {
                let changed = *current != answers;
                *current = answers;
                changed
            });
        }
        if self.passes == 0 {
            self.owner.initial_pass_done();
        }
        self.passes += 1;
        desired
    }
}

/// The LPM key of a `loadBalancerSourceRanges` entry.
pub fn source_range_key(range: &SourceRange) -> Lb4SrcRangeKey {
    Lb4SrcRangeKey {
        prefixlen: SRC_RANGE_STATIC_PREFIX + u32::from(range.cidr.prefix_len()),
        data: Lb4SrcRangeData {
            rev_nat_id: range.rev_nat_id,
            pad: 0,
            address: u32::from(range.cidr.network()).to_be(),
        },
    }
}

/// The flat Maglev map's rows: every entry of every service's lookup table.
fn maglev_rows(desired: &DesiredLb) -> Vec<(LbMaglevKey, u32)> {
    desired
        .maglev
        .iter()
        .flat_map(|(rev_nat_id, table)| {
            table.iter().enumerate().map(|(index, backend_id)| {
                (LbMaglevKey { rev_nat_id: *rev_nat_id, pad: 0, index: index as u32 }, *backend_id)
            })
        })
        .collect()
}

#[cfg(test)]
impl LbTables {
    /// The LB tables of `group` over a fake kernel's maps (which survive between "agent lifetimes"
    /// like pinned maps), for the controller's tests.
    pub(crate) fn over_fake(
        group: &mut crate::datapath::manager::GroupBuilder,
        kernel: &crate::datapath::manager::fake::FakeKernel,
    ) -> LbTables {
        use crate::datapath::manager::MapDef;
        LbTables {
            backends: group.add::<Lb4Backends>(kernel.map(Lb4Backends::NAME)).unwrap(),
            rev_nat: group.add::<Lb4RevNat>(kernel.map(Lb4RevNat::NAME)).unwrap(),
            services: group.add::<Lb4Services>(kernel.map(Lb4Services::NAME)).unwrap(),
            affinity_match: group.add::<LbAffinityMatch>(kernel.map(LbAffinityMatch::NAME)).unwrap(),
            maglev: group.add::<Lb4Maglev>(kernel.map(Lb4Maglev::NAME)).unwrap(),
            source_ranges: group.add::<Lb4SourceRange>(kernel.map(Lb4SourceRange::NAME)).unwrap(),
            backends6: group.add::<Lb6Backends>(kernel.map(Lb6Backends::NAME)).unwrap(),
            rev_nat6: group.add::<Lb6RevNat>(kernel.map(Lb6RevNat::NAME)).unwrap(),
            services6: group.add::<Lb6Services>(kernel.map(Lb6Services::NAME)).unwrap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use beeline_common::lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    use super::*;
    use crate::config::LbAlgorithm;
    use crate::datapath::manager::fake::{FakeKernel, Faults};
    use crate::datapath::manager::writer::GroupWriter;
    use crate::datapath::manager::{maps, ManagerOptions, MapDef, MapManager};

    fn cfg() -> ServicesConfig {
        ServicesConfig {
            node_name: "node-a".into(),
            extra_node_addresses: vec![],
            kube_proxy_replacement: true,
            node_port_range: (30000, 32767),
            lb_algorithm: LbAlgorithm::Random,
            service_proxy_name: None,
            maglev_table_size: 251,
        }
    }

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .unwrap()
    }

    fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
        let endpoints: Vec<_> =
            ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// One agent lifetime on `kernel` (whose maps survive between lifetimes, like pinned maps).
    fn agent(kernel: &FakeKernel) -> (ServicesSync, GroupWriter) {
        let manager = MapManager::new(ManagerOptions::default());
        let owner = manager.register_owner("services");
        let (name, order) = maps::LB_GROUP;
        let mut group = manager.group(name, order);
        let tables = LbTables::over_fake(&mut group, kernel);
        (ServicesSync::new(owner, tables, cfg()), group.build())
    }

    fn kernel_services(kernel: &FakeKernel) -> BTreeMap<Lb4Key, Lb4Service> {
        kernel.contents(Lb4Services::NAME)
    }

    #[test]
    fn restart_keeps_forwarding_restores_ids_and_prunes_what_was_deleted_meanwhile() {
        let kernel = FakeKernel::new(Faults::None);
        let services = vec![service("a", "10.96.0.1"), service("b", "10.96.0.2")];
        let slices = vec![slice("a", &["10.0.1.1", "10.0.1.2"]), slice("b", &["10.0.1.3"])];

        let (mut sync, mut writer) = agent(&kernel);
        let first = sync.sync(&Inputs { services: &services, endpoint_slices: &slices, ..Default::default() });
        writer.sync_once(Instant::now());
        assert_eq!(kernel_services(&kernel), first.services, "the kernel holds exactly the desired rows");
        assert_eq!(kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME), first.backends);

        // Agent down: nothing changes in the maps. Meanwhile "b" is deleted and "c" created.
        drop((sync, writer));
        let (mut sync, mut writer) = agent(&kernel);
        // Before the first full pass the restarted writer must not touch the pinned rows.
        writer.sync_once(Instant::now());
        assert_eq!(kernel_services(&kernel), first.services, "nothing torn down before the first full sync");

        let services = vec![service("a", "10.96.0.1"), service("c", "10.96.0.3")];
        let slices = vec![slice("a", &["10.0.1.1", "10.0.1.2"]), slice("c", &["10.0.1.4"])];
        let second = sync.sync(&Inputs { services: &services, endpoint_slices: &slices, ..Default::default() });
        for _ in 0..3 {
            writer.sync_once(Instant::now());
        }
        assert_eq!(kernel_services(&kernel), second.services, "b pruned, c added");
        assert_eq!(kernel.contents::<Lb4BackendKey, Lb4Backend>(Lb4Backends::NAME), second.backends);

        let id_of = |d: &DesiredLb, ip: &str| d.frontends.iter().find(|f| f.addr.ip.to_string() == ip).map(|f| f.id);
        assert_eq!(
            id_of(&second, "10.96.0.1"),
            id_of(&first, "10.96.0.1"),
            "a keeps its rev-NAT ID across the restart"
        );
        let backend_ids = |d: &DesiredLb| -> Vec<u32> { d.frontends[0].backends.iter().map(|b| b.0).collect() };
        assert_eq!(backend_ids(&second), backend_ids(&first), "a's backends keep their IDs");
        let b_id = id_of(&first, "10.96.0.2").unwrap();
        assert_ne!(id_of(&second, "10.96.0.3"), Some(b_id), "b's ID is not reused in the pass that frees it");
        let rev_nat: BTreeMap<beeline_common::lb::Lb4RevNatKey, beeline_common::lb::Lb4ReverseNat> =
            kernel.contents(Lb4RevNat::NAME);
        assert!(!rev_nat.contains_key(&beeline_common::lb::Lb4RevNatKey { rev_nat_index: b_id }), "b's rev-NAT pruned");
        assert_eq!(rev_nat.len(), 2);
    }
}
