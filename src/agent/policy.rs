//! The agent's policy wiring: the policy maps' group in the agent's map manager (over the pinned
//! kernel maps the datapath reads), its writer, and the policy controller that fills it from the
//! policy objects and the endpoint manager's local endpoints.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::controllers::agent::local_endpoints::LocalEndpointsRx;
use crate::controllers::agent::policy_state::PolicyState;
use crate::controllers::agent::policy_watch::{self, PolicyController, PolicyTables, SharedPolicyView};
use crate::datapath::manager::backend::BackendError;
use crate::datapath::manager::kernel::{KernelLpmMap, KernelMap};
use crate::datapath::manager::maps::{Ipcache, PolicyEndpoints, PolicyMap, POLICY_GROUP};
use crate::datapath::manager::writer::WriterOptions;
use crate::datapath::manager::{MapManager, Owner, TableHandle};
use crate::policy::{CompilerConfig, ParseContext};
use crate::runtime::runner::Runner;

/// How long the policy controller batches changes into one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Opens (or creates) the policy maps under `pin_dir` and adds the writer and the policy
/// controller (row owner `owner`) to `runner`. `view` is what the agent API serves; `ipcache` is
/// the remote group's ipcache table, where the controller adds its CIDR identities.
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: &Config,
    manager: &MapManager,
    owner: Owner,
    pin_dir: &Path,
    endpoints: LocalEndpointsRx,
    ipcache: TableHandle<Ipcache>,
    view: SharedPolicyView,
    client: kube::Client,
    runner: &mut Runner,
) -> Result<(), BackendError> {
    let (name, order) = POLICY_GROUP;
    let mut group = manager.group(name, order);
    // Entries before the enforcement flags that make an endpoint use them.
    let tables = PolicyTables {
        entries: group.add::<PolicyMap>(KernelLpmMap::open_or_create::<PolicyMap>(pin_dir)?)?,
        endpoints: group.add::<PolicyEndpoints>(KernelMap::open_or_create::<PolicyEndpoints>(pin_dir)?)?,
        ipcache,
    };
    let writer = group.build();
    let parse = ParseContext { cluster_name: config.cluster_name.clone() };
    let ctl = PolicyController {
        state: PolicyState::new(CompilerConfig { mode: config.enable_policy, ..CompilerConfig::default() }, parse),
        owner,
        tables,
        view,
        debounce: DEBOUNCE,
    };

    let token = runner.shutdown_token();
    let t = token.clone();
    runner.spawn("policy-map-writer", async move {
        writer.run(WriterOptions::default(), t).await;
        Ok(())
    });
    let controller = policy_watch::run(client, ctl, endpoints, token);
    runner.spawn("policy", async move { Ok(controller.await?) });
    Ok(())
}
