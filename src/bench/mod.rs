//! Support for the services benchmark (`benches/services/`, run with `cargo bench --bench
//! services`; see `docs/benchmarks.md`): the synthetic cluster it programs, the baseline's
//! `tcpbench` output as data, and the results model with its ratios and markdown table. Pure code,
//! tested here; the benchmark binary is the I/O shell.

pub mod fixtures;
pub mod report;
pub mod tcpbench;
