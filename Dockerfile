# syntax=docker/dockerfile:1
#
# nftpol image: the node agent / CLI (`nftpol`, linked against libnftnl and libmnl) and the
# static CNI plugin (`nftpol-cni`, copied onto hosts as /opt/cni/bin/nftpol by
# `nftpol install-cni`). Used by charts/nftpol and e2e/kind/up.sh.
#
#   docker build -t nftpol:dev .
#
# The e2e test crate is a workspace member (so its manifest must be in the context) but is
# never built here.

ARG RUST_VERSION=1.95
ARG CNI_TARGET=x86_64-unknown-linux-gnu

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG CNI_TARGET
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl-dev libmnl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The target dir and cargo's registry are cache mounts (kept between builds, not in the
# layer), so the binaries are copied out to /out in the same step.
# 1. the agent/CLI: dynamic, needs libnftnl.so.11 and libmnl.so.0 at run time.
# 2. the CNI plugin: fully static (it runs on hosts that have neither library); --target
#    makes RUSTFLAGS apply to the plugin only, not to build scripts. The readelf check fails
#    the build if the plugin still needs a shared library.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p nftpol --bin nftpol \
 && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p nftpol-cni --bin nftpol-cni --target "${CNI_TARGET}" \
 && mkdir -p /out \
 && cp target/release/nftpol /out/nftpol \
 && cp "target/${CNI_TARGET}/release/nftpol-cni" /out/nftpol-cni \
 && if readelf -d /out/nftpol-cni | grep -q NEEDED; then echo "nftpol-cni is not static" >&2; exit 1; fi

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="nftpol" \
      org.opencontainers.image.description="Kubernetes NetworkPolicy enforcer: one nftables table per node, programmed through netlink, and a chained CNI plugin" \
      org.opencontainers.image.source="https://github.com/nftpol/nftpol" \
      org.opencontainers.image.url="https://github.com/nftpol/nftpol" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# Run-time libraries of the agent, CA certificates for the API server client, and the nft
# command line (not used by nftpol itself, which talks netlink) so that users can run
# `kubectl exec ... -- nft list ruleset`. Package versions follow the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl11 libmnl0 ca-certificates nftables \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
           /usr/share/doc/* /usr/share/man/* /usr/share/info/*
COPY --from=builder /out/nftpol /usr/local/bin/nftpol
COPY --from=builder /out/nftpol-cni /usr/local/bin/nftpol-cni
# Root inside the container, with every capability but NET_ADMIN dropped by the chart's
# securityContext: uid 0 is needed only to own the root-owned host directories it writes
# (the agent's socket dir, the CNI dirs). See charts/nftpol/templates/daemonset.yaml.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/usr/local/bin/nftpol"]
CMD ["--help"]
