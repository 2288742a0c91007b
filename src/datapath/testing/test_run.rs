//! `BPF_PROG_TEST_RUN` for tc programs. aya 0.14 exposes it as the `TestRun` trait; this wraps it
//! so a test hands in a frame and gets the verdict and the bytes the program left behind.

use std::time::Duration;

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};

/// Room for programs that grow the packet (encapsulation adds at most ~70 bytes; be generous).
const HEADROOM: usize = 512;

#[derive(Debug)]
pub struct TestRunOutput {
    /// The program's return value (a `TC_ACT_*` verdict for tc programs).
    pub retval: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
    pub duration: Duration,
}

/// Runs `program` once on `frame` (an Ethernet frame). Without a context the kernel runs the
/// program as if the packet arrived on the loopback device of the caller's network namespace.
pub fn run_tc(program: &SchedClassifier, frame: &[u8]) -> Result<TestRunOutput, ProgramError> {
    run_tc_repeat(program, frame, 1)
}

/// Runs `program` `repeat` times in the kernel on one skb; `duration` is the kernel's average
/// per run (what the benchmarks report). The runs share the skb, so a program that rewrites the
/// packet sees its own rewrite from the second run on: benchmark paths that leave it unchanged.
pub fn run_tc_repeat(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<TestRunOutput, ProgramError> {
    let mut out = vec![0u8; frame.len() + HEADROOM];
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(TestRunOutput { retval: result.return_value, data: out, duration: result.duration })
}
