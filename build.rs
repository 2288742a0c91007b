//! Builds `beeline-ebpf` with the nightly toolchain for `bpfel-unknown-none` and hands the object to
//! the `beeline` crate through `OUT_DIR`.
//!
//! The eBPF crate is always built into one fixed directory (`target/bpf`, in release mode), whatever
//! the outer profile is. Debug, release, test and clippy builds therefore share one build of `core`
//! instead of each paying ~45 s for `-Z build-std=core`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run scripts/setup.sh (or `make setup`) to install the eBPF toolchain";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("beeline-ebpf");
    let target_dir = env::var_os("BEELINE_BPF_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("target").join("bpf"));

    for path in ["beeline-ebpf/src", "beeline-ebpf/Cargo.toml", "beeline-ebpf/Cargo.lock", "beeline-common/src"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=BEELINE_BPF_TARGET_DIR");

    check_toolchain();

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir);
    // The outer cargo's environment describes the *host* build with the stable toolchain; none of
    // it may leak into the nested nightly build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\x1f-Clink-arg=--btf");

    let status = cmd.status().unwrap_or_else(|e| fail(&format!("cannot run `rustup run nightly cargo` ({e})")));
    if !status.success() {
        fail("building beeline-ebpf failed (see the compiler output above)");
    }
    let object = target_dir.join("bpfel-unknown-none").join("release").join("beeline");
    copy(&object, &out_dir.join("beeline.bpf.o"));
}

fn check_toolchain() {
    let nightly_ok = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = nightly_ok else {
        fail(&format!("the `nightly` toolchain is not installed; {SETUP_HINT}"));
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        fail(&format!("rust-src is missing from the nightly toolchain; {SETUP_HINT}"));
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref o) if o.status.success()) {
        fail(&format!("bpf-linker is not installed or cannot find libLLVM; {SETUP_HINT}"));
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| fail(&format!("cannot copy {} to {}: {e}", from.display(), to.display())));
}

fn fail(msg: &str) -> ! {
    // `cargo:warning` would be easy to miss; a panic with one line is what the user sees.
    eprintln!("error: {msg}");
    panic!("{msg}");
}
