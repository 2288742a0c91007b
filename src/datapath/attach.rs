//! Attaching tc programs to interfaces so they outlive the agent, and removing them again.
//!
//! - **TCX** (Linux ≥ 6.6): a BPF link per (program, direction, interface), pinned under
//!   `<pin_dir>/links/`. The pin keeps the program attached after the agent exits. A restarted
//!   agent re-opens the pin and swaps its freshly loaded program in with `BPF_LINK_UPDATE` (aya's
//!   `SchedClassifier::attach_to_link`): one atomic pointer swap in the kernel, no window without a
//!   program, the link (and its position among other TCX programs) unchanged.
//! - **clsact** (older kernels): a direct-action cls_bpf filter at a fixed priority/handle. The
//!   filter itself keeps the program alive; a restart replaces it in place (netlink
//!   `RTM_NEWTFILTER` without `NLM_F_EXCL` on the same priority/handle), also without a gap.
//!
//! Every function works on the interfaces of the *calling thread's* network namespace; the lab
//! and the tests enter the node's namespace with `setns` first (see [`super::netns`]).

use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};

use super::{
    loader::{programs, Datapath, DatapathError},
    pins::{Direction, PinLayout},
};

/// Which kernel mechanism to attach with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// TCX where the kernel has it (≥ 6.6), clsact otherwise.
    #[default]
    Auto,
    Tcx,
    /// Classic clsact qdisc + cls_bpf filter over netlink.
    Netlink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    Tcx,
    Netlink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachAction {
    /// Nothing of ours was attached; a new link/filter was created.
    Created,
    /// Our previous program was atomically swapped for the new one.
    Replaced,
    /// A pinned link was left over for an interface that has since been deleted (a defunct link);
    /// its pin was removed and a new link created.
    RecreatedStale,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    pub program: String,
    pub ifname: String,
    pub direction: Direction,
    pub mechanism: Mechanism,
    pub action: AttachAction,
    /// The kernel ID of the program now attached.
    pub program_id: u32,
    /// The program attached before (only known for TCX replacements).
    pub previous_program_id: Option<u32>,
    /// The TCX link's kernel ID (stable across replacements); `None` for clsact.
    pub link_id: Option<u32>,
    pub pin: Option<PathBuf>,
}

/// cls_bpf priority and handle of the clsact fallback. Fixed, so a restart finds and replaces
/// the filter it installed before.
const NETLINK_PRIORITY: u16 = 1;
const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 1);

// ----- pure decisions ------------------------------------------------------------------------

/// TCX needs Linux 6.6.
pub fn choose_mechanism(mode: AttachMode, kernel: Option<KernelVersion>) -> Mechanism {
    match mode {
        AttachMode::Tcx => Mechanism::Tcx,
        AttachMode::Netlink => Mechanism::Netlink,
        AttachMode::Auto => match kernel {
            Some(v) if v >= KernelVersion::new(6, 6, 0) => Mechanism::Tcx,
            _ => Mechanism::Netlink,
        },
    }
}

/// What we found at a link's pin path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PinnedState {
    Absent,
    /// The pinned link's program is attached to the interface: update it in place.
    Live {
        program_id: u32,
    },
    /// Pinned, but its program is not attached to the interface (the interface was deleted and
    /// maybe recreated under the same name): the link is defunct.
    Defunct,
}

fn pinned_state(pinned_program_id: Option<u32>, attached_ids: &[u32]) -> PinnedState {
    match pinned_program_id {
        None => PinnedState::Absent,
        Some(id) if attached_ids.contains(&id) => PinnedState::Live { program_id: id },
        Some(_) => PinnedState::Defunct,
    }
}

// ----- kernel shell --------------------------------------------------------------------------

fn tc_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// A program attached to an interface with TCX, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AttachedProgram {
    pub id: u32,
    pub name: String,
}

/// The TCX programs attached to `ifname` in `direction`, in run order.
pub fn tcx_programs(ifname: &str, direction: Direction) -> Result<Vec<AttachedProgram>, DatapathError> {
    let (_revision, infos) = SchedClassifier::query_tcx(ifname, tc_type(direction))
        .map_err(|e| attach_err("query", ifname, direction, format!("querying TCX programs: {}", chain(&e))))?;
    Ok(infos
        .iter()
        .map(|info| AttachedProgram { id: info.id(), name: info.name_as_str().unwrap_or_default().to_string() })
        .collect())
}

fn attach_err(program: &str, ifname: &str, direction: Direction, reason: impl Into<String>) -> DatapathError {
    DatapathError::Attach {
        program: program.to_string(),
        ifname: ifname.to_string(),
        direction: direction.as_str(),
        reason: reason.into(),
    }
}

/// `e` followed by its sources: aya's errors print the failing call but keep the errno in
/// `source()`, which is the part a user needs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn open_pinned_link(path: &Path) -> Result<Option<FdLink>, String> {
    if !path.exists() {
        return Ok(None);
    }
    match PinnedLink::from_pin(path) {
        Ok(pinned) => Ok(Some(FdLink::from(pinned))),
        Err(e) => Err(format!("opening the pinned link {}: {}", path.display(), chain(&e))),
    }
}

impl Datapath {
    /// Attaches `program` to `ifname` so that it stays attached after this process exits,
    /// replacing (atomically) what a previous agent attached there.
    #[tracing::instrument(level = "info", skip(self), err)]
    pub fn attach(
        &mut self,
        program: &str,
        ifname: &str,
        direction: Direction,
        mode: AttachMode,
    ) -> Result<Attachment, DatapathError> {
        let attachment = match choose_mechanism(mode, KernelVersion::current().ok()) {
            Mechanism::Tcx => self.attach_tcx(program, ifname, direction)?,
            Mechanism::Netlink => self.attach_netlink(program, ifname, direction)?,
        };
        tracing::info!(
            action = ?attachment.action,
            mechanism = ?attachment.mechanism,
            program_id = attachment.program_id,
            link_id = ?attachment.link_id,
            "program attached"
        );
        Ok(attachment)
    }

    fn attach_tcx(&mut self, program: &str, ifname: &str, direction: Direction) -> Result<Attachment, DatapathError> {
        let err = |reason: String| attach_err(program, ifname, direction, reason);
        let pin = self.pins().link(program, direction, ifname);
        let existing = open_pinned_link(&pin).map_err(err)?;
        let pinned_program_id = match &existing {
            Some(link) => {
                Some(link.info().map_err(|e| err(format!("reading the pinned link: {}", chain(&e))))?.program_id())
            }
            None => None,
        };
        let attached: Vec<u32> = tcx_programs(ifname, direction)?.iter().map(|p| p.id).collect();
        let state = pinned_state(pinned_program_id, &attached);
        let new_program_id = self.program_id(program)?;
        let classifier = self.program_mut(program)?;

        if let (PinnedState::Live { program_id: previous }, Some(link)) = (state, existing) {
            let link = SchedClassifierLink::try_from(link)
                .map_err(|e| err(format!("pinned link is not TCX: {}", chain(&e))))?;
            // BPF_LINK_UPDATE: the kernel swaps the link's program in one step.
            let id = classifier.attach_to_link(link).map_err(|e| err(format!("BPF_LINK_UPDATE: {}", chain(&e))))?;
            let link = classifier.take_link(id).map_err(|e| err(chain(&e)))?;
            let fd: FdLink = link.try_into().map_err(|e: LinkError| err(chain(&e)))?;
            let info = fd.info().map_err(|e| err(chain(&e)))?;
            // Dropping `fd` closes our descriptor; the pin keeps the link.
            return Ok(Attachment {
                program: program.to_string(),
                ifname: ifname.to_string(),
                direction,
                mechanism: Mechanism::Tcx,
                action: AttachAction::Replaced,
                program_id: info.program_id(),
                previous_program_id: Some(previous),
                link_id: Some(info.id()),
                pin: Some(pin),
            });
        }

        let action = if state == PinnedState::Defunct {
            tracing::warn!(pin = %pin.display(), "removing the pin of a defunct link (interface recreated?)");
            std::fs::remove_file(&pin).map_err(|source| DatapathError::Remove { path: pin.clone(), source })?;
            AttachAction::RecreatedStale
        } else {
            AttachAction::Created
        };
        let id = classifier
            .attach_with_options(ifname, tc_type(direction), TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| err(format!("TCX attach: {}", chain(&e))))?;
        let link = classifier.take_link(id).map_err(|e| err(chain(&e)))?;
        let fd: FdLink = link.try_into().map_err(|e: LinkError| err(chain(&e)))?;
        let link_id = fd.info().map_err(|e| err(chain(&e)))?.id();
        fd.pin(&pin).map_err(|e| err(format!("pinning the link at {}: {}", pin.display(), chain(&e))))?;
        Ok(Attachment {
            program: program.to_string(),
            ifname: ifname.to_string(),
            direction,
            mechanism: Mechanism::Tcx,
            action,
            program_id: new_program_id,
            previous_program_id: None,
            link_id: Some(link_id),
            pin: Some(pin),
        })
    }

    fn attach_netlink(
        &mut self,
        program: &str,
        ifname: &str,
        direction: Direction,
    ) -> Result<Attachment, DatapathError> {
        let err = |reason: String| attach_err(program, ifname, direction, reason);
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(err(format!("adding the clsact qdisc: {}", chain(&e)))),
        }
        let program_id = self.program_id(program)?;
        let classifier = self.program_mut(program)?;
        let options = NlOptions { priority: NETLINK_PRIORITY, handle: NETLINK_HANDLE, classid: None };
        let (id, action) =
            match classifier.attach_with_options(ifname, tc_type(direction), TcAttachOptions::Netlink(options)) {
                Ok(id) => (id, AttachAction::Created),
                Err(ProgramError::TcError(TcError::NetlinkError(e))) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // Our filter from a previous run: replace it in place.
                    let previous = SchedClassifierLink::attached(
                        ifname,
                        tc_type(direction),
                        NETLINK_PRIORITY,
                        NETLINK_HANDLE,
                        None,
                    )
                    .map_err(|e| err(chain(&e)))?;
                    let id = classifier
                        .attach_to_link(previous)
                        .map_err(|e| err(format!("replacing filter: {}", chain(&e))))?;
                    (id, AttachAction::Replaced)
                }
                Err(e) => return Err(err(format!("clsact attach: {}", chain(&e)))),
            };
        let link = classifier.take_link(id).map_err(|e| err(chain(&e)))?;
        // A netlink "link" is just (ifindex, priority, handle); dropping it would delete the
        // filter. Forgetting it leaks a few bytes and leaves the filter installed, which is the
        // point: it must outlive this process.
        std::mem::forget(link);
        Ok(Attachment {
            program: program.to_string(),
            ifname: ifname.to_string(),
            direction,
            mechanism: Mechanism::Netlink,
            action,
            program_id,
            previous_program_id: None,
            link_id: None,
            pin: None,
        })
    }
}

/// What [`uninstall`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UninstallReport {
    pub links_unpinned: Vec<PathBuf>,
    pub netlink_filters_removed: Vec<String>,
    pub pin_dir_removed: Option<PathBuf>,
}

/// Removes everything beeline attached and pinned: unpins every link (which detaches it once no
/// process holds it — stop the agent first), deletes our clsact filters on every interface of
/// the calling thread's namespace, and removes the pin directory with its maps.
#[tracing::instrument(level = "info", skip_all, fields(pin_dir = %pin_dir.display()))]
pub fn uninstall(pin_dir: &Path) -> Result<UninstallReport, DatapathError> {
    let pins = PinLayout::new(pin_dir);
    let mut report = UninstallReport::default();
    let links_dir = pins.links_dir();
    if let Ok(entries) = std::fs::read_dir(&links_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|source| DatapathError::Remove { path: path.clone(), source })?;
            report.links_unpinned.push(path);
        }
    }
    for ifname in interface_names() {
        for program in programs::ALL {
            for direction in [Direction::Ingress, Direction::Egress] {
                // Fails with NotFound (or a netlink error without clsact) where nothing is ours.
                if tc::qdisc_detach_program(&ifname, tc_type(direction), program).is_ok() {
                    report.netlink_filters_removed.push(format!("{ifname}/{}/{program}", direction.as_str()));
                }
            }
        }
    }
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => report.pin_dir_removed = Some(pin_dir.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(DatapathError::Remove { path: pin_dir.to_path_buf(), source }),
    }
    tracing::info!(?report, "datapath uninstalled");
    Ok(report)
}

/// Interface names of the calling thread's network namespace (`if_nameindex(3)` asks the kernel
/// over a socket, so unlike /sys/class/net it follows `setns`).
pub fn interface_names() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zeroed entry, freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return names;
        }
        let mut cursor = head;
        while (*cursor).if_index != 0 && !(*cursor).if_name.is_null() {
            names.push(std::ffi::CStr::from_ptr((*cursor).if_name).to_string_lossy().into_owned());
            cursor = cursor.add(1);
        }
        libc::if_freenameindex(head);
    }
    names
}

/// The name of interface `ifindex` in the calling thread's namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// The ifindex of `ifname` in the calling thread's namespace.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let name = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_tcx_from_6_6() {
        let cases = [
            (AttachMode::Auto, Some(KernelVersion::new(6, 18, 0)), Mechanism::Tcx),
            (AttachMode::Auto, Some(KernelVersion::new(6, 6, 0)), Mechanism::Tcx),
            (AttachMode::Auto, Some(KernelVersion::new(6, 5, 13)), Mechanism::Netlink),
            (AttachMode::Auto, None, Mechanism::Netlink),
            (AttachMode::Netlink, Some(KernelVersion::new(6, 18, 0)), Mechanism::Netlink),
            (AttachMode::Tcx, Some(KernelVersion::new(5, 10, 0)), Mechanism::Tcx),
        ];
        for (mode, kernel, want) in cases {
            assert_eq!(choose_mechanism(mode, kernel), want, "{mode:?} on {kernel:?}");
        }
    }

    #[test]
    fn a_pinned_link_is_live_only_if_its_program_is_attached() {
        let cases = [
            (None, vec![], PinnedState::Absent),
            (None, vec![7], PinnedState::Absent),
            (Some(7), vec![3, 7], PinnedState::Live { program_id: 7 }),
            (Some(7), vec![], PinnedState::Defunct),
            (Some(7), vec![8], PinnedState::Defunct),
        ];
        for (pinned, attached, want) in cases {
            assert_eq!(pinned_state(pinned, &attached), want, "{pinned:?} {attached:?}");
        }
    }
}
