#!/usr/bin/env bash
# Run the upstream Kubernetes NetworkPolicy conformance suite against the kind cluster made
# by up.sh, with the e2e.test binary of exactly the cluster's version.
#
#   e2e/kind/netpol-e2e.sh                 # GINKGO_NODES=4 parallel ginkgo workers
#   GINKGO_NODES=1 e2e/kind/netpol-e2e.sh  # serial, e2e.test run directly
#
# What runs: the tests under "[sig-network] Netpol" (test/e2e/network/netpol upstream):
# default deny, pod/namespace selectors and expressions, ports, named ports, endPort, ipBlock
# with except, egress, policies added and removed under traffic, TCP and UDP.
#
# What is skipped, and why:
# - "SCTP" ([Feature:SCTPConnectivity]): the probes need the sctp kernel module on the
#   host; kind nodes are containers and cannot load it, and CI runners often lack it.
#   nftpol matches SCTP like TCP and UDP (meta l4proto . th dport); its own tests cover it.
# - "NetworkPolicyLegacy" is not in the focus: it is the older copy of the same cases.
# Override with NETPOL_FOCUS / NETPOL_SKIP. On failure, collect-logs.sh runs (unless
# NFTPOL_COLLECT_ON_FAILURE=0) and the JUnit report is in $ARTIFACTS.
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# fetch_test_binaries VERSION: prints the directory holding e2e.test and ginkgo.
fetch_test_binaries() {
	local version=$1 url dir tgz
	url=$(k8s_test_tarball_url "$version")
	dir="$E2E_CACHE_DIR/kubernetes-test-$version-$ARCH"
	tgz="$dir/${url##*/}"
	if [[ ! -x $dir/e2e.test || ! -x $dir/ginkgo ]]; then
		download_verified "$url" "$tgz"
		tar -xzf "$tgz" -C "$dir" --strip-components=3 \
			kubernetes/test/bin/e2e.test kubernetes/test/bin/ginkgo
	fi
	printf '%s\n' "$dir"
}

# The command line, one word per line: ginkgo with parallel workers, or e2e.test alone.
netpol_test_command() {
	local bindir=$1 kubeconfig=$2
	local -a e2e_flags=(
		"--kubeconfig=$kubeconfig"
		--provider=local
		"--report-dir=$ARTIFACTS"
		--disable-log-dump=true
		--dump-logs-on-failure=false
	)
	if ((GINKGO_NODES > 1)); then
		printf '%s\n' "$bindir/ginkgo" "--nodes=$GINKGO_NODES" "--focus=$NETPOL_FOCUS" \
			"--skip=$NETPOL_SKIP" --timeout=3h "$bindir/e2e.test" -- "${e2e_flags[@]}"
	else
		printf '%s\n' "$bindir/e2e.test" "--ginkgo.focus=$NETPOL_FOCUS" \
			"--ginkgo.skip=$NETPOL_SKIP" --ginkgo.timeout=3h "${e2e_flags[@]}"
	fi
}

main() {
	require_tools kind kubectl curl tar sha256sum
	mkdir -p "$ARTIFACTS"
	local kubeconfig="$ARTIFACTS/kubeconfig" version bindir words cmd rc=0
	kind get kubeconfig --name "$KIND_CLUSTER_NAME" >"$kubeconfig"
	version=$(kctl get --raw /version | server_git_version)
	log "cluster runs Kubernetes $version"
	bindir=$(fetch_test_binaries "$version")
	words=$(netpol_test_command "$bindir" "$kubeconfig")
	mapfile -t cmd <<<"$words"
	log "running: ${cmd[*]}"
	"${cmd[@]}" || rc=$?
	if ((rc != 0)) && [[ ${NFTPOL_COLLECT_ON_FAILURE:-1} == 1 ]]; then
		"$KIND_DIR/collect-logs.sh" "$ARTIFACTS/logs-netpol-e2e" || true
	fi
	return "$rc"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
