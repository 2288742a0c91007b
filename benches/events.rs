//! The flow-events benchmark (root): what the event path costs forwarding, and whether the
//! agent's reader keeps up with a burst of new flows. Not a test: `cargo test` runs it only as a
//! smoke run (small counts, accounting checked, no figures worth reading).
//!
//! ```text
//! sudo cargo bench --bench events                 # ~1 min; results in target/bench-results/events/<stamp>.md
//! sudo cargo bench --bench events -- --repeat 500000 --flows 100000 --rounds 7
//! ```
//!
//! (a) **Forwarding cost.** `from_container` runs `--repeat` times in the kernel
//!     (`BPF_PROG_TEST_RUN`, the kernel's own per-run average) on one packet of an established
//!     TCP flow from a local pod to a pod on another node (VXLAN: the path that leaves the packet
//!     unchanged, so every repetition takes the same path), in four modes, interleaved round by
//!     round so machine noise hits them alike: trace events off (`bpf-events-trace-enabled:
//!     false`, the baseline), `monitor-aggregation: medium` (the default: an aggregation lookup
//!     per point, nothing written for an established flow), `none` with the agent's reader
//!     draining (two records per packet), and `none` with nobody reading (a full ring: each event
//!     costs a failed reservation and a lost-counter increment). Reported: median ns per packet
//!     and the ratio to the baseline.
//! (b) **The reader keeps up.** A burst of `--flows` new flows (one packet each, distinct source
//!     ports) at medium, each worth one to-overlay event, read concurrently by the agent's own
//!     reader code (`Observer::ingest`: decode, enrich, count, store). Reported: events ingested,
//!     events lost (the datapath's counter), and the rate. Every event is accounted for: ingested
//!     + lost = flows, or the run fails.

#[path = "../tests/integration/mod.rs"]
mod integration;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beeline::agent::observe::{FlowMetrics, Observer};
use beeline::datapath::{
    events,
    loader::programs::FROM_CONTAINER,
    tables,
    testing::{
        packet::{tcp_flags, FrameBuilder},
        test_run::run_tc_repeat,
    },
};
use beeline_common::datapath::{
    monitor_flags, DatapathConfig, MONITOR_AGGREGATION_MEDIUM, MONITOR_AGGREGATION_NONE, TUNNEL_VXLAN,
};
use clap::Parser;
use integration::{
    two_pods::{self, LXC_A, MAC_A},
    LoadedDatapath,
};

#[derive(Debug, Parser)]
#[command(name = "events", about = "beeline flow-events benchmark (root)")]
struct Args {
    /// Kernel repetitions per forwarding-cost measurement.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Interleaved rounds of the four forwarding-cost modes (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// New flows in the reader burst.
    #[arg(long, default_value_t = 50_000)]
    flows: u32,
    /// Results go to <out>/<timestamp>.md.
    #[arg(long, default_value = "target/bench-results/events")]
    out: std::path::PathBuf,
    /// Passed by `cargo bench`; without it (under `cargo test`) this is a smoke run.
    #[arg(long, hide = true)]
    bench: bool,
}

const REMOTE_POD: &str = "10.0.2.5";
const REMOTE_NODE: &str = "192.168.0.2";
/// Any non-zero ifindex: under test_run the redirect is only a verdict.
const VXLAN_IFINDEX: u32 = 77;

fn frame(sport: u16, flags: u8) -> Vec<u8> {
    let (a, b) = (two_pods::A.parse().unwrap(), REMOTE_POD.parse().unwrap());
    FrameBuilder::new(MAC_A, LXC_A).ipv4(a, b).tcp(sport, 80, flags).build()
}

/// The agent's reader on its own thread: drains the ring and ingests each record until stopped,
/// then drains once more.
struct Reader {
    stop: Arc<AtomicBool>,
    ingested: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(pin_dir: &std::path::Path) -> Reader {
        let mut ring = events::open_ring(pin_dir).expect("open the events ring");
        let stop = Arc::new(AtomicBool::new(false));
        let ingested = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), ingested.clone());
        let thread = std::thread::spawn(move || {
            let observer = Observer::new("bench-node", FlowMetrics::default());
            loop {
                let stopping = s.load(Ordering::Acquire);
                let records = events::drain(&mut ring);
                for r in &records {
                    observer.ingest(r);
                }
                n.fetch_add(records.len() as u64, Ordering::AcqRel);
                if stopping {
                    return;
                }
                if records.is_empty() {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        });
        Reader { stop, ingested, thread: Some(thread) }
    }

    /// Stops the reader after a last drain; the records it ingested.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("reader thread");
        }
        self.ingested.load(Ordering::Acquire)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    TraceOff,
    Medium,
    NoneRead,
    NoneFull,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::TraceOff, Mode::Medium, Mode::NoneRead, Mode::NoneFull];

    fn label(self) -> &'static str {
        match self {
            Mode::TraceOff => "trace events off (baseline)",
            Mode::Medium => "monitor-aggregation medium (default), established flow",
            Mode::NoneRead => "monitor-aggregation none, reader draining (2 events/packet)",
            Mode::NoneFull => "monitor-aggregation none, ring full (events lost)",
        }
    }

    fn flags(self) -> u32 {
        match self {
            Mode::TraceOff => monitor_flags(MONITOR_AGGREGATION_MEDIUM, false, true, true),
            Mode::Medium => monitor_flags(MONITOR_AGGREGATION_MEDIUM, true, true, true),
            Mode::NoneRead | Mode::NoneFull => monitor_flags(MONITOR_AGGREGATION_NONE, true, true, true),
        }
    }
}

struct Bench {
    dp: LoadedDatapath,
    base: DatapathConfig,
}

impl Bench {
    fn new() -> Bench {
        let dp = LoadedDatapath::new("bench-events");
        two_pods::register(&dp);
        let pin = dp.bpffs.pin_dir();
        tables::upsert_tunnel(&pin, "10.0.2.0/24".parse().unwrap(), REMOTE_NODE.parse().unwrap()).unwrap();
        let base = DatapathConfig {
            node_ip: tables::be("192.168.0.1".parse().unwrap()),
            tunnel_ifindex: VXLAN_IFINDEX,
            tunnel_proto: TUNNEL_VXLAN,
            pod_cidr_prefix_len: 24,
            ..Default::default()
        };
        Bench { dp, base }
    }

    fn set_flags(&self, flags: u32) {
        tables::write_config(&self.dp.bpffs.pin_dir(), &DatapathConfig { flags, ..self.base }).unwrap();
    }

    fn lost(&self) -> u64 {
        events::read_lost(&self.dp.bpffs.pin_dir()).unwrap()
    }

    /// Empties the ring (a previous mode's leftovers).
    fn drain(&self) {
        let mut ring = events::open_ring(&self.dp.bpffs.pin_dir()).unwrap();
        while !events::drain(&mut ring).is_empty() {}
    }

    /// (ns per packet, events ingested, events lost) of `repeat` kernel runs in `mode`; checks the
    /// events' accounting.
    fn measure(&self, mode: Mode, repeat: u32, sport: u16) -> Result<(f64, u64, u64), String> {
        self.set_flags(mode.flags());
        let packet = frame(sport, tcp_flags::ACK);
        let program = self.dp.datapath.program(FROM_CONTAINER).unwrap();
        // The flow's first packet outside the measurement: the aggregation entry exists.
        run_tc_repeat(program, &packet, 1).map_err(|e| e.to_string())?;
        self.drain();
        let lost_before = self.lost();
        let reader = (mode == Mode::NoneRead).then(|| Reader::start(&self.dp.bpffs.pin_dir()));
        if mode == Mode::NoneFull {
            // Fill the ring first, so every measured event is a failed reservation.
            run_tc_repeat(program, &packet, 200_000).map_err(|e| e.to_string())?;
        }
        let lost_mid = self.lost();
        let out = run_tc_repeat(program, &packet, repeat).map_err(|e| e.to_string())?;
        let ingested = reader.map(Reader::finish);
        let lost = self.lost() - lost_mid;
        match mode {
            Mode::TraceOff | Mode::Medium if self.lost() != lost_before => {
                return Err(format!("{}: events lost where none were written", mode.label()))
            }
            Mode::NoneRead => {
                let got = ingested.unwrap_or(0) + lost;
                if got != 2 * u64::from(repeat) {
                    return Err(format!("{}: {got} events accounted for, want {}", mode.label(), 2 * repeat));
                }
            }
            Mode::NoneFull if lost != 2 * u64::from(repeat) => {
                return Err(format!("{}: {lost} lost, want {}", mode.label(), 2 * repeat));
            }
            _ => {}
        }
        self.drain();
        Ok((out.duration.as_nanos() as f64, ingested.unwrap_or(0), lost))
    }

    /// (ingested, lost, seconds) for `flows` new flows at medium, read concurrently.
    fn burst(&self, flows: u32) -> Result<(u64, u64, f64), String> {
        self.set_flags(Mode::Medium.flags());
        self.drain();
        let program = self.dp.datapath.program(FROM_CONTAINER).unwrap();
        let lost_before = self.lost();
        let reader = Reader::start(&self.dp.bpffs.pin_dir());
        let start = Instant::now();
        for i in 0..flows {
            // Distinct (source port, sequence) per flow: source ports wrap every 64k flows, so
            // the destination port changes too.
            let sport = 1024 + (i % 60_000) as u16;
            let (a, b) = (two_pods::A.parse().unwrap(), REMOTE_POD.parse().unwrap());
            let packet =
                FrameBuilder::new(MAC_A, LXC_A).ipv4(a, b).tcp(sport, 80 + (i / 60_000) as u16, tcp_flags::SYN).build();
            run_tc_repeat(program, &packet, 1).map_err(|e| e.to_string())?;
        }
        let sent = start.elapsed();
        let ingested = reader.finish();
        let lost = self.lost() - lost_before;
        if ingested + lost != u64::from(flows) {
            return Err(format!("burst: {ingested} ingested + {lost} lost != {flows} flows"));
        }
        Ok((ingested, lost, sent.as_secs_f64()))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = Args::parse();
    if !args.bench {
        // Under `cargo test`: exercise every step with small counts.
        args.repeat = 2_000;
        args.rounds = 1;
        args.flows = 1_000;
    }
    if let Err(e) = beeline::lab::require_root("the events benchmark") {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let bench = Bench::new();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Mode::ALL.len()];
    // Events (ingested, lost) per mode over all rounds.
    let mut counts = vec![(0u64, 0u64); Mode::ALL.len()];
    for round in 0..args.rounds {
        for (i, mode) in Mode::ALL.iter().enumerate() {
            // A fresh source port per round: a new flow, first packet outside the measurement.
            match bench.measure(*mode, args.repeat, 30_000 + round as u16 * 8 + i as u16) {
                Ok((ns, ingested, lost)) => {
                    samples[i].push(ns);
                    counts[i].0 += ingested;
                    counts[i].1 += lost;
                }
                Err(e) => fail(&e),
            }
        }
    }
    let (ingested, lost, secs) = bench.burst(args.flows).unwrap_or_else(|e| fail(&e));

    let base = median(samples[0].clone());
    let mut md = String::new();
    md.push_str(&format!(
        "# Flow events benchmark\n\n`sudo cargo bench --bench events -- --repeat {} --rounds {} --flows {}` on {} \
         ({} CPUs), beeline {}.\n\n",
        args.repeat,
        args.rounds,
        args.flows,
        uname(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        git_head()
    ));
    md.push_str("## (a) from_container per packet (kernel test_run average, median of rounds)\n\n");
    md.push_str("| mode | ns/packet | vs events off | events read | events lost |\n|---|---:|---:|---:|---:|\n");
    for (i, mode) in Mode::ALL.iter().enumerate() {
        let ns = median(samples[i].clone());
        let (read, lost) = counts[i];
        md.push_str(&format!("| {} | {ns:.0} | {:.2}× | {read} | {lost} |\n", mode.label(), ns / base));
    }
    md.push_str(&format!(
        "\n## (b) burst of {} new flows at medium, read by the agent's reader\n\n\
         | events ingested | events lost | flows/s offered |\n|---:|---:|---:|\n| {ingested} | {lost} | {:.0} |\n",
        args.flows,
        f64::from(args.flows) / secs
    ));
    print!("{md}");
    if args.bench {
        let _ = std::fs::create_dir_all(&args.out);
        let path = args.out.join(format!("{}.md", stamp()));
        match std::fs::write(&path, &md) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

/// A panic, not `exit`: unwinding removes the pinned maps and stops the reader.
fn fail(e: &str) -> ! {
    panic!("events benchmark failed: {e}");
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn uname() -> String {
    command_output("uname", &["-srm"])
}

fn git_head() -> String {
    command_output("git", &["rev-parse", "--short", "HEAD"])
}

fn stamp() -> String {
    command_output("date", &["-u", "+%Y%m%d-%H%M%S"])
}
