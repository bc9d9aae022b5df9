#!/usr/bin/env bash
# Gather everything needed to debug a failed run into one directory:
#
#   e2e/kind/collect-logs.sh [OUTDIR]     # default: target/kind-artifacts/logs-<timestamp>
#
# kind's own export (kubelet, containerd, journal of every node), cluster state, the agents'
# logs (current and previous container), and every node's ruleset, read two ways: through
# the agent (`nft` in the nftpol image) and from the node container itself, plus the CNI
# configuration the runtime uses. A step that fails is noted and the rest still runs.
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# capture FILE CMD...: CMD's output into FILE; a failure is logged, not fatal.
capture() {
	local file=$1
	shift
	mkdir -p "$(dirname "$file")"
	if ! "$@" >"$file" 2>&1; then
		log "warning: '$*' failed (see $file)"
	fi
}

collect_cluster() {
	local out=$1
	capture "$out/kind-export.log" kind export logs "$out/kind" --name "$KIND_CLUSTER_NAME"
	capture "$out/cluster/nodes.txt" kctl get nodes -o wide
	capture "$out/cluster/pods.txt" kctl get pods -A -o wide
	capture "$out/cluster/networkpolicies.yaml" kctl get networkpolicies -A -o yaml
	capture "$out/cluster/events.txt" kctl get events -A --sort-by=.lastTimestamp
	capture "$out/cluster/daemonset.txt" kctl -n "$NFTPOL_NAMESPACE" describe daemonset "$NFTPOL_RELEASE"
}

collect_agents() {
	local out=$1 pod node
	while read -r pod node; do
		[[ -n $pod ]] || continue
		capture "$out/agents/$node.describe.txt" kctl -n "$NFTPOL_NAMESPACE" describe pod "$pod"
		capture "$out/agents/$node.agent.log" kctl -n "$NFTPOL_NAMESPACE" logs "$pod" -c agent
		capture "$out/agents/$node.agent.previous.log" kctl -n "$NFTPOL_NAMESPACE" logs "$pod" -c agent --previous
		capture "$out/agents/$node.install-cni.log" kctl -n "$NFTPOL_NAMESPACE" logs "$pod" -c install-cni
		capture "$out/nft/$node.via-agent.nft" kctl -n "$NFTPOL_NAMESPACE" exec "$pod" -c agent -- nft list ruleset
	done < <(agent_pods || true)
}

collect_nodes() {
	local out=$1 node
	for node in $(kind get nodes --name "$KIND_CLUSTER_NAME" 2>/dev/null || true); do
		capture "$out/nft/$node.nft" docker exec "$node" nft list ruleset
		# shellcheck disable=SC2016 # expanded by the node's shell, not here
		capture "$out/nodes/$node.cni-conf.txt" docker exec "$node" sh -c 'for f in /etc/cni/net.d/*; do echo "== $f"; cat "$f"; echo; done'
		capture "$out/nodes/$node.cni-bin.txt" docker exec "$node" ls -l /opt/cni/bin
		capture "$out/nodes/$node.run-nftpol.txt" docker exec "$node" ls -la /run/nftpol
	done
}

main() {
	require_tools kind kubectl docker
	local out=${1:-$ARTIFACTS/logs-$(date +%Y%m%d-%H%M%S)}
	mkdir -p "$out"
	log "collecting logs into $out"
	collect_cluster "$out"
	collect_agents "$out"
	collect_nodes "$out"
	log "done: $out"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
