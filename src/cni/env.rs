//! The CNI execution environment (spec §2 "Parameters"): `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`, validated per command. Pure: the caller
//! passes a lookup function (`|k| std::env::var(k).ok()` in the plugin, a map in tests).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::types::{is_valid_identifier, CniError, ErrorCode, SpecVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub const ALL: [Command; 6] =
        [Command::Add, Command::Del, Command::Check, Command::Status, Command::Gc, Command::Version];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Whether the command works on one attachment (container ID + interface).
    pub fn is_attachment_command(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// The first spec version that defines the command (CHECK: 0.4.0; STATUS and GC: 1.1.0).
    pub fn since(self) -> SpecVersion {
        match self {
            Command::Check => SpecVersion(0, 4, 0),
            Command::Status | Command::Gc => SpecVersion(1, 1, 0),
            _ => SpecVersion(0, 1, 0),
        }
    }

    /// Code 1 when a request's `cniVersion` predates the command (e.g. GC with 1.0.0).
    pub fn check_version(self, version: SpecVersion) -> Result<(), CniError> {
        if version < self.since() {
            return Err(CniError::new(
                ErrorCode::INCOMPATIBLE_VERSION,
                format!("{} is not defined for CNI version {version}", self.as_str()),
                format!("{} needs cniVersion {} or later", self.as_str(), self.since()),
            )
            .with_version(&version.to_string()));
        }
        Ok(())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Self, CniError> {
        Command::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Command::ALL.iter().map(|c| c.as_str()).collect();
            CniError::new(
                ErrorCode::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND={s} is not a CNI command"),
                format!("CNI_COMMAND must be one of {}", known.join(", ")),
            )
        })
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (Kubernetes runtimes pass the pod's identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs(pub BTreeMap<String, String>);

impl CniArgs {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        let mut args = BTreeMap::new();
        for pair in text.split(';').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    args.insert(key.to_string(), value.to_string());
                }
                _ => {
                    return Err(CniError::new(
                        ErrorCode::INVALID_ENVIRONMENT,
                        format!("CNI_ARGS has an invalid element {pair:?}"),
                        "CNI_ARGS is KEY=VALUE pairs separated by ';'",
                    ))
                }
            }
        }
        Ok(Self(args))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }

    pub fn pod_uid(&self) -> Option<&str> {
        self.get("K8S_POD_UID")
    }

    pub fn infra_container_id(&self) -> Option<&str> {
        self.get("K8S_POD_INFRA_CONTAINER_ID")
    }
}

/// The attachment an ADD/DEL/CHECK works on: CNI's state key is (container ID, interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentEnv {
    pub container_id: String,
    pub ifname: String,
    /// Required for ADD and CHECK; optional for DEL (the namespace may already be gone).
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Present for ADD, DEL and CHECK.
    pub attachment: Option<AttachmentEnv>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// Linux interface name rules the spec repeats: 1–15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("{name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

impl CniEnv {
    /// Reads and validates the environment. All problems are reported together, naming each
    /// variable, as code 4 (the spec: "the error message must contain the names of invalid variables").
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        let command: Command = match get("CNI_COMMAND") {
            None => {
                return Err(CniError::new(
                    ErrorCode::INVALID_ENVIRONMENT,
                    "CNI_COMMAND is not set",
                    "this binary is a CNI plugin; the container runtime runs it with CNI_COMMAND and the network configuration on stdin",
                ))
            }
            Some(text) => text.parse()?,
        };
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();

        let mut problems: Vec<String> = Vec::new();
        let attachment = if command.is_attachment_command() {
            let container_id = get("CNI_CONTAINERID");
            match &container_id {
                None => problems.push("CNI_CONTAINERID is not set".into()),
                Some(id) if !is_valid_identifier(id) => problems.push(format!(
                    "CNI_CONTAINERID {id:?} is invalid (a letter or digit, then letters, digits, '_', '.' or '-')"
                )),
                Some(_) => {}
            }
            let ifname = get("CNI_IFNAME");
            match &ifname {
                None => problems.push("CNI_IFNAME is not set".into()),
                Some(name) => {
                    if let Err(why) = check_ifname(name) {
                        problems.push(format!("CNI_IFNAME {why}"));
                    }
                }
            }
            let netns = get("CNI_NETNS").map(PathBuf::from);
            if netns.is_none() && command != Command::Del {
                problems.push(format!("CNI_NETNS is not set (required for {command})"));
            }
            Some(AttachmentEnv {
                container_id: container_id.unwrap_or_default(),
                ifname: ifname.unwrap_or_default(),
                netns,
            })
        } else {
            None
        };
        if !problems.is_empty() {
            return Err(CniError::new(
                ErrorCode::INVALID_ENVIRONMENT,
                format!("invalid CNI environment for {command}"),
                problems.join("; "),
            ));
        }
        Ok(Self { command, attachment, args, path })
    }
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
