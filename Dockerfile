# syntax=docker/dockerfile:1
# Multi-stage build of the single `beeline` binary (agent, operator, CNI plugin, CLI).
# The build stage uses the same setup script and make target as a developer machine.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends sudo python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && rustup toolchain install nightly --profile minimal
COPY . .
# bpffs cannot be mounted during a build; the script only needs it for tests.
RUN BEELINE_SKIP_BPFFS=1 bash scripts/setup.sh && make build

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/beeline /usr/bin/beeline
RUN ln -s /usr/bin/beeline /usr/bin/beeline-cni
ENTRYPOINT ["/usr/bin/beeline"]
