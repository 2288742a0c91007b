//! The agent's load-balancer wiring: the LB maps' group in the agent's map manager (over the pinned
//! kernel maps), its writer, and the services controller that fills it.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::controllers::agent::services::{LbTables, ServicesSync};
use crate::controllers::agent::services_watch;
use crate::datapath::manager::backend::BackendError;
use crate::datapath::manager::kernel::KernelMap;
use crate::datapath::manager::maps::{self, Lb4Backends, Lb4RevNat, Lb4Services};
use crate::datapath::manager::writer::WriterOptions;
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
    let (name, order) = maps::LB_GROUP;
    let mut group = manager.group(name, order);
    // Dependency order: what the service slots refer to first.
    let tables = LbTables {
        backends: group.add::<Lb4Backends>(KernelMap::open_or_create::<Lb4Backends>(pin_dir)?)?,
        rev_nat: group.add::<Lb4RevNat>(KernelMap::open_or_create::<Lb4RevNat>(pin_dir)?)?,
        services: group.add::<Lb4Services>(KernelMap::open_or_create::<Lb4Services>(pin_dir)?)?,
    };
    let writer = group.build();
    let sync = ServicesSync::new(owner, tables, ServicesConfig::from_config(config, node_name));

    let token = runner.shutdown_token();
    let t = token.clone();
    runner.spawn("lb-map-writer", async move {
        writer.run(WriterOptions::default(), t).await;
        Ok(())
    });
    let controller = services_watch::run(client, node_name.to_string(), sync, DEBOUNCE, token);
    runner.spawn("services", async move { Ok(controller.await?) });
    Ok(())
}
