# The two entry points of the README: `make lab` (the main job) and `make test` (every test).
# Both run the idempotent setup script first, so a fresh machine needs nothing else.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build lab test lint unit fmt clippy shellcheck hadolint clean

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

lab: build
	bash scripts/lab.sh

test: setup lint unit

lint: fmt clippy shellcheck hadolint

fmt:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

shellcheck:
	shellcheck scripts/*.sh .ci/run

hadolint:
	hadolint Dockerfile

# Tests that need root, BPF or network namespaces are ordinary tests: they fail (never skip) when
# the environment cannot run them. CI runs as root.
unit:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

clean:
	$(CARGO) clean
