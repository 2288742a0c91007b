//! Command-line arguments shared by the long-running processes.

use std::path::PathBuf;

use crate::config::{Config, ConfigError, Sources};

#[derive(Clone, Debug, clap::Args)]
pub struct ConfigArgs {
    /// A ConfigMap mounted as a directory: one file per `cilium-config` key.
    #[arg(long, env = "BEELINE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// A YAML file: a `cilium-config` ConfigMap manifest or a plain map of its keys.
    #[arg(long, env = "BEELINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides one key, e.g. `--set routing-mode=native` (repeatable; wins over files and env).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// kubeconfig to use (default: KUBECONFIG, ~/.kube/config, then the in-cluster service account).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<(Config, Vec<String>), ConfigError> {
        let sources = Sources {
            config_dir: self.config_dir.clone(),
            config_file: self.config.clone(),
            sets: self.sets.clone(),
            env: std::env::vars().collect(),
        };
        let raw = sources.collect()?;
        Ok((Config::from_raw(&raw)?, Config::ignored_keys(&raw)))
    }
}
