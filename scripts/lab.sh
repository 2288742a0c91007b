#!/usr/bin/env bash
# `make lab`: bring a lab up, show what a user would check, tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./target/release/beeline lab demo "$@"
