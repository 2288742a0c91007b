//! The services benchmark: beeline's eBPF service load-balancing next to the kube-proxy baseline
//! (`../shared/baselines/kube-proxy/`, invoked as is), side by side in one run on this machine.
//!
//! ```text
//! sudo cargo bench --bench services                 # a few minutes; results in target/bench-results/services/<stamp>/
//! sudo cargo bench --bench services -- --quick      # N=1000 programming on both sides, fewer runs
//! sudo cargo bench --bench services -- --help
//! ```
//!
//! (a) programming N services × B backends into the real pinned LB maps through the map manager
//!     (the services controller's pass + the map writer), and one incremental change with N present;
//! (b) new-connection rate and connect() latency from a client pod to a ClusterIP with 1 / 1 000 /
//!     10 000 services programmed, `from_container` on the client's veth doing the LB;
//! (c) pod-to-service vs pod-to-pod TCP throughput;
//! then the baseline's `run.sh` with a reduced profile, and one table (markdown + JSON) with ratios.
//! See `docs/benchmarks.md`. Under `cargo test` (no `--bench` argument) it is a smoke run: every
//! beeline step with tiny counts, no baseline, and a failure when a step produced nothing.
//! Everything it creates is removed at the end, also on failure, SIGINT and SIGTERM.

#[path = "../../tests/integration/mod.rs"]
mod integration;

mod baseline;
mod connections;
mod programming;
mod signals;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beeline::bench::report::{Meta, Results};
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "services", about = "beeline services benchmark next to the kube-proxy baseline (root)")]
pub struct Args {
    /// Results go to <out>/<timestamp>/ (results.md, results.json, baseline/, baseline.log).
    #[arg(long, default_value = "target/bench-results/services")]
    out: PathBuf,
    /// N values for the programming measurement (a), on both sides.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    prog_n: Vec<u32>,
    /// N values for the connection-path measurement (b), on both sides.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    dp_n: Vec<u32>,
    /// Backends per service.
    #[arg(long, default_value_t = 3)]
    backends: u32,
    /// Full-program repetitions (beeline; the baseline does 1 above N=5000).
    #[arg(long, default_value_t = 3)]
    prog_reps: usize,
    /// Incremental-change repetitions (beeline; the baseline gets at most 2: one nftables sync at
    /// N=10000 takes seconds).
    #[arg(long, default_value_t = 5)]
    inc_reps: usize,
    /// tcpbench runs per connection-path cell (both sides).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Connections per run (both sides), after `warmup` unmeasured ones.
    #[arg(long, default_value_t = 2000)]
    conns: u32,
    #[arg(long, default_value_t = 200)]
    warmup: u32,
    /// Seconds per bulk transfer (c), and transfers per path.
    #[arg(long, default_value_t = 3)]
    throughput_secs: u64,
    #[arg(long, default_value_t = 2)]
    throughput_reps: usize,
    /// The kube-proxy baseline (read-only; only its run.sh is invoked).
    #[arg(long, default_value = "/work/shared/baselines/kube-proxy")]
    baseline_dir: PathBuf,
    /// Do not run the baseline (beeline's rows only).
    #[arg(long)]
    skip_baseline: bool,
    /// Program iptables-nft faithfully at N > 1000 too (adds ~7 minutes at N=10000).
    #[arg(long)]
    baseline_nft_faithful: bool,
    /// Smaller profile: programming at N=1000, 2 runs × 1000 connections, 1 s transfers.
    #[arg(long)]
    quick: bool,
    /// Global time budget; steps not started by then are reported as not run.
    #[arg(long, default_value_t = 20.0)]
    max_minutes: f64,
    /// Passed by `cargo bench`; without it (under `cargo test`) this is a smoke run.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// `cargo test` runs bench targets too: check the steps still work, in seconds, without the
    /// baseline (minutes) and without figures anyone should read.
    fn apply_smoke(&mut self) {
        if !self.bench {
            self.prog_n = vec![200];
            self.dp_n = vec![1];
            self.backends = 2;
            self.prog_reps = 1;
            self.inc_reps = 1;
            self.runs = 1;
            self.conns = 100;
            self.warmup = 10;
            self.throughput_secs = 1;
            self.throughput_reps = 1;
            self.skip_baseline = true;
            self.max_minutes = 5.0;
            self.out = PathBuf::from("target/bench-results/services-smoke");
        }
    }

    fn apply_quick(&mut self) {
        if self.quick {
            self.prog_n = vec![1000];
            self.runs = 2;
            self.conns = 1000;
            self.warmup = 100;
            self.inc_reps = 3;
            self.throughput_secs = 1;
        }
    }
}

/// The run's wall-clock budget and the stop flag (signals).
#[derive(Clone, Copy)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    /// Err when a signal asked us to stop or the budget is spent: the caller skips what is left.
    pub fn check(&self, step: &str) -> Result<(), String> {
        if signals::stopped() {
            return Err(format!("{step}: not run (stopped by a signal)"));
        }
        if Instant::now() > self.deadline {
            return Err(format!("{step}: not run (time budget exhausted)"));
        }
        Ok(())
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Runs `f`, turning a panic (a failed setup step of the shared test helpers) into an error, so
/// the results gathered so far are still written. Destructors have run by then: namespaces, pins
/// and child processes are gone.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("{what} failed: {msg}"))
        }
    }
}

fn host() -> String {
    let uname = std::process::Command::new("uname").arg("-srm").output().ok();
    let uname = uname.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{uname}, {cpus} CPUs")
}

fn utc_now(format: &str) -> String {
    let out = std::process::Command::new("date").args(["-u", format]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn commit() -> String {
    let out = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn write_results(dir: &Path, results: &Results) -> std::io::Result<()> {
    std::fs::write(dir.join("results.md"), results.markdown())?;
    let json = serde_json::to_string_pretty(&results.to_json()).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), json)
}

fn main() {
    let mut args = Args::parse();
    args.apply_quick();
    args.apply_smoke();
    if let Err(e) = beeline::lab::require_root("the services benchmark") {
        eprintln!("{e}");
        std::process::exit(2);
    }
    signals::install();
    let budget = Budget { deadline: Instant::now() + Duration::from_secs_f64(args.max_minutes * 60.0) };
    let dir = args.out.join(utc_now("+%Y%m%d-%H%M%S"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let dir = dir.canonicalize().expect("results dir");

    let command: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut results = Results {
        meta: Meta {
            date: utc_now("+%Y-%m-%d %H:%M UTC"),
            command: format!("cargo bench --bench services -- {}", command.join(" ")).trim_end_matches(" -- ").into(),
            host: format!("{} (beeline {})", host(), commit()),
            backends_per_service: args.backends,
            ..Default::default()
        },
        ..Default::default()
    };
    results.meta.notes.push(
        "2 vCPUs shared with other engineers' builds and tests: client, softirq and server share the cores. \
         Expect ±10-30 % run-to-run noise on µs figures; compare within one run, not across runs."
            .into(),
    );
    results.meta.notes.push(
        "Topologies differ in shape, not in hops: the baseline routes client ns → router ns (rules) → \
         server ns; beeline goes client pod → node ns (from_container on the pod's veth, BPF redirect) → \
         backend pod. Both are two veth crossings per direction."
            .into(),
    );
    eprintln!("services benchmark → {}", dir.display());

    let tcpbench = guarded("building tcpbench", || baseline::build_tcpbench(&args.baseline_dir, &dir));

    // (a) programming
    for &n in &args.prog_n {
        match budget.check("beeline programming").and_then(|()| {
            guarded("beeline programming", || {
                programming::measure(n, args.backends, args.prog_reps, args.inc_reps, &budget)
            })
        }) {
            Ok(cells) => results.programming.extend(cells),
            Err(e) => results.pending.push(e),
        }
        let _ = write_results(&dir, &results);
    }

    // (b) + (c)
    match tcpbench.as_ref() {
        Ok(tcpbench) => {
            match budget
                .check("beeline connection path")
                .and_then(|()| guarded("beeline connection path", || connections::measure(&args, tcpbench, &budget)))
            {
                Ok(out) => {
                    results.connections.extend(out.connections);
                    results.throughput.extend(out.throughput);
                    results.pending.extend(out.pending);
                }
                Err(e) => results.pending.push(e),
            }
        }
        Err(e) => results.pending.push(format!("beeline connection path: not run ({e})")),
    }
    let _ = write_results(&dir, &results);

    // The baseline, after beeline's namespaces are gone so the two never compete for the CPUs.
    if args.skip_baseline {
        results.pending.push("kube-proxy baseline: skipped (--skip-baseline)".into());
    } else {
        match budget.check("kube-proxy baseline").and_then(|()| baseline::run(&args, &dir, &budget)) {
            Ok(out) => {
                results.programming.extend(out.cells.programming);
                results.connections.extend(out.cells.connections);
                results.meta.notes.extend(out.cells.notes);
                results.meta.baseline_dir = Some(out.results_dir);
                results.meta.baseline_args = out.args;
                results.pending.extend(out.pending);
            }
            Err(e) => results.pending.push(e),
        }
    }

    match write_results(&dir, &results) {
        Ok(()) => {
            println!("{}", results.markdown());
            eprintln!("wrote {0}/results.md and {0}/results.json", dir.display());
        }
        Err(e) => {
            eprintln!("cannot write results into {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    if signals::stopped() {
        std::process::exit(130);
    }
    if !args.bench {
        let failed: Vec<&String> = results.pending.iter().filter(|p| !p.contains("--skip-baseline")).collect();
        let unmeasured = results.connections.iter().any(|c| c.summary.is_none());
        if results.programming.is_empty() || results.connections.is_empty() || unmeasured || !failed.is_empty() {
            eprintln!("services benchmark smoke run failed: {failed:?}");
            std::process::exit(1);
        }
    }
}
