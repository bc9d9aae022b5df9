#!/usr/bin/env bash
# Create a kind cluster with flannel and nftpol chained after it, from this checkout:
#
#   e2e/kind/up.sh              # cluster "nftpol", image built from the working tree
#   NFTPOL_SKIP_BUILD=1 NFTPOL_IMAGE=ghcr.io/nftpol/nftpol:0.1.0 e2e/kind/up.sh
#
# Needs docker, kind (v0.29.x, see KIND_NODE_IMAGE in lib.sh), kubectl, helm 3.8+, curl.
# Safe to re-run: an existing cluster is reused and the release upgraded.
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

create_cluster() {
	local clusters
	clusters=$(kind get clusters 2>/dev/null || true)
	if grep -qx "$KIND_CLUSTER_NAME" <<<"$clusters"; then
		log "cluster $KIND_CLUSTER_NAME exists, reusing it"
		return 0
	fi
	log "creating kind cluster $KIND_CLUSTER_NAME ($KIND_NODE_IMAGE)"
	# No --wait: without a CNI the nodes stay NotReady until flannel runs.
	kind create cluster --name "$KIND_CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
		--config "$KIND_DIR/kind-config.yaml"
}

# flannel's conflist delegates to the reference `bridge` plugin; kind's node image has only
# the plugins its own CNI uses. Copy the pinned, checksum-verified release into each node.
install_cni_plugins() {
	local url dir tgz node nodes
	url=$(cni_plugins_url)
	dir="$E2E_CACHE_DIR/cni-plugins-$CNI_PLUGINS_VERSION-$ARCH"
	tgz="$dir/${url##*/}"
	download_verified "$url" "$tgz"
	tar -xzf "$tgz" -C "$dir"
	[[ -x $dir/bridge ]] || die "no bridge plugin in $tgz"
	nodes=$(kind get nodes --name "$KIND_CLUSTER_NAME")
	[[ -n $nodes ]] || die "kind cluster $KIND_CLUSTER_NAME has no nodes"
	for node in $nodes; do
		log "installing the bridge CNI plugin on $node"
		docker cp "$dir/bridge" "$node:/opt/cni/bin/bridge"
	done
}

# Pods on one node talk over flannel's bridge (cni0); nftables' forward hook sees that
# traffic only with br_netfilter and bridge-nf-call-iptables=1 in the node's namespace.
# kind nodes share the host's kernel and cannot load the module themselves.
check_br_netfilter() {
	local nodes node value
	nodes=$(kind get nodes --name "$KIND_CLUSTER_NAME")
	for node in $nodes; do
		if ! value=$(docker exec "$node" sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null); then
			die "br_netfilter is not loaded on this host: run 'sudo modprobe br_netfilter' and retry"
		fi
		if [[ $value != 1 ]]; then
			log "enabling net.bridge.bridge-nf-call-iptables on $node"
			docker exec "$node" sysctl -w net.bridge.bridge-nf-call-iptables=1 >/dev/null
		fi
	done
}

install_flannel() {
	local url
	url=$(flannel_manifest_url)
	log "installing flannel $FLANNEL_VERSION"
	kctl apply -f "$url"
	kctl -n kube-flannel rollout status daemonset/kube-flannel-ds --timeout=180s
	kctl wait --for=condition=Ready nodes --all --timeout=180s
}

build_image() {
	if [[ ${NFTPOL_SKIP_BUILD:-0} == 1 ]]; then
		log "NFTPOL_SKIP_BUILD=1: using the existing image $NFTPOL_IMAGE"
		return 0
	fi
	local revision
	revision=$(git -C "$NFTPOL_REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
	log "building $NFTPOL_IMAGE"
	DOCKER_BUILDKIT=1 docker build -t "$NFTPOL_IMAGE" --build-arg "REVISION=$revision" \
		-f "$NFTPOL_REPO_ROOT/Dockerfile" "$NFTPOL_REPO_ROOT"
}

load_image() {
	log "loading $NFTPOL_IMAGE into the nodes"
	kind load docker-image "$NFTPOL_IMAGE" --name "$KIND_CLUSTER_NAME"
}

# After flannel: the init container chains nftpol into the conflist flannel wrote.
install_nftpol() {
	local words args
	words=$(nftpol_helm_args)
	mapfile -t args <<<"$words"
	log "helm ${args[*]}"
	helm "${args[@]}"
	kctl -n "$NFTPOL_NAMESPACE" rollout status "daemonset/$NFTPOL_RELEASE" --timeout=180s
	kctl -n kube-system wait --for=condition=Ready pods -l k8s-app=kube-dns --timeout=180s
}

main() {
	require_tools docker kind kubectl helm curl tar sha256sum
	create_cluster
	install_cni_plugins
	check_br_netfilter
	install_flannel
	build_image
	load_image
	install_nftpol
	log "ready: kubectl --context kind-$KIND_CLUSTER_NAME -n $NFTPOL_NAMESPACE get pods -o wide"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
