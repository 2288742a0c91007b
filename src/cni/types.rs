//! CNI 1.1 protocol types: network configuration lists, the per-plugin request configuration read
//! on stdin, the ADD result, the error result with the spec's codes, VERSION output and version
//! negotiation. Pure (serde only); the plugin's I/O lives elsewhere.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::SUPPORTED_VERSIONS;

/// The newest spec version this plugin speaks; used in errors when the request's is unknown.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The key a runtime adds to a GC request: attachments that are still valid.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// Well-known error codes (spec §5 "Error"); 100+ are plugin specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const INCOMPATIBLE_VERSION: Self = Self(1);
    pub const UNSUPPORTED_FIELD: Self = Self(2);
    pub const UNKNOWN_CONTAINER: Self = Self(3);
    pub const INVALID_ENVIRONMENT: Self = Self(4);
    pub const IO_FAILURE: Self = Self(5);
    pub const DECODE_FAILURE: Self = Self(6);
    pub const INVALID_CONFIG: Self = Self(7);
    pub const TRY_AGAIN_LATER: Self = Self(11);
    /// STATUS: cannot service ADD.
    pub const NOT_AVAILABLE: Self = Self(50);
    /// STATUS: cannot service ADD, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: Self = Self(51);
}

/// The error result a plugin prints on stdout when it fails; kubelet logs `msg` and `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {}: {msg}{}", code.0, if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: ErrorCode,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { cni_version: CURRENT_VERSION.to_string(), code, msg: msg.into(), details: details.into() }
    }

    /// The same error reported in the request's protocol version.
    pub fn with_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_string();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("error result serialises")
    }
}

/// A CNI spec version `major.minor.patch`, ordered numerically ("0.10.0" > "0.4.0").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecVersion(pub u32, pub u32, pub u32);

impl SpecVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.').map(|p| if p.is_empty() { None } else { p.parse::<u32>().ok() });
        let version = Self(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }

    pub fn is_supported(&self) -> bool {
        SUPPORTED_VERSIONS.iter().any(|v| Self::parse(v) == Some(*self))
    }

    /// 1.0.0 dropped the per-IP `version` field that 0.3.x/0.4.0 results carry.
    pub fn results_carry_ip_version(&self) -> bool {
        *self < SpecVersion(1, 0, 0)
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

fn supported_list() -> String {
    SUPPORTED_VERSIONS.join(", ")
}

/// Checks a request's `cniVersion`: error code 1 when this plugin does not speak it.
pub fn check_version(requested: &str) -> Result<SpecVersion, CniError> {
    match SpecVersion::parse(requested) {
        Some(v) if v.is_supported() => Ok(v),
        Some(_) => Err(CniError::new(
            ErrorCode::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {requested}"),
            format!("this plugin supports {}", supported_list()),
        )),
        None => Err(CniError::new(
            ErrorCode::DECODE_FAILURE,
            format!("cniVersion {requested:?} is not a version (expected major.minor.patch)"),
            format!("this plugin supports {}", supported_list()),
        )),
    }
}

/// The runtime's choice for a network configuration (spec §1 "Version considerations"): the
/// highest version listed in `cniVersion` or `cniVersions` that this plugin also supports.
pub fn negotiate_version(conf: &NetworkConfigList) -> Result<SpecVersion, CniError> {
    let offered: Vec<&str> = conf.cni_versions.iter().map(String::as_str).chain([conf.cni_version.as_str()]).collect();
    offered.iter().filter_map(|v| SpecVersion::parse(v)).filter(SpecVersion::is_supported).max().ok_or_else(|| {
        CniError::new(
            ErrorCode::INCOMPATIBLE_VERSION,
            format!("network {:?} offers no CNI version this plugin supports", conf.name),
            format!("offered {}; supported {}", offered.join(", "), supported_list()),
        )
    })
}

/// The VERSION result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// Echoes the caller's `cniVersion` (spec: "the value of cniVersion specified on input").
    pub fn for_request(cni_version: Option<&str>) -> Self {
        Self {
            cni_version: cni_version.unwrap_or(CURRENT_VERSION).to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// `dns` in configuration and results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// A network configuration list (the `.conflist` file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfigList {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_check: bool,
    #[serde(default, rename = "disableGC", skip_serializing_if = "std::ops::Not::not")]
    pub disable_gc: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub load_only_inlined_plugins: bool,
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
}

/// One plugin configuration object of a list; unknown keys are the plugin's own and kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginEntry {
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The request configuration a plugin reads on stdin (spec §3 "Deriving request configuration").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<CniResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// GC only: the attachments that are still valid; anything else of ours may be released.
    #[serde(default, rename = "cni.dev/valid-attachments", skip_serializing_if = "Option::is_none")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
    /// Plugin-specific keys (beeline's socket path, MTU, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The ADD result (also `prevResult`). IPAM plugins omit `interfaces` and `interface`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Absent in a `prevResult` produced by some runtimes; always set on output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; empty/absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.0.1.235/32`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// "4" or "6": results of spec versions before 1.0.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// global (0), link (253), host (254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl CniResult {
    /// The result as printed for a request of `version`: `cniVersion` set, and the per-IP
    /// `version` field present exactly for the pre-1.0 formats that require it.
    pub fn for_version(&self, version: SpecVersion) -> CniResult {
        let mut out = self.clone();
        out.cni_version = Some(version.to_string());
        for ip in &mut out.ips {
            ip.version = version
                .results_carry_ip_version()
                .then(|| if ip.address.addr().is_ipv4() { "4" } else { "6" }.to_string());
        }
        out
    }

    /// Every interface index in `ips` must point into `interfaces` (CHECK relies on it).
    pub fn validate(&self) -> Result<(), CniError> {
        for ip in &self.ips {
            if let Some(index) = ip.interface {
                if index >= self.interfaces.len() {
                    return Err(CniError::new(
                        ErrorCode::INVALID_CONFIG,
                        "invalid prevResult",
                        format!(
                            "ips entry {} refers to interface {index}, but there are {} interfaces",
                            ip.address,
                            self.interfaces.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `name` of a network: an alphanumeric first character, then alphanumerics, `_`, `.` or `-`.
/// The same rule applies to container IDs.
pub fn is_valid_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, CniError> {
    serde_json::from_slice(bytes)
        .map_err(|e| CniError::new(ErrorCode::DECODE_FAILURE, format!("failed to decode {what}"), e.to_string()))
}

fn invalid_config(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::INVALID_CONFIG, msg, details)
}

fn check_type(plugin_type: &str, position: &str) -> Result<(), CniError> {
    if plugin_type.is_empty() || plugin_type.contains(['/', '\\']) {
        return Err(invalid_config(
            format!("invalid plugin type {plugin_type:?} in {position}"),
            "type names the plugin binary: not empty, no '/' or '\\'",
        ));
    }
    Ok(())
}

impl NetworkConfigList {
    /// Parses and validates a `.conflist`: JSON errors are code 6, semantic ones code 7.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf: Self = decode(bytes, "network configuration list")?;
        if !is_valid_identifier(&conf.name) {
            return Err(invalid_config(
                format!("invalid network name {:?}", conf.name),
                "a name starts with a letter or digit, followed by letters, digits, '_', '.' or '-'",
            ));
        }
        for v in conf.cni_versions.iter().chain([&conf.cni_version]) {
            if SpecVersion::parse(v).is_none() {
                return Err(CniError::new(
                    ErrorCode::DECODE_FAILURE,
                    format!("network {:?}: cniVersion {v:?} is not a version", conf.name),
                    "expected major.minor.patch",
                ));
            }
        }
        if conf.load_only_inlined_plugins && conf.plugins.is_empty() {
            return Err(invalid_config(
                format!("network {:?}: loadOnlyInlinedPlugins is true but plugins is empty", conf.name),
                "loadOnlyInlinedPlugins needs a plugins list",
            ));
        }
        for (i, plugin) in conf.plugins.iter().enumerate() {
            check_type(&plugin.plugin_type, &format!("plugins[{i}]"))?;
        }
        Ok(conf)
    }
}

impl PluginConfig {
    /// Parses the stdin configuration of an ADD/DEL/CHECK/STATUS/GC request: JSON errors are code 6,
    /// an unsupported `cniVersion` code 1, other problems code 7.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let conf: Self = decode(bytes, "network configuration")?;
        check_version(&conf.cni_version)?;
        if !is_valid_identifier(&conf.name) {
            return Err(invalid_config(
                format!("invalid network name {:?}", conf.name),
                "a name starts with a letter or digit, followed by letters, digits, '_', '.' or '-'",
            )
            .with_version(&conf.cni_version));
        }
        check_type(&conf.plugin_type, "the network configuration").map_err(|e| e.with_version(&conf.cni_version))?;
        if let Some(prev) = &conf.prev_result {
            prev.validate().map_err(|e| e.with_version(&conf.cni_version))?;
        }
        Ok(conf)
    }

    pub fn version(&self) -> SpecVersion {
        SpecVersion::parse(&self.cni_version).expect("validated by parse")
    }

    /// A plugin-specific key, deserialised; `Ok(None)` when absent, code 7 when malformed.
    pub fn plugin_field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CniError> {
        self.extra
            .get(key)
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| {
                    invalid_config(format!("invalid value for {key:?} in network {:?}", self.name), e.to_string())
                        .with_version(&self.cni_version)
                })
            })
            .transpose()
    }
}

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
