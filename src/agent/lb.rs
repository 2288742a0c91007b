//! The agent's load-balancer wiring: the LB maps' group in the agent's map manager (over the pinned
//! kernel maps), its writer, and the services controller that fills it.

use std::path::Path;
use std::time::Duration;

use beeline_common::lb::{LbConfig, LB_ALG_MAGLEV, LB_ALG_RANDOM};

use crate::config::{Config, LbAlgorithm};
use crate::controllers::agent::services::{LbTables, ServicesSync};
use crate::controllers::agent::services_watch;
use crate::datapath::lb_tables;
use crate::datapath::manager::backend::BackendError;
use crate::datapath::manager::kernel::{KernelLpmMap, KernelMap};
use crate::datapath::manager::maps::{
    self, Lb4Backends, Lb4Maglev, Lb4RevNat, Lb4Services, Lb4SourceRange, Lb6Backends, Lb6RevNat, Lb6Services,
    LbAffinityMatch,
};
use crate::datapath::manager::writer::{GroupWriter, WriterOptions};
use crate::datapath::manager::{MapManager, Owner};
use crate::runtime::runner::Runner;
use crate::services::ServicesConfig;

/// How long the services controller batches changes into one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Opens (or creates) the LB maps under `pin_dir` and adds the writer and the services controller
/// (row owner `owner`) to `runner`.
pub fn start(
    config: &Config,
    manager: &MapManager,
    owner: Owner,
    pin_dir: &Path,
    node_name: &str,
    client: kube::Client,
    runner: &mut Runner,
) -> Result<(), BackendError> {
    let (tables, writer) = open_tables(manager, pin_dir)?;
    let services_config = ServicesConfig::from_config(config, node_name);
    write_lb_config(pin_dir, &services_config);
    let (health_tx, health_rx) = tokio::sync::watch::channel(Default::default());
    let sync = ServicesSync::new(owner, tables, services_config).with_health_checks(health_tx);

    let token = runner.shutdown_token();
    let t = token.clone();
    runner.spawn("health-check-node-ports", async move {
        super::health_check::serve(health_rx, t).await;
        Ok(())
    });
    let t = token.clone();
    runner.spawn("lb-map-writer", async move {
        writer.run(WriterOptions::default(), t).await;
        Ok(())
    });
    let controller = services_watch::run(client, node_name.to_string(), sync, DEBOUNCE, token);
    runner.spawn("services", async move { Ok(controller.await?) });
    Ok(())
}

/// Opens (or creates) the pinned LB maps under `pin_dir` as one group of `manager`: the tables
/// the services controller fills and the group's writer. Shared by the agent and the benchmark.
pub fn open_tables(manager: &MapManager, pin_dir: &Path) -> Result<(LbTables, GroupWriter), BackendError> {
    let (name, order) = maps::LB_GROUP;
    let mut group = manager.group(name, order);
    // Dependency order: what the service slots refer to first.
    let tables = LbTables {
        backends: group.add::<Lb4Backends>(KernelMap::open_or_create::<Lb4Backends>(pin_dir)?)?,
        rev_nat: group.add::<Lb4RevNat>(KernelMap::open_or_create::<Lb4RevNat>(pin_dir)?)?,
        services: group.add::<Lb4Services>(KernelMap::open_or_create::<Lb4Services>(pin_dir)?)?,
        affinity_match: group.add::<LbAffinityMatch>(KernelMap::open_or_create::<LbAffinityMatch>(pin_dir)?)?,
        maglev: group.add::<Lb4Maglev>(KernelMap::open_or_create::<Lb4Maglev>(pin_dir)?)?,
        source_ranges: group.add::<Lb4SourceRange>(KernelLpmMap::open_or_create::<Lb4SourceRange>(pin_dir)?)?,
        // The IPv6 rows, added after the IPv4 ones in the same dependency order.
        backends6: group.add::<Lb6Backends>(KernelMap::open_or_create::<Lb6Backends>(pin_dir)?)?,
        rev_nat6: group.add::<Lb6RevNat>(KernelMap::open_or_create::<Lb6RevNat>(pin_dir)?)?,
        services6: group.add::<Lb6Services>(KernelMap::open_or_create::<Lb6Services>(pin_dir)?)?,
    };
    Ok((tables, group.build()))
}

/// Tells the datapath the node's default backend selection and Maglev table size. Without the
/// loaded datapath (no pinned config map) there is nothing to tell; a warning says so.
fn write_lb_config(pin_dir: &Path, cfg: &ServicesConfig) {
    let value = LbConfig {
        algorithm: match cfg.lb_algorithm {
            LbAlgorithm::Random => LB_ALG_RANDOM,
            LbAlgorithm::Maglev => LB_ALG_MAGLEV,
        },
        maglev_table_size: cfg.maglev_table_size,
    };
    if let Err(error) = lb_tables::write_lb_config(pin_dir, &value) {
        tracing::warn!(%error, "cannot write the datapath's LB configuration");
    }
}
