//! The datapath: the compiled eBPF object, loading/attaching/pinning, and (later) the map manager.

pub mod agent;
pub mod attach;
pub mod ct_gc;
pub mod devices;
pub mod events;
pub mod lb_tables;
pub mod loader;
pub mod netns;
pub mod pins;
pub mod pressure;
pub mod routes;
pub mod tables;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use attach::{uninstall, AttachMode, Attachment};
pub use loader::{Datapath, DatapathError, LoadOptions};
pub use pins::{Direction, PinLayout};

pub mod manager;

/// The eBPF object built from `beeline-ebpf` by `build.rs`, aligned for the ELF parser.
pub fn bpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/beeline.bpf.o"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_object_is_a_bpf_elf_with_our_program() {
        let bytes = super::bpf_object();
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(bytes[18], 247, "e_machine must be EM_BPF");
        let text = String::from_utf8_lossy(bytes);
        assert!(text.contains("from_container"), "program symbol missing");
        assert!(text.contains("beeline_ep_stats"), "map symbol missing");
    }
}
