#!/usr/bin/env bash
# `make lab`: bring a lab up, show what a user would check, run the datapath demo, tear it down.
#
#   VALUES=examples/lab/native.yaml NODES=2 make lab
#
# The lab is torn down on exit, also when a step fails or on ^C; its logs are printed first
# when something failed.
set -euo pipefail
cd "$(dirname "$0")/.."

BEELINE=${BEELINE:-./target/release/beeline}
VALUES=${VALUES:-examples/lab/vxlan.yaml}
NODES=${NODES:-3}
# Its own state directory, so `make lab` never touches a lab started by hand in /run/beeline-lab.
STATE_DIR=${STATE_DIR:-/run/beeline-lab-make}

section() { printf '\n== %s\n' "$*"; }

finish() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -d "$STATE_DIR/logs" ]; then
        section "a step failed (exit $rc): last log lines"
        for log in "$STATE_DIR"/logs/*.log; do
            printf -- '--- %s\n' "$log"
            tail -n 20 "$log" || true
        done
    fi
    section "lab down"
    "$BEELINE" lab down --state-dir "$STATE_DIR" || rc=1
    exit "$rc"
}
trap finish EXIT

section "lab up: $NODES nodes, values $VALUES"
"$BEELINE" lab up --nodes "$NODES" --values "$VALUES" --state-dir "$STATE_DIR"

export KUBECONFIG="$STATE_DIR/kubeconfig"
if command -v kubectl >/dev/null; then
    section "kubectl get nodes (registered by the lab; InternalIP on the underlay bridge)"
    kubectl get nodes -o custom-columns='NAME:.metadata.name,INTERNAL-IP:.status.addresses[?(@.type=="InternalIP")].address,POD-CIDRS:.spec.podCIDRs'
    section "kubectl get crd (installed by the operator at start)"
    kubectl get crd
    section "kubectl get ciliumnodes (node pod CIDRs, once the operator's IPAM allocates them)"
    kubectl get ciliumnodes -o custom-columns='NAME:.metadata.name,POD-CIDRS:.spec.ipam.podCIDRs'
    section "kubectl get lease -n kube-system (operator leader election)"
    kubectl get lease -n kube-system
else
    section "kubectl not installed: skipping the kubectl views (beeline lab status below has the same facts)"
fi

section "lab status"
"$BEELINE" lab status --state-dir "$STATE_DIR"

section "datapath demo: a node + pod namespace pair with the agent attaching from_container"
"$BEELINE" lab demo
