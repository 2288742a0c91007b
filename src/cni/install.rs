//! The agent's side of CNI: install the plugin binary as `beeline-cni` into `cni-bin-dir` and
//! write `05-beeline.conflist` into `cni-conf-dir` once the node can allocate addresses (a
//! runtime that finds the conflist starts sending ADDs), remove the conflist on shutdown (so pods
//! are not scheduled onto a node whose agent is gone). Both writes are atomic (temp file + rename).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controllers::agent::ipam_state::write_atomically;
use crate::controllers::agent::pod_ipam::PodIpam;

pub const CONFLIST_NAME: &str = "05-beeline.conflist";
pub const PLUGIN_NAME: &str = "beeline-cni";
pub const NETWORK_NAME: &str = "beeline";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot install the CNI plugin {from} as {to}: {source}")]
    Binary { from: PathBuf, to: PathBuf, source: std::io::Error },
    #[error("cannot write the CNI configuration {path}: {source}")]
    Conflist { path: PathBuf, source: std::io::Error },
}

/// The network configuration list: one plugin, which finds this agent through `agent-socket`.
pub fn conflist(agent_socket: &Path) -> String {
    let conf = json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        "name": NETWORK_NAME,
        "plugins": [{ "type": PLUGIN_NAME, "agent-socket": agent_socket }],
    });
    serde_json::to_string_pretty(&conf).expect("serialisable") + "\n"
}

/// Copies `binary` (normally the running executable) to `<bin_dir>/beeline-cni`. A copy, not a
/// symlink: the runtime runs it from the host, where this container's filesystem is not visible.
pub fn install_binary(binary: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let to = bin_dir.join(PLUGIN_NAME);
    let err = |source| InstallError::Binary { from: binary.to_path_buf(), to: to.clone(), source };
    // Copy to a temporary name and rename: a runtime executing the plugin meanwhile sees either
    // the old binary or the new one, never a half-written file. Streamed, not read into memory.
    std::fs::create_dir_all(bin_dir).map_err(err)?;
    let tmp = bin_dir.join(format!(".{PLUGIN_NAME}.tmp.{}", std::process::id()));
    let copied = std::fs::copy(binary, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &to));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(to)
}

pub fn write_conflist(conf_dir: &Path, agent_socket: &Path) -> Result<PathBuf, InstallError> {
    let path = conf_dir.join(CONFLIST_NAME);
    write_atomically(&path, conflist(agent_socket).as_bytes())
        .map_err(|source| InstallError::Conflist { path: path.clone(), source })?;
    Ok(path)
}

pub fn remove_conflist(conf_dir: &Path) {
    let path = conf_dir.join(CONFLIST_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "CNI configuration removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove the CNI configuration"),
    }
}

/// Installs the binary now, writes the conflist when `ipam` becomes ready, removes it on shutdown.
pub async fn run(
    binary: PathBuf,
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    agent_socket: PathBuf,
    ipam: Arc<dyn PodIpam>,
    shutdown: CancellationToken,
) -> Result<(), InstallError> {
    // A release binary is tens of MB: copy it off the async workers, and let shutdown interrupt
    // the wait (the copy itself finishes in the background).
    let copy = tokio::task::spawn_blocking(move || install_binary(&binary, &bin_dir));
    let installed = tokio::select! {
        joined = copy => joined.expect("CNI binary copy panicked")?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    tracing::info!(path = %installed.display(), "CNI plugin installed");
    let mut changes = ipam.subscribe();
    while !ipam.is_ready() {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
        }
    }
    let path = write_conflist(&conf_dir, &agent_socket)?;
    tracing::info!(path = %path.display(), "CNI configuration written; the node accepts pods");
    shutdown.cancelled().await;
    remove_conflist(&conf_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::types::NetworkConfigList;
    use crate::controllers::agent::ipam_state::NodeIpam;
    use crate::controllers::agent::pod_ipam::PodIpam;
    use crate::ipam::Family;

    #[test]
    fn conflist_is_a_valid_network_config_naming_the_socket() {
        let text = conflist(Path::new("/run/lab/n1/beeline.sock"));
        let conf = NetworkConfigList::parse(text.as_bytes()).unwrap();
        assert_eq!(conf.name, "beeline");
        assert_eq!(conf.plugins[0].plugin_type, "beeline-cni");
        assert_eq!(conf.plugins[0].extra["agent-socket"], "/run/lab/n1/beeline.sock");
    }

    /// The conflist waits for `make_ready` (the allocator's first router address), whichever
    /// allocator serves the mode, and goes on shutdown.
    async fn conflist_follows_readiness(ipam: Arc<dyn PodIpam>, make_ready: impl FnOnce()) {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        let fake_binary = dir.path().join("beeline");
        std::fs::write(&fake_binary, b"#!/bin/true\n").unwrap();
        let token = CancellationToken::new();
        let task =
            tokio::spawn(run(fake_binary, bin.clone(), conf.clone(), "/s.sock".into(), ipam.clone(), token.clone()));
        for _ in 0..100 {
            if bin.join(PLUGIN_NAME).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read(bin.join(PLUGIN_NAME)).unwrap(), b"#!/bin/true\n");
        assert!(!conf.join(CONFLIST_NAME).exists(), "no conflist before the node can allocate");
        make_ready();
        for _ in 0..100 {
            if conf.join(CONFLIST_NAME).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(std::fs::read_to_string(conf.join(CONFLIST_NAME)).unwrap().contains("/s.sock"));
        token.cancel();
        task.await.unwrap().unwrap();
        assert!(!conf.join(CONFLIST_NAME).exists(), "conflist removed on shutdown");
    }

    #[tokio::test]
    async fn conflist_appears_when_ready_and_goes_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Arc::new(NodeIpam::new(vec![Family::V4], dir.path()));
        let ready = ipam.clone();
        conflist_follows_readiness(ipam, move || {
            ready.set_cidrs(&["10.0.9.0/24".parse().unwrap()]).unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn multi_pool_conflist_waits_for_the_default_pool_cidr() {
        use crate::controllers::agent::multi_pool::MultiPoolIpam;
        use crate::ipam::multi_pool::PoolCidrs;
        let dir = tempfile::tempdir().unwrap();
        let ipam = Arc::new(MultiPoolIpam::new(vec![Family::V4], 8, dir.path()));
        let ready = ipam.clone();
        let tenant_only = PoolCidrs { pool: "tenant-a".into(), cidrs: vec!["10.20.0.0/27".into()] };
        ready.sync_allocated(std::slice::from_ref(&tenant_only));
        assert!(!PodIpam::is_ready(&*ipam), "no router address without a default pool CIDR");
        let default = PoolCidrs { pool: "default".into(), cidrs: vec!["10.10.0.0/27".into()] };
        conflist_follows_readiness(ipam, move || {
            ready.sync_allocated(&[default, tenant_only]);
        })
        .await;
    }
}
