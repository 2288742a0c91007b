//! Loads the embedded eBPF object with every map pinned under the agent's bpffs directory.
//!
//! Maps are opened from their pins when they exist (an agent restart keeps their contents) and
//! created and pinned otherwise. Programs are loaded into the kernel here; attaching is
//! [`crate::datapath::attach`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{ProgramError, SchedClassifier},
    Ebpf, EbpfLoader,
};
use beeline_common::{events, map_names, EndpointStats, EndpointStatsKey};

use super::pins::{PinLayout, PINNED_MAPS};

/// The tc programs in the object, by their ELF symbol name.
pub mod programs {
    pub const FROM_CONTAINER: &str = "from_container";
    /// tc ingress of the tunnel device (`cilium_vxlan` / `cilium_geneve`).
    pub const FROM_OVERLAY: &str = "from_overlay";
    /// tc ingress of the uplink(s): reverse masquerading, native-routing delivery to local pods.
    pub const FROM_NETDEV: &str = "from_netdev";
    /// tc egress of the uplink(s): masquerading of pod traffic leaving the cluster.
    pub const TO_NETDEV: &str = "to_netdev";
    pub const ALL: &[&str] = &[FROM_CONTAINER, FROM_OVERLAY, FROM_NETDEV, TO_NETDEV];
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create the pin directory {path}: {source} (is bpffs mounted at the bpf-root?)")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error("cannot load the eBPF object with maps pinned under {pin_dir}: {source}")]
    Load { pin_dir: PathBuf, source: Box<aya::EbpfError> },
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(String),
    #[error("program `{name}`: {source}")]
    Program { name: String, source: Box<aya::programs::ProgramError> },
    #[error("map `{name}`: {source}")]
    Map { name: String, source: Box<aya::maps::MapError> },
    #[error("attaching `{program}` to {ifname} ({direction}): {reason}")]
    Attach { program: String, ifname: String, direction: &'static str, reason: String },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
}

impl DatapathError {
    pub(crate) fn program(name: &str, source: aya::programs::ProgramError) -> Self {
        DatapathError::Program { name: name.to_string(), source: Box::new(source) }
    }

    pub(crate) fn map(name: &str, source: aya::maps::MapError) -> Self {
        DatapathError::Map { name: name.to_string(), source: Box::new(source) }
    }
}

/// Sizes chosen at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Size of the `beeline_events` ring buffer in bytes: a power of two, at least one page.
    pub events_ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { events_ring_bytes: events::DEFAULT_RING_BYTES }
    }
}

/// The loaded object: programs in the kernel, maps open (and pinned).
///
/// Dropping it closes our file descriptors only. Pinned maps and pinned links stay in the kernel,
/// so traffic keeps flowing while the agent is down; [`crate::datapath::attach::uninstall`]
/// removes them.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinLayout,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath").field("pins", &self.pins).finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads [`super::bpf_object`], pinning (or re-opening) every map under `pin_dir`.
    #[tracing::instrument(level = "info", skip_all, fields(pin_dir = %pin_dir.display()))]
    pub fn load(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        Self::load_object(super::bpf_object(), pin_dir)
    }

    pub fn load_object(object: &[u8], pin_dir: &Path) -> Result<Datapath, DatapathError> {
        Self::load_object_with(object, pin_dir, &LoadOptions::default())
    }

    /// [`Self::load`] with sizes from the configuration.
    pub fn load_with(pin_dir: &Path, options: &LoadOptions) -> Result<Datapath, DatapathError> {
        Self::load_object_with(super::bpf_object(), pin_dir, options)
    }

    pub fn load_object_with(object: &[u8], pin_dir: &Path, options: &LoadOptions) -> Result<Datapath, DatapathError> {
        let pins = PinLayout::new(pin_dir);
        for dir in [pins.dir().to_path_buf(), pins.links_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir { path: dir.clone(), source })?;
        }
        let mut loader = EbpfLoader::new();
        // Explicit per-map paths rather than `PinningType::ByName` in the object: the pin directory
        // is the agent's configuration, not the program's. A map already pinned there is re-used
        // as is.
        // TODO(map manager): compare the pinned map's key/value sizes with the object's and
        // migrate when a layout changes; today layouts only ever grow with new maps.
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
        // A ring buffer's "max entries" is its size in bytes. An already pinned ring keeps its size.
        loader.map_max_entries(events::RING_MAP_NAME, options.events_ring_bytes);
        let mut ebpf = loader
            .load(object)
            .map_err(|source| DatapathError::Load { pin_dir: pin_dir.to_path_buf(), source: Box::new(source) })?;
        for name in programs::ALL {
            let program = classifier_mut(&mut ebpf, name)?;
            load_retrying_interrupted(program).map_err(|e| DatapathError::program(name, e))?;
        }
        tracing::info!(maps = ?PINNED_MAPS, programs = ?programs::ALL, "datapath loaded");
        Ok(Datapath { ebpf, pins })
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    pub fn program(&self, name: &str) -> Result<&SchedClassifier, DatapathError> {
        let program = self.ebpf.program(name).ok_or_else(|| DatapathError::MissingProgram(name.to_string()))?;
        program.try_into().map_err(|e| DatapathError::program(name, e))
    }

    pub(crate) fn program_mut(&mut self, name: &str) -> Result<&mut SchedClassifier, DatapathError> {
        classifier_mut(&mut self.ebpf, name)
    }

    /// The kernel ID of a loaded program (what `bpftool prog show` lists).
    pub fn program_id(&self, name: &str) -> Result<u32, DatapathError> {
        let info = self.program(name)?.info().map_err(|e| DatapathError::program(name, e))?;
        Ok(info.id())
    }

    /// Every row of `beeline_ep_stats`, by ifindex.
    pub fn endpoint_stats(&self) -> Result<BTreeMap<u32, EndpointStats>, DatapathError> {
        let name = map_names::ENDPOINT_STATS;
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| DatapathError::map(name, aya::maps::MapError::InvalidName { name: name.to_string() }))?;
        let table: BpfHashMap<_, EndpointStatsKey, EndpointStats> =
            BpfHashMap::try_from(map).map_err(|e| DatapathError::map(name, e))?;
        collect_stats(&table)
    }
}

fn classifier_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let program = ebpf.program_mut(name).ok_or_else(|| DatapathError::MissingProgram(name.to_string()))?;
    program.try_into().map_err(|e| DatapathError::program(name, e))
}

fn collect_stats<T: std::borrow::Borrow<MapData>>(
    table: &BpfHashMap<T, EndpointStatsKey, EndpointStats>,
) -> Result<BTreeMap<u32, EndpointStats>, DatapathError> {
    table
        .iter()
        .map(|row| row.map(|(k, v)| (k.ifindex, v)))
        .collect::<Result<_, _>>()
        .map_err(|e| DatapathError::map(map_names::ENDPOINT_STATS, e))
}

/// Reads `beeline_ep_stats` from its pin, without loading anything (the CLI's view; works while
/// no agent runs).
pub fn read_pinned_endpoint_stats(pin_dir: &Path) -> Result<BTreeMap<u32, EndpointStats>, DatapathError> {
    let name = map_names::ENDPOINT_STATS;
    let data = MapData::from_pin(PinLayout::new(pin_dir).map(name)).map_err(|e| DatapathError::map(name, e))?;
    let table: BpfHashMap<_, EndpointStatsKey, EndpointStats> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|e| DatapathError::map(name, e))?;
    collect_stats(&table)
}

/// How often a program load is tried when the verifier was interrupted (as libbpf does).
const LOAD_ATTEMPTS: u32 = 5;

/// `BPF_PROG_LOAD`, tried again when it fails with `EAGAIN`: the verifier gives up with `EAGAIN`
/// when a signal is pending for the loading thread (a `SIGCHLD` of a tokio child process, say),
/// which a long verification under load makes likely. Any other error is final.
fn load_retrying_interrupted(program: &mut SchedClassifier) -> Result<(), ProgramError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempt < LOAD_ATTEMPTS =>
            {
                tracing::debug!(attempt, "program load interrupted (EAGAIN); trying again");
                attempt += 1;
            }
            other => return other,
        }
    }
}
