//! The kube-proxy baseline, reused as it is: its `tcpbench.c` compiled into the results dir (beeline's
//! client and servers are the same binary), and its `run.sh` invoked with a reduced profile whose
//! `results.json` is read back. The baseline directory is never written to.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beeline::bench::report::{baseline_cells, BaselineCells};

use crate::{signals, Args, Budget};

/// `cc -O2 tcpbench.c` into `<dir>/tcpbench`.
pub fn build_tcpbench(baseline_dir: &Path, dir: &Path) -> Result<PathBuf, String> {
    let src = baseline_dir.join("tcpbench.c");
    let bin = dir.join("tcpbench");
    let out = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| format!("cc {}: {e} (install gcc)", src.display()))?;
    if !out.status.success() {
        return Err(format!("cc {}: {}", src.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(bin)
}

fn join(values: &[u32]) -> String {
    values.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The reduced profile: the same N values, backends and connection counts as beeline's side; one
/// full program per N above 1000 (the baseline's own rule), at most two incremental repetitions
/// (one nftables sync at N=10000 costs seconds), iptables-nft above N=1000 only as the
/// datapath-equivalent "lite" rule set unless `--baseline-nft-faithful`.
pub fn profile(args: &Args, budget_minutes: u64) -> Vec<String> {
    let nft_max = if args.baseline_nft_faithful {
        args.prog_n.iter().chain(&args.dp_n).max().copied().unwrap_or(1000)
    } else {
        1000
    };
    [
        ("--modes", "iptables-nft,iptables-legacy,nftables".to_string()),
        ("--prog-n", join(&args.prog_n)),
        ("--dp-n", join(&args.dp_n)),
        ("--backends", args.backends.to_string()),
        ("--prog-reps", args.prog_reps.to_string()),
        ("--prog-reps-large", "1".into()),
        ("--inc-reps", args.inc_reps.min(2).to_string()),
        ("--resync-reps", "1".into()),
        ("--dp-runs", args.runs.to_string()),
        ("--conns", args.conns.to_string()),
        ("--warmup", args.warmup.to_string()),
        ("--rr-count", "1000".into()),
        ("--iptables-nft-max-n", nft_max.to_string()),
        ("--max-minutes", budget_minutes.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}

pub struct Output {
    pub cells: BaselineCells,
    /// Relative to the results dir.
    pub results_dir: String,
    pub args: Vec<String>,
    pub pending: Vec<String>,
}

/// Runs `run.sh` to completion (forwarding a stop signal to it: it removes its namespaces on
/// SIGTERM) and reads its results.
pub fn run(args: &Args, dir: &Path, budget: &Budget) -> Result<Output, String> {
    let minutes = (budget.remaining().as_secs() / 60).saturating_sub(1).clamp(1, 14);
    let profile = profile(args, minutes);
    let out_root = dir.join("baseline");
    std::fs::create_dir_all(&out_root).map_err(|e| format!("baseline output dir: {e}"))?;
    let log_path = dir.join("baseline.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("baseline log: {e}"))?;
    let run_sh = args.baseline_dir.join("run.sh");
    eprintln!("kube-proxy baseline: {} {} (log: {})", run_sh.display(), profile.join(" "), log_path.display());
    let mut child = Command::new(&run_sh)
        .args(&profile)
        .arg("--out")
        .arg(&out_root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("baseline log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("kube-proxy baseline: cannot start {}: {e}", run_sh.display()))?;
    let mut terminated: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("kube-proxy baseline: waiting: {e}")),
        }
        if signals::stopped() && terminated.is_none() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            terminated = Some(Instant::now());
        }
        // run.sh bounds itself with `timeout`; this is the backstop if it ever hangs after SIGTERM.
        if terminated.is_some_and(|t| t.elapsed() > Duration::from_secs(90)) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // bench.py writes results/<stamp>/ even when it stops early.
    let stamp = std::fs::read_dir(&out_root)
        .map_err(|e| format!("baseline results: {e}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("results.json").exists())
        .max()
        .ok_or_else(|| format!("kube-proxy baseline wrote no results ({status}); see {}", log_path.display()))?;
    let text = std::fs::read_to_string(stamp.join("results.json")).map_err(|e| format!("baseline results: {e}"))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("baseline results.json: {e}"))?;
    let mut pending = Vec::new();
    if !status.success() {
        pending.push(format!("kube-proxy baseline exited with {status}; its rows may be partial (see baseline.log)"));
    }
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Some(line) = log_text.lines().find(|l| l.contains("stopped early")) {
        pending.push(format!("kube-proxy baseline {}", line.trim()));
    }
    if !args.baseline_nft_faithful && args.prog_n.iter().any(|n| *n > 1000) {
        pending.push(
            "iptables-nft full programming above N=1000 not run (≈7 min at N=10000; `--baseline-nft-faithful` runs it). \
             The baseline README's reference run measured 424 s at N=10000 on this machine."
                .into(),
        );
    }
    let rel = stamp.strip_prefix(dir).unwrap_or(&stamp).display().to_string();
    Ok(Output { cells: baseline_cells(&json), results_dir: rel, args: profile, pending })
}
