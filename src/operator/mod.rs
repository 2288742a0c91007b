//! `beeline operator`: cluster-wide controllers (CRD installation, IPAM, LB-IPAM, identity GC).

use crate::runtime::{args::ConfigArgs, connectivity, health, kubeclient, runner::Runner, shutdown};

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub async fn run(args: OperatorArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (config, ignored) = args.config.load()?;
    if !ignored.is_empty() {
        tracing::info!(keys = ?ignored, "accepted Cilium configuration keys that beeline does not act on");
    }
    let client = kubeclient::client(args.config.kubeconfig.as_deref(), "operator").await?;
    let telemetry = health::Telemetry::new("beeline_operator");
    telemetry.health.register(connectivity::CHECK);

    let mut runner = Runner::new(shutdown::on_signal());
    let token = runner.shutdown_token();
    let server = health::serve(config.operator_health_addr, telemetry.clone(), token.clone()).await?;
    runner.spawn("health-server", async move { Ok(server.await?) });
    if config.ipam == crate::config::IpamMode::ClusterPool {
        let (client, config, token) = (client.clone(), config.clone(), token.clone());
        let pool = async move { Ok(crate::controllers::operator::cluster_pool::run(client, &config, token).await?) };
        runner.spawn("cluster-pool-ipam", pool);
    }
    runner.spawn("apiserver-connectivity", connectivity::watch_apiserver(client, telemetry.health.clone(), token));
    tracing::info!(ipam = ?config.ipam, "operator started");
    runner.run().await?;
    tracing::info!("operator stopped");
    Ok(())
}
