//! The Kubernetes client: from an explicit kubeconfig, else `KUBECONFIG`/`~/.kube/config`, else
//! the in-cluster service account.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration found (no --kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster service account): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// Builds a client that identifies itself as `beeline-<component>` in the User-Agent, so the
/// API server's audit trail (and the in-memory API's call record) can tell components apart.
pub async fn client(kubeconfig: Option<&Path>, component: &str) -> Result<kube::Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| ClientError::Kubeconfig { path: path.display().to_string(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig { path: path.display().to_string(), source })?
        }
        None => kube::Config::infer().await?,
    };
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!("beeline-{component}/{}", env!("CARGO_PKG_VERSION")))
            .expect("static user agent is a valid header"),
    ));
    Ok(kube::Client::try_from(config)?)
}
