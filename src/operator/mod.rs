//! `beeline operator`: cluster-wide controllers (CRD installation, IPAM, LB-IPAM, identity GC).
//!
//! Start order follows Cilium's operator: every replica installs the CRDs first (readiness check
//! `crds` until they are Established), then campaigns for the leader Lease; controllers run only
//! while this replica leads, and losing the lease stops the process so the Deployment restarts it
//! as a fresh candidate.

pub mod crd_install;
pub mod leader;

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::controllers::operator::{identity_gc, lb_ipam};
use crate::runtime::{
    args::ConfigArgs,
    connectivity, health, kubeclient,
    runner::{Runner, TaskResult},
    shutdown,
};

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Seconds to wait for the CRDs to be applied and Established before refusing to start.
    #[arg(long, env = "BEELINE_CRD_INSTALL_TIMEOUT", default_value_t = 60)]
    pub crd_install_timeout: u64,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub leader_election_namespace: String,
    /// Base of this replica's leader-election identity (a random suffix is added); default: hostname.
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
}

pub async fn run(args: OperatorArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (config, ignored) = args.config.load()?;
    if !ignored.is_empty() {
        tracing::info!(keys = ?ignored, "accepted Cilium configuration keys that beeline does not act on");
    }
    let client = kubeclient::client(args.config.kubeconfig.as_deref(), "operator").await?;
    let telemetry = health::Telemetry::new("beeline_operator");
    telemetry.health.register(connectivity::CHECK);
    if !config.skip_crd_creation {
        telemetry.health.register(crd_install::CHECK);
    }
    let is_leader = Gauge::default();
    telemetry.registry.write().expect("registry lock").register(
        "is_leader",
        "1 while this operator replica holds the leader-election lease",
        is_leader.clone(),
    );

    let mut runner = Runner::new(shutdown::on_signal());
    let token = runner.shutdown_token();
    let server = health::serve(config.operator_health_addr, telemetry.clone(), token.clone()).await?;
    runner.spawn("health-server", async move { Ok(server.await?) });
    runner.spawn(
        "apiserver-connectivity",
        connectivity::watch_apiserver(client.clone(), telemetry.health.clone(), token.clone()),
    );

    let election = leader::ElectionConfig::new(
        args.leader_election_namespace,
        leader::identity(args.leader_election_identity.as_deref()),
    );
    let install = (!config.skip_crd_creation).then(|| crd_install::InstallOptions {
        timeout: Duration::from_secs(args.crd_install_timeout),
        ..Default::default()
    });
    let lb_ipam_metrics = lb_ipam::Metrics::default();
    lb_ipam_metrics.register(&mut telemetry.registry.write().expect("registry lock"));
    let leading = LeaderControllers {
        cluster_pool: (config.ipam == crate::config::IpamMode::ClusterPool).then(|| config.clone()),
        multi_pool: (config.ipam == crate::config::IpamMode::MultiPool).then(|| config.clone()),
        lb_ipam: config
            .enable_lb_ipam
            .then(|| lb_ipam::Options::from_config(&config, args.leader_election_identity.clone())),
        lb_ipam_metrics,
        identity_gc: identity_gc::IdentityGcOptions::from_config(&config),
    };
    runner.spawn("operator", operate(client, install, election, telemetry.health.clone(), is_leader, leading, token));
    tracing::info!(ipam = ?config.ipam, "operator started");
    runner.run().await?;
    tracing::info!("operator stopped");
    Ok(())
}

/// What the leader-only controllers need besides a client.
struct LeaderControllers {
    /// Cluster-pool node IPAM, when `ipam: cluster-pool`.
    cluster_pool: Option<crate::config::Config>,
    /// Multi-pool node IPAM, when `ipam: multi-pool`.
    multi_pool: Option<crate::config::Config>,
    /// LB-IPAM, unless `enable-lb-ipam: false`.
    lb_ipam: Option<lb_ipam::Options>,
    lb_ipam_metrics: lb_ipam::Metrics,
    identity_gc: identity_gc::IdentityGcOptions,
}

/// CRD installation, then leader election with the controllers running while this replica leads.
async fn operate(
    client: kube::Client,
    install: Option<crd_install::InstallOptions>,
    election: leader::ElectionConfig,
    health: health::Health,
    is_leader: Gauge,
    controllers: LeaderControllers,
    shutdown: CancellationToken,
) -> TaskResult {
    match install {
        Some(options) => {
            let crds = crate::crds::all();
            tokio::select! {
                r = crd_install::install(&client, &crds, &options) => r?,
                _ = shutdown.cancelled() => return Ok(()),
            }
            health.ready(crd_install::CHECK);
        }
        None => tracing::info!("skip-crd-creation is set: not installing CRDs"),
    }
    tracing::info!(
        namespace = %election.namespace, lease = %election.lease_name, identity = %election.identity,
        "campaigning for leadership"
    );
    let (leading_tx, leading_rx) = watch::channel(false);
    let elector = leader::LeaderElector::new(client.clone(), election).with_gauge(is_leader);
    let election = elector.run(leading_tx, shutdown.clone());
    tokio::pin!(election);
    tokio::select! {
        // Leadership lost (an error: the process stops) or shutdown.
        r = &mut election => r?,
        // Controllers end on shutdown (then let the elector release the lease) or fail.
        r = controllers_while_leading(client, controllers, leading_rx, shutdown) => {
            r?;
            election.await?;
        }
    }
    Ok(())
}

/// Waits for leadership, then runs the leader-only controllers until shutdown (CRD installation,
/// as in Cilium, runs on every replica before the election).
async fn controllers_while_leading(
    client: kube::Client,
    controllers: LeaderControllers,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> TaskResult {
    tokio::select! {
        r = leading.wait_for(|l| *l) => { if r.is_err() { return Ok(()); } }
        _ = shutdown.cancelled() => return Ok(()),
    }
    tracing::info!("leading: starting the operator's controllers");
    let cluster_pool = async {
        match &controllers.cluster_pool {
            Some(config) => crate::controllers::operator::cluster_pool::run(client.clone(), config, shutdown.clone())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            None => Ok(()),
        }
    };
    let multi_pool = async {
        match &controllers.multi_pool {
            Some(config) => crate::controllers::operator::multi_pool::run(client.clone(), config, shutdown.clone())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            None => Ok(()),
        }
    };
    // LB-IPAM (dormant until the first CiliumLoadBalancerIPPool exists).
    let lb = async {
        match controllers.lb_ipam {
            Some(options) => lb_ipam::run(client.clone(), options, controllers.lb_ipam_metrics, shutdown.clone())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
            None => {
                tracing::info!("enable-lb-ipam is false: LoadBalancer Services are left to another controller");
                Ok(())
            }
        }
    };
    // Unused CiliumIdentities (CRD identity mode), after `identity-heartbeat-timeout`.
    let gc = async {
        identity_gc::run(client.clone(), controllers.identity_gc, std::time::Instant::now, shutdown.clone())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
    };
    // All run until shutdown; the first failure stops the process (the Deployment restarts it).
    futures::try_join!(cluster_pool, multi_pool, lb, gc)?;
    Ok(())
}
