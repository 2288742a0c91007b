//! The kube-proxy baseline's `tcpbench` client, as data: its one-line `key=value` report and the
//! per-cell summary the baseline computes over several runs (min and median of each run's
//! percentile), so beeline's cells and the baseline's are the same statistic.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("tcpbench printed no `{key}=` field: {line:?}")]
    Missing { key: &'static str, line: String },
    #[error("tcpbench field `{key}` is not a number: {value:?}")]
    NotANumber { key: String, value: String },
}

/// One `tcpbench crr` run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CrrRun {
    /// Connections measured (after warm-up).
    pub n: f64,
    pub errors: f64,
    pub conn_per_s: f64,
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    pub txn_p50_us: f64,
    pub txn_p99_us: f64,
}

/// Parses `mode=crr n=2000 errors=0 conn_per_s=9333 connect_p50_us=43.0 ...`.
pub fn parse_crr(line: &str) -> Result<CrrRun, ParseError> {
    let mut fields = BTreeMap::new();
    for pair in line.split_whitespace() {
        let Some((k, v)) = pair.split_once('=') else { continue };
        if k == "mode" {
            continue;
        }
        let n: f64 = v.parse().map_err(|_| ParseError::NotANumber { key: k.to_string(), value: v.to_string() })?;
        fields.insert(k, n);
    }
    let get = |key: &'static str| fields.get(key).copied().ok_or(ParseError::Missing { key, line: line.to_string() });
    Ok(CrrRun {
        n: get("n")?,
        errors: get("errors")?,
        conn_per_s: get("conn_per_s")?,
        connect_p50_us: get("connect_p50_us")?,
        connect_p99_us: get("connect_p99_us")?,
        txn_p50_us: get("txn_p50_us")?,
        txn_p99_us: get("txn_p99_us")?,
    })
}

/// min / median of a non-empty sample (the median of an even count is the mean of the middle two,
/// as Python's `statistics.median`, which the baseline uses).
pub fn min_median(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    Some((v[0], median))
}

/// A connection-path cell: the baseline's `summ_runs` fields.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CrrSummary {
    pub connect_p50_us_min: f64,
    pub connect_p50_us_med: f64,
    pub connect_p99_us_min: f64,
    pub connect_p99_us_med: f64,
    pub txn_p50_us_min: f64,
    pub txn_p50_us_med: f64,
    pub conn_per_s_med: f64,
    pub runs: usize,
    /// Connections measured over all runs, and failed attempts.
    pub connections: f64,
    pub errors: f64,
}

pub fn summarize(runs: &[CrrRun]) -> Option<CrrSummary> {
    let col = |f: fn(&CrrRun) -> f64| min_median(&runs.iter().map(f).collect::<Vec<_>>());
    let (p50_min, p50_med) = col(|r| r.connect_p50_us)?;
    let (p99_min, p99_med) = col(|r| r.connect_p99_us)?;
    let (txn_min, txn_med) = col(|r| r.txn_p50_us)?;
    let (_, rate_med) = col(|r| r.conn_per_s)?;
    Some(CrrSummary {
        connect_p50_us_min: p50_min,
        connect_p50_us_med: p50_med,
        connect_p99_us_min: p99_min,
        connect_p99_us_med: p99_med,
        txn_p50_us_min: txn_min,
        txn_p50_us_med: txn_med,
        conn_per_s_med: rate_med,
        runs: runs.len(),
        connections: runs.iter().map(|r| r.n).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "mode=crr n=2000 errors=1 conn_per_s=9333 connect_p50_us=43.0 connect_p90_us=60.1 \
                        connect_p99_us=70.5 connect_min_us=20.0 txn_p50_us=63.2 txn_p99_us=123.0";

    #[test]
    fn parses_the_crr_line_and_names_what_is_missing() {
        let run = parse_crr(LINE).unwrap();
        assert_eq!((run.n, run.errors, run.conn_per_s), (2000.0, 1.0, 9333.0));
        assert_eq!((run.connect_p50_us, run.connect_p99_us, run.txn_p50_us), (43.0, 70.5, 63.2));
        let cases = [
            (
                "mode=crr n=0 errors=1",
                Err(ParseError::Missing { key: "conn_per_s", line: "mode=crr n=0 errors=1".into() }),
            ),
            ("mode=crr n=x", Err(ParseError::NotANumber { key: "n".into(), value: "x".into() })),
            ("", Err(ParseError::Missing { key: "n", line: String::new() })),
        ];
        for (line, want) in cases {
            assert_eq!(parse_crr(line), want, "{line:?}");
        }
    }

    #[test]
    fn min_median_matches_python_statistics_median() {
        type Case<'a> = (&'a [f64], Option<(f64, f64)>);
        let cases: [Case; 4] = [
            (&[], None),
            (&[5.0], Some((5.0, 5.0))),
            (&[3.0, 1.0, 2.0], Some((1.0, 2.0))),
            (&[4.0, 1.0, 3.0, 2.0], Some((1.0, 2.5))),
        ];
        for (values, want) in cases {
            assert_eq!(min_median(values), want, "{values:?}");
        }
    }

    #[test]
    fn summary_takes_min_and_median_per_column() {
        let run = |p50: f64, p99: f64, rate: f64| CrrRun {
            n: 100.0,
            errors: 0.0,
            conn_per_s: rate,
            connect_p50_us: p50,
            connect_p99_us: p99,
            txn_p50_us: p50 + 10.0,
            txn_p99_us: p99 + 10.0,
        };
        let s = summarize(&[run(40.0, 90.0, 8000.0), run(30.0, 120.0, 9000.0), run(50.0, 80.0, 7000.0)]).unwrap();
        assert_eq!((s.connect_p50_us_min, s.connect_p50_us_med), (30.0, 40.0));
        assert_eq!((s.connect_p99_us_min, s.connect_p99_us_med), (80.0, 90.0));
        assert_eq!((s.txn_p50_us_min, s.conn_per_s_med), (40.0, 8000.0));
        assert_eq!((s.runs, s.connections, s.errors), (3, 300.0, 0.0));
        assert_eq!(summarize(&[]), None);
    }
}
