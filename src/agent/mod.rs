//! `beeline agent`: the per-node process. Loads the datapath, owns the pinned maps, serves the
//! local API to the CNI plugin and the CLI, and runs the node's controllers.

pub mod api;
pub mod datapath_metrics;
pub mod endpoint_api;
pub mod endpoint_core;
pub mod endpoint_kube;
pub mod endpoints;
pub mod health_check;
pub mod ipam_api;
pub mod ipam_expiry;
pub mod ipam_metrics;
pub mod lb;
pub mod maps;
pub mod observe;
pub mod policy;
pub mod policy_api;
pub mod remote;

use std::sync::Arc;

use futures::TryFutureExt;
use std::time::Duration;

use crate::controllers::agent::{crd_ipam, ipam_state::NodeIpam, multi_pool, node_ipam, pod_ipam::PodIpam};

use crate::runtime::{args::ConfigArgs, connectivity, health, kubeclient, runner::Runner, shutdown};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The Node this agent runs on (the DaemonSet sets it from `spec.nodeName`).
    #[arg(long, env = "K8S_NODE_NAME")]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub datapath: crate::datapath::agent::DatapathArgs,
}

pub async fn run(args: AgentArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (config, ignored) = args.config.load()?;
    if !ignored.is_empty() {
        tracing::info!(keys = ?ignored, "accepted Cilium configuration keys that beeline does not act on");
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => crate::runtime::hostname()?,
    };
    // Before anything else: a restarted agent swaps its programs in while traffic keeps flowing on
    // the pinned links and maps. Held (not detached) until exit; the pins outlive the process.
    // Loaded always; links (node devices, uplink/tunnel programs) only with `devices` set — see
    // `datapath::agent`. `datapath` is what the endpoint manager attaches pods' `from_container` with.
    let (datapath, _attachments) = crate::datapath::agent::start(&args.datapath, &config.pin_dir())?;
    let client = kubeclient::client(args.config.kubeconfig.as_deref(), "agent").await?;
    let telemetry = health::Telemetry::new("beeline_agent");
    datapath_metrics::DatapathCollector::register(
        config.pin_dir(),
        &mut telemetry.registry.write().expect("metrics registry lock"),
    );
    telemetry.health.register(connectivity::CHECK);

    let mut runner = Runner::new(shutdown::on_signal());
    let token = runner.shutdown_token();
    let server = health::serve(config.agent_health_addr, telemetry.clone(), token.clone()).await?;
    runner.spawn("health-server", async move { Ok(server.await?) });
    let families = [(config.enable_ipv4, crate::ipam::Family::V4), (config.enable_ipv6, crate::ipam::Family::V6)];
    let families = families.into_iter().filter_map(|(on, f)| on.then_some(f)).collect();
    let ipam = Arc::new(NodeIpam::new(families, &config.state_dir));
    let multi_pool = multi_pool::start(&config, &client, &node_name, &mut runner, token.clone());
    let crd = crd_ipam::start(&config, &client, &node_name, &mut runner, token.clone());
    // The allocator that serves pods in this mode: the conflist, the router IP (datapath and
    // CiliumInternalIP), the health IP and the endpoints' addresses all come from it.
    let pod_ipam: Arc<dyn PodIpam> = match (&multi_pool, &crd) {
        (Some(mp), _) => mp.ipam.clone(),
        (None, Some(crd)) => crd.clone(),
        (None, None) => ipam.clone(),
    };
    ipam_metrics::IpamCollector::register(
        pod_ipam.clone(),
        &mut telemetry.registry.write().expect("metrics registry lock"),
    );
    let node_ipam = node_ipam::run(
        client.clone(),
        node_name.clone(),
        config.ipam,
        ipam.clone(),
        pod_ipam.clone(),
        Duration::from_secs(5),
        token.clone(),
    );
    runner.spawn(
        "datapath-node",
        crate::datapath::agent::run_node_setup(datapath.clone(), config.clone(), pod_ipam.clone(), token.clone())
            .map_err(Into::into),
    );
    let endpoint_datapath = Arc::new(endpoints::KernelDatapath::new(datapath.clone()));
    let endpoint_manager = Arc::new(endpoints::EndpointManager::new(
        &config.state_dir,
        endpoint_datapath,
        pod_ipam.clone(),
        Arc::new(ipam_expiry::SystemClock),
    ));
    let restore = endpoint_manager.clone();
    for warning in tokio::task::spawn_blocking(move || restore.restore()).await? {
        tracing::warn!("{warning}");
    }
    runner.spawn("endpoint-expiry", {
        let manager = endpoint_manager.clone();
        let token = token.clone();
        async move {
            manager.run_expiry(Duration::from_secs(30), token).await;
            Ok(())
        }
    });
    // Subscribed after restore: the policy controller's first pass sees the restored endpoints.
    let local_endpoints = endpoint_manager.subscribe();
    let policy_view = crate::controllers::agent::policy_watch::SharedPolicyView::default();
    let api_state = Arc::new(api::ApiState {
        node_name: node_name.clone(),
        config: config.clone(),
        health: telemetry.health.clone(),
        ipam: ipam.clone(),
        endpoints: endpoint_manager,
        endpoint_kube: Some(Arc::new(endpoint_kube::EndpointKube::new(
            client.clone(),
            &node_name,
            &config.cluster_name,
        ))),
        multi_pool,
        crd,
        policy: policy_view.clone(),
    });
    let flows = observe::start(
        &config.pin_dir(),
        &node_name,
        client.clone(),
        &mut telemetry.registry.write().expect("metrics registry lock"),
        &mut runner,
        token.clone(),
    )?;
    let api = api::serve_with(&config.agent_socket_path, api_state, flows, token.clone())?;
    runner.spawn("agent-api", async move { Ok(api.await?) });
    runner.spawn("node-ipam", async move { Ok(node_ipam.await?) });
    let cni = crate::cni::install::run(
        std::env::current_exe()?,
        config.cni_bin_dir.clone(),
        config.cni_conf_dir.clone(),
        config.agent_socket_path.clone(),
        pod_ipam,
        token.clone(),
    );
    runner.spawn("cni-install", async move { Ok(cni.await?) });
    // The maps outlive the agent like the datapath's other pins: a restart restores their rows and
    // prunes only after every controller's first full pass. Owners first, then the writers.
    let manager = maps::manager(&telemetry);
    let owners = maps::Owners::register(&manager);
    let pin_dir = config.pin_dir();
    lb::start(&config, &manager, owners.services, &pin_dir, &node_name, client.clone(), &mut runner)?;
    let ipcache = remote::start(
        &config,
        &manager,
        owners.remote_nodes,
        owners.remote_endpoints,
        &pin_dir,
        &node_name,
        client.clone(),
        &telemetry,
        &mut runner,
    )?;
    policy::start(
        &config,
        &manager,
        owners.policy,
        &pin_dir,
        local_endpoints,
        ipcache,
        policy_view,
        client.clone(),
        &mut runner,
    )?;
    maps::start_readiness(&manager, &telemetry, &mut runner);
    crate::datapath::ct_gc::start(&config, &telemetry, &mut runner);
    runner.spawn("apiserver-connectivity", connectivity::watch_apiserver(client, telemetry.health.clone(), token));
    tracing::info!(node = %node_name, routing_mode = ?config.routing_mode, "agent started");
    runner.run().await?;
    tracing::info!("agent stopped");
    Ok(())
}
