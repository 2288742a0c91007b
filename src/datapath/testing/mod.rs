//! Test support for datapath tests, shared by unit tests (`cfg(test)`) and the integration tests
//! under `tests/` (through the `testing` feature, which the crate's self dev-dependency enables).
//! Release builds never compile it.
//!
//! - [`lb`]: programs desired LB rows into the pinned maps.
//! - [`packet`]: builders for Ethernet/ARP/IPv4/IPv6/TCP/UDP/ICMP/ICMPv6 frames with correct
//!   checksums, a parser, and checksum verifiers for what a program hands back.
//! - [`test_run`]: `BPF_PROG_TEST_RUN` through aya's `TestRun`, with the output buffer sized and
//!   trimmed for the caller.

pub mod lb;
pub mod packet;
pub mod test_run;
