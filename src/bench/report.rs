//! The services benchmark's results: beeline's cells and the kube-proxy baseline's (read from the
//! baseline's `results.json`) in one model, the ratios between them, and the markdown table.
//!
//! Ratios are oriented so that **> 1 means beeline is better**: times are `baseline ÷ beeline`,
//! rates are `beeline ÷ baseline`. Every ratio uses medians over repetitions, as measured in the
//! same run.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tcpbench::{min_median, CrrSummary};

/// The system row name of beeline's own cells.
pub const BEELINE: &str = "beeline";

/// A control-plane operation timed at N services present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgOp {
    /// Program everything from scratch (kube-proxy's first sync; beeline's first pass on empty maps).
    Full,
    /// Add one service with N present: the whole sync (kube-proxy: save/list reads + partial
    /// restore/transaction; beeline: desired-state pass over all N + the diff written to the maps).
    Add1,
    /// The same, only the kernel write (restore/transaction alone; beeline's map writes alone).
    Add1Tx,
    /// Change one backend of one service with N present: the whole sync.
    Backend,
    BackendTx,
    /// iptables' periodic full resync with N present.
    FullResync,
}

impl ProgOp {
    pub const ALL: [ProgOp; 6] =
        [ProgOp::Full, ProgOp::Add1, ProgOp::Add1Tx, ProgOp::Backend, ProgOp::BackendTx, ProgOp::FullResync];

    fn title(self) -> &'static str {
        match self {
            ProgOp::Full => "full program",
            ProgOp::Add1 => "add 1 svc (sync)",
            ProgOp::Add1Tx => "add 1 svc (kernel write)",
            ProgOp::Backend => "change 1 backend (sync)",
            ProgOp::BackendTx => "change 1 backend (kernel write)",
            ProgOp::FullResync => "full resync",
        }
    }

    /// The field of the baseline's `kind: program` record.
    fn baseline_field(self) -> &'static str {
        match self {
            ProgOp::Full => "full",
            ProgOp::Add1 => "add1",
            ProgOp::Add1Tx => "add1_tx_only",
            ProgOp::Backend => "backend",
            ProgOp::BackendTx => "backend_tx_only",
            ProgOp::FullResync => "full_resync",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgCell {
    pub system: String,
    pub n: u32,
    pub op: ProgOp,
    pub min_s: f64,
    pub med_s: f64,
    pub reps: usize,
}

impl ProgCell {
    /// A cell from raw samples (seconds); `None` when there are none.
    pub fn from_samples(system: &str, n: u32, op: ProgOp, samples: &[f64]) -> Option<ProgCell> {
        let (min_s, med_s) = min_median(samples)?;
        Some(ProgCell { system: system.to_string(), n, op, min_s, med_s, reps: samples.len() })
    }
}

/// A connection-path cell: measured, or why not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnCell {
    pub system: String,
    pub n: u32,
    /// `last` (the last service's ClusterIP, the baseline's worst case), `last (lite)`, `first`,
    /// or `pod-ip` (no service: the transport floor).
    pub target: String,
    pub summary: Option<CrrSummary>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThroughputCell {
    /// `pod-to-pod` or `pod-to-service`.
    pub path: String,
    pub gbit_s: Vec<f64>,
    pub seconds_each: f64,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    pub command: String,
    pub host: String,
    pub backends_per_service: u32,
    /// Where the baseline's own results of this run are (relative to the results dir), and how it
    /// was invoked; `None` when it did not run.
    pub baseline_dir: Option<String>,
    pub baseline_args: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub programming: Vec<ProgCell>,
    pub connections: Vec<ConnCell>,
    pub throughput: Vec<ThroughputCell>,
    /// What was not measured, and why.
    pub pending: Vec<String>,
}

/// One ratio: beeline against `system` for `what` at `n`; > 1 means beeline is better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub system: String,
    pub n: u32,
    pub what: String,
    pub ratio: f64,
}

/// What the baseline's `results.json` contributes: its cells, and notes on what it skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaselineCells {
    pub programming: Vec<ProgCell>,
    pub connections: Vec<ConnCell>,
    pub notes: Vec<String>,
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn summary_from_baseline(r: &Value) -> Option<CrrSummary> {
    let runs = r.get("samples").and_then(Value::as_array);
    let sum = |key: &str| runs.map(|s| s.iter().filter_map(|x| f(x, key)).sum()).unwrap_or(0.0);
    Some(CrrSummary {
        connect_p50_us_min: f(r, "connect_p50_us_min")?,
        connect_p50_us_med: f(r, "connect_p50_us_med")?,
        connect_p99_us_min: f(r, "connect_p99_us_min")?,
        connect_p99_us_med: f(r, "connect_p99_us_med")?,
        txn_p50_us_min: f(r, "txn_p50_us_min")?,
        txn_p50_us_med: f(r, "txn_p50_us_med")?,
        conn_per_s_med: f(r, "conn_per_s_med")?,
        runs: runs.map_or(0, Vec::len),
        connections: sum("n"),
        errors: sum("errors"),
    })
}

/// Reads the baseline's `results.json` (`{"meta":…, "results":[{"kind":…}, …]}`).
pub fn baseline_cells(json: &Value) -> BaselineCells {
    let mut out = BaselineCells::default();
    let records = json.get("results").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    for r in records {
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
        let mode = r.get("mode").and_then(Value::as_str).unwrap_or("?").to_string();
        let n = r.get("n").and_then(Value::as_u64).unwrap_or(0) as u32;
        match kind {
            "program" => {
                for op in ProgOp::ALL {
                    let Some(cell) = r.get(op.baseline_field()) else { continue };
                    if let (Some(min_s), Some(med_s)) = (f(cell, "min_s"), f(cell, "med_s")) {
                        let reps = cell.get("reps").and_then(Value::as_u64).unwrap_or(0) as usize;
                        out.programming.push(ProgCell { system: mode.clone(), n, op, min_s, med_s, reps });
                    }
                }
            }
            "ipset" => {
                if let Some(t) = r.get("t") {
                    if let (Some(min_s), Some(med_s)) = (f(t, "min_s"), f(t, "med_s")) {
                        let reps = t.get("reps").and_then(Value::as_u64).unwrap_or(0) as usize;
                        let system = "ipvs (ipset part only)".to_string();
                        out.programming.push(ProgCell { system, n, op: ProgOp::Full, min_s, med_s, reps });
                    }
                }
            }
            "datapath_crr" => {
                let target = r.get("target").and_then(Value::as_str).unwrap_or("?").to_string();
                let system = if mode == "direct" { "direct (no rules)".to_string() } else { mode };
                out.connections.push(ConnCell { system, n, target, summary: summary_from_baseline(r), note: None });
            }
            "lite_program" => out.notes.push(format!(
                "{mode} N={n}: connection path measured on the baseline's datapath-equivalent \"lite\" rule set \
                 (programmed in {})",
                fmt_s(f(r, "t").unwrap_or(f64::NAN))
            )),
            "skipped" => out.notes.push(format!(
                "{mode} N={n}: full programming not run in this run (about 7 minutes at N=10000; \
                 `--baseline-nft-faithful` runs it)"
            )),
            _ => {}
        }
    }
    out
}

/// Seconds as the baseline prints them.
pub fn fmt_s(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x < 1e-3 {
        format!("{:.0} µs", x * 1e6)
    } else if x < 1.0 {
        format!("{:.1} ms", x * 1e3)
    } else {
        format!("{x:.2} s")
    }
}

fn is_last(target: &str) -> bool {
    target == "last" || target.starts_with("last ")
}

impl Results {
    /// Every ratio of beeline against each other system, at equal N and operation.
    pub fn ratios(&self) -> Vec<Ratio> {
        let mut out = Vec::new();
        for ours in self.programming.iter().filter(|c| c.system == BEELINE) {
            for theirs in self.programming.iter().filter(|c| c.system != BEELINE && c.n == ours.n && c.op == ours.op) {
                if ours.med_s > 0.0 {
                    out.push(Ratio {
                        system: theirs.system.clone(),
                        n: ours.n,
                        what: ProgOp::title(ours.op).to_string(),
                        ratio: theirs.med_s / ours.med_s,
                    });
                }
            }
        }
        let measured = |c: &&ConnCell| c.summary.is_some() && is_last(&c.target);
        for ours in self.connections.iter().filter(|c| c.system == BEELINE).filter(measured) {
            let a = ours.summary.expect("filtered");
            for theirs in self.connections.iter().filter(|c| c.system != BEELINE && c.n == ours.n).filter(measured) {
                let b = theirs.summary.expect("filtered");
                for (what, ratio) in [
                    ("connect p50", b.connect_p50_us_med / a.connect_p50_us_med),
                    ("connect p99", b.connect_p99_us_med / a.connect_p99_us_med),
                    ("conn/s", a.conn_per_s_med / b.conn_per_s_med),
                ] {
                    if ratio.is_finite() {
                        out.push(Ratio { system: theirs.system.clone(), n: ours.n, what: what.into(), ratio });
                    }
                }
            }
        }
        out
    }

    /// The JSON document: the results plus their ratios.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("plain data serializes");
        v["ratios"] = serde_json::to_value(self.ratios()).expect("plain data serializes");
        v
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(s, "# beeline services benchmark ({})\n", m.date);
        let _ = writeln!(s, "Command: `{}`  \nHost: {}  ", m.command, m.host);
        match &m.baseline_dir {
            Some(dir) => {
                let _ = writeln!(
                    s,
                    "kube-proxy baseline: run in this same run (`run.sh {}`), its own tables in `{dir}/results.md`.\n",
                    m.baseline_args.join(" ")
                );
            }
            None => s.push_str("kube-proxy baseline: **not run** (only beeline's rows below).\n\n"),
        }
        self.programming_md(&mut s);
        self.connections_md(&mut s);
        self.throughput_md(&mut s);
        if !self.pending.is_empty() {
            s.push_str("\n## Pending / not measured\n\n");
            for p in &self.pending {
                let _ = writeln!(s, "- {p}");
            }
        }
        if !m.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &m.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    fn systems<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut out: Vec<String> = vec![BEELINE.to_string()];
        for n in names {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    fn programming_md(&self, s: &mut String) {
        if self.programming.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## (a) Programming N services × {} backends\n\nmin / median over repetitions. *sync* = everything one \
             sync does (kube-proxy: its reads + restore/transaction; beeline: the desired-state pass over all N \
             services + the map manager writing the difference into the pinned maps); *kernel write* = the \
             restore/transaction alone, or beeline's map writes alone.\n",
            self.meta.backends_per_service
        );
        let ops: Vec<ProgOp> =
            ProgOp::ALL.into_iter().filter(|op| self.programming.iter().any(|c| c.op == *op)).collect();
        let _ = writeln!(s, "| system | N | {} |", ops.iter().map(|o| o.title()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(s, "|---|---|{}", "---|".repeat(ops.len()));
        let mut ns: Vec<u32> = self.programming.iter().map(|c| c.n).collect();
        ns.sort_unstable();
        ns.dedup();
        for system in self.systems(self.programming.iter().map(|c| &c.system)) {
            for n in &ns {
                let cells: Vec<Option<&ProgCell>> = ops
                    .iter()
                    .map(|op| self.programming.iter().find(|c| c.system == system && c.n == *n && c.op == *op))
                    .collect();
                if cells.iter().all(Option::is_none) {
                    continue;
                }
                let text: Vec<String> = cells
                    .iter()
                    .map(|c| c.map_or("-".into(), |c| format!("{} / {}", fmt_s(c.min_s), fmt_s(c.med_s))))
                    .collect();
                let name = if system == BEELINE { format!("**{system}**") } else { system.clone() };
                let _ = writeln!(s, "| {name} | {n} | {} |", text.join(" | "));
            }
        }
        let ratios: Vec<Ratio> =
            self.ratios().into_iter().filter(|r| ProgOp::ALL.iter().any(|o| o.title() == r.what)).collect();
        if !ratios.is_empty() {
            s.push_str("\nRatio = baseline median ÷ beeline median (> 1: beeline faster):\n\n");
            ratio_table(s, &ratios);
        }
    }

    fn connections_md(&self, s: &mut String) {
        if self.connections.is_empty() {
            return;
        }
        s.push_str(
            "\n## (b) New connections from a client pod to a ClusterIP with N services programmed\n\n\
             Sequential new TCP connections (connect + 32 B echo + RST) with the baseline's `tcpbench`; \
             connect() = SYN → SYN/ACK (the first packet is the one that gets load-balanced). \
             min / median across runs of each run's percentile, µs; conn/s = median.\n\n",
        );
        s.push_str(
            "| system | N | target | connect p50 | connect p99 | txn p50 | conn/s |\n|---|---|---|---|---|---|---|\n",
        );
        let mut rows: Vec<&ConnCell> = self.connections.iter().collect();
        let rank = |c: &ConnCell| match c.system.as_str() {
            BEELINE => 0,
            s if s.starts_with("direct") => 1,
            _ => 2,
        };
        rows.sort_by(|a, b| (rank(a), &a.system, a.n, &a.target).cmp(&(rank(b), &b.system, b.n, &b.target)));
        for c in rows {
            let name = if c.system == BEELINE { format!("**{}**", c.system) } else { c.system.clone() };
            match (&c.summary, &c.note) {
                (Some(x), _) => {
                    let _ = writeln!(
                        s,
                        "| {name} | {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} |",
                        c.n,
                        c.target,
                        x.connect_p50_us_min,
                        x.connect_p50_us_med,
                        x.connect_p99_us_min,
                        x.connect_p99_us_med,
                        x.txn_p50_us_min,
                        x.txn_p50_us_med,
                        x.conn_per_s_med
                    );
                }
                (None, note) => {
                    let _ =
                        writeln!(s, "| {name} | {} | {} | {} | | | |", c.n, c.target, note.as_deref().unwrap_or("-"));
                }
            }
        }
        let ratios: Vec<Ratio> =
            self.ratios().into_iter().filter(|r| r.what.starts_with("connect") || r.what == "conn/s").collect();
        if !ratios.is_empty() {
            s.push_str(
                "\nRatio (last service's ClusterIP; > 1: beeline better): connect = baseline ÷ beeline, \
                 conn/s = beeline ÷ baseline:\n\n",
            );
            ratio_table(s, &ratios);
        }
    }

    fn throughput_md(&self, s: &mut String) {
        if self.throughput.is_empty() {
            return;
        }
        s.push_str("\n## (c) TCP throughput on beeline, one bulk stream\n\n| path | Gbit/s min / median | runs × seconds | note |\n|---|---|---|---|\n");
        let mut medians = Vec::new();
        for t in &self.throughput {
            let cell = min_median(&t.gbit_s);
            if let Some((_, med)) = cell {
                medians.push((t.path.as_str(), med));
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} × {:.0} s | {} |",
                t.path,
                cell.map_or("-".into(), |(min, med)| format!("{min:.2} / {med:.2}")),
                t.gbit_s.len(),
                t.seconds_each,
                t.note.as_deref().unwrap_or("")
            );
        }
        let find = |p: &str| medians.iter().find(|(path, _)| *path == p).map(|(_, m)| *m);
        if let (Some(svc), Some(pod)) = (find("pod-to-service"), find("pod-to-pod")) {
            let _ = writeln!(s, "\npod-to-service ÷ pod-to-pod (median): {:.2}", svc / pod);
        }
    }
}

fn ratio_table(s: &mut String, ratios: &[Ratio]) {
    let mut whats: Vec<&str> = Vec::new();
    for r in ratios {
        if !whats.contains(&r.what.as_str()) {
            whats.push(&r.what);
        }
    }
    let mut keys: Vec<(&str, u32)> = ratios.iter().map(|r| (r.system.as_str(), r.n)).collect();
    keys.sort();
    keys.dedup();
    let _ = writeln!(s, "| beeline vs | N | {} |", whats.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(whats.len()));
    for (system, n) in keys {
        let cells: Vec<String> = whats
            .iter()
            .map(|w| {
                ratios
                    .iter()
                    .find(|r| r.system == system && r.n == n && r.what == *w)
                    .map_or("-".into(), |r| format!("{:.1}×", r.ratio))
            })
            .collect();
        let _ = writeln!(s, "| {system} | {n} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn summary(p50: f64, p99: f64, rate: f64) -> CrrSummary {
        CrrSummary {
            connect_p50_us_min: p50 - 1.0,
            connect_p50_us_med: p50,
            connect_p99_us_min: p99 - 1.0,
            connect_p99_us_med: p99,
            txn_p50_us_min: p50 + 20.0,
            txn_p50_us_med: p50 + 30.0,
            conn_per_s_med: rate,
            runs: 3,
            connections: 6000.0,
            errors: 0.0,
        }
    }

    /// A trimmed `results.json` of the baseline, with every record kind it writes.
    fn baseline_json() -> Value {
        json!({"meta": {}, "results": [
            {"kind": "datapath_crr", "mode": "direct", "n": 0, "target": "pod-ip",
             "samples": [{"n": 2000.0, "errors": 0.0}, {"n": 2000.0, "errors": 1.0}],
             "connect_p50_us_min": 33.0, "connect_p50_us_med": 43.0, "connect_p99_us_min": 70.0,
             "connect_p99_us_med": 80.0, "txn_p50_us_min": 63.0, "txn_p50_us_med": 82.0,
             "txn_p99_us_min": 1.0, "txn_p99_us_med": 1.0, "conn_per_s_min": 1.0, "conn_per_s_med": 9333.0,
             "conn_per_s_max": 1.0},
            {"kind": "datapath_crr", "mode": "iptables-nft", "n": 10000, "target": "last (lite)",
             "connect_p50_us_min": 259.0, "connect_p50_us_med": 300.0, "connect_p99_us_min": 444.0,
             "connect_p99_us_med": 464.0, "txn_p50_us_min": 311.0, "txn_p50_us_med": 350.0, "conn_per_s_med": 2400.0},
            {"kind": "datapath_crr", "mode": "iptables-nft", "n": 10000, "target": "first (lite)",
             "connect_p50_us_min": 58.0, "connect_p50_us_med": 60.0, "connect_p99_us_min": 100.0,
             "connect_p99_us_med": 102.0, "txn_p50_us_min": 104.0, "txn_p50_us_med": 108.0, "conn_per_s_med": 7431.0},
            {"kind": "datapath_rr", "mode": "direct", "n": 0},
            {"kind": "bpf_anchor", "ops": 20000},
            {"kind": "ipset", "n": 10000, "t": {"min_s": 0.7, "med_s": 0.72, "reps": 3}},
            {"kind": "lite_program", "mode": "iptables-nft", "n": 10000, "t": 0.444},
            {"kind": "skipped", "mode": "iptables-nft", "n": 10000},
            {"kind": "program", "mode": "nftables", "n": 10000, "b": 3,
             "full": {"min_s": 98.0, "med_s": 100.0, "reps": 1},
             "add1": {"min_s": 4.0, "med_s": 4.2, "reps": 2},
             "add1_tx_only": {"min_s": 0.2, "med_s": 0.25, "reps": 2},
             "backend": {"min_s": 3.6, "med_s": 4.0, "reps": 2},
             "backend_tx_only": {"min_s": 0.25, "med_s": 0.3, "reps": 2},
             "raw": {}},
        ]})
    }

    #[test]
    fn baseline_json_becomes_cells_and_notes() {
        let b = baseline_cells(&baseline_json());
        let ops: Vec<(&str, ProgOp, f64)> = b.programming.iter().map(|c| (c.system.as_str(), c.op, c.med_s)).collect();
        assert_eq!(
            ops,
            vec![
                ("ipvs (ipset part only)", ProgOp::Full, 0.72),
                ("nftables", ProgOp::Full, 100.0),
                ("nftables", ProgOp::Add1, 4.2),
                ("nftables", ProgOp::Add1Tx, 0.25),
                ("nftables", ProgOp::Backend, 4.0),
                ("nftables", ProgOp::BackendTx, 0.3),
            ]
        );
        let conns: Vec<(&str, u32, &str)> =
            b.connections.iter().map(|c| (c.system.as_str(), c.n, c.target.as_str())).collect();
        assert_eq!(
            conns,
            vec![
                ("direct (no rules)", 0, "pod-ip"),
                ("iptables-nft", 10000, "last (lite)"),
                ("iptables-nft", 10000, "first (lite)")
            ]
        );
        let direct = b.connections[0].summary.unwrap();
        assert_eq!((direct.runs, direct.connections, direct.errors), (2, 4000.0, 1.0));
        assert_eq!(b.notes.len(), 2, "{:?}", b.notes);
        assert!(b.notes[0].contains("lite") && b.notes[0].contains("444.0 ms"), "{}", b.notes[0]);
        assert!(b.notes[1].contains("not run"), "{}", b.notes[1]);
        assert_eq!(baseline_cells(&json!({})), BaselineCells::default(), "no results: no cells");
    }

    fn results() -> Results {
        let b = baseline_cells(&baseline_json());
        let mut r = Results { programming: b.programming, connections: b.connections, ..Default::default() };
        r.meta.backends_per_service = 3;
        r.programming.push(ProgCell::from_samples(BEELINE, 10000, ProgOp::Full, &[0.5, 0.4, 0.6]).unwrap());
        r.programming.push(ProgCell::from_samples(BEELINE, 10000, ProgOp::Add1, &[0.042]).unwrap());
        r.connections.push(ConnCell {
            system: BEELINE.into(),
            n: 10000,
            target: "last".into(),
            summary: Some(summary(30.0, 58.0, 9600.0)),
            note: None,
        });
        r.connections.push(ConnCell {
            system: BEELINE.into(),
            n: 1000,
            target: "last".into(),
            summary: None,
            note: Some("pending: LB datapath".into()),
        });
        r
    }

    #[test]
    fn ratios_pair_equal_n_and_operation_and_favour_beeline_above_one() {
        let ratios = results().ratios();
        let get = |system: &str, what: &str| {
            ratios
                .iter()
                .find(|r| r.system == system && r.what == what)
                .map(|r| (r.n, (r.ratio * 100.0).round() / 100.0))
        };
        let cases = [
            ("nftables", "full program", Some((10000, 200.0))),
            ("nftables", "add 1 svc (sync)", Some((10000, 100.0))),
            ("nftables", "change 1 backend (sync)", None), // beeline has no such cell here
            ("ipvs (ipset part only)", "full program", Some((10000, 1.44))),
            ("iptables-nft", "connect p50", Some((10000, 10.0))),
            ("iptables-nft", "connect p99", Some((10000, 8.0))),
            ("iptables-nft", "conn/s", Some((10000, 4.0))),
            // The direct row is N=0 and there is no beeline N=0 ClusterIP cell: no ratio.
            ("direct (no rules)", "connect p50", None),
        ];
        for (system, what, want) in cases {
            assert_eq!(get(system, what), want, "{system} {what}");
        }
        assert_eq!(
            ratios.iter().filter(|r| r.what.starts_with("connect") && r.system == "iptables-nft").count(),
            2,
            "only the last-service cell is compared, not `first`"
        );
    }

    #[test]
    fn markdown_has_both_sides_ratios_and_what_is_pending() {
        let mut r = results();
        r.pending.push("connection path: LB datapath not merged".into());
        r.throughput.push(ThroughputCell {
            path: "pod-to-pod".into(),
            gbit_s: vec![10.0, 12.0],
            seconds_each: 3.0,
            note: None,
        });
        r.throughput.push(ThroughputCell {
            path: "pod-to-service".into(),
            gbit_s: vec![9.0],
            seconds_each: 3.0,
            note: None,
        });
        let md = r.markdown();
        for want in [
            "| **beeline** | 10000 | 400.0 ms / 500.0 ms | 42.0 ms / 42.0 ms |",
            "| nftables | 10000 | 98.00 s / 100.00 s | 4.00 s / 4.20 s |",
            "| nftables | 10000 | 200.0× | 100.0× |",
            "| **beeline** | 10000 | last | 29 / 30 | 57 / 58 | 50 / 60 | 9600 |",
            "| **beeline** | 1000 | last | pending: LB datapath | | | |",
            "| iptables-nft | 10000 | 10.0× | 8.0× | 4.0× |",
            "| pod-to-pod | 10.00 / 11.00 | 2 × 3 s |",
            "pod-to-service ÷ pod-to-pod (median): 0.82",
            "- connection path: LB datapath not merged",
            "**not run**",
        ] {
            assert!(md.contains(want), "missing {want:?} in:\n{md}");
        }
        let json = r.to_json();
        assert!(json["ratios"].as_array().is_some_and(|a| !a.is_empty()));
        assert_eq!(json["programming"][0]["op"], "full");
    }

    #[test]
    fn seconds_render_like_the_baseline() {
        let cases = [(0.0004, "400 µs"), (0.0421, "42.1 ms"), (1.9, "1.90 s"), (f64::NAN, "-")];
        for (x, want) in cases {
            assert_eq!(fmt_s(x), want);
        }
    }
}
