# shellcheck shell=bash
# shellcheck disable=SC2034 # settings used by the scripts that source this file
#
# Shared settings and functions of the kind scripts (up.sh, smoke.sh, netpol-e2e.sh,
# collect-logs.sh, down.sh). Sourced, never run. Every pinned version lives here; each can
# be overridden from the environment. Functions print their results on stdout so that
# ci-tests/ can call them one by one without a cluster.

KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NFTPOL_REPO_ROOT=$(cd "$KIND_DIR/../.." && pwd)

# kind v0.29.0's image for Kubernetes 1.33.1 (node images are tied to a kind release: keep
# the digest, see the kind release notes).
: "${KIND_CLUSTER_NAME:=nftpol}"
: "${KIND_NODE_IMAGE:=kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f}"
# flannel's release manifest (namespace kube-flannel, DaemonSet kube-flannel-ds, pod network
# 10.244.0.0/16, writes /etc/cni/net.d/10-flannel.conflist on every node).
: "${FLANNEL_VERSION:=v0.27.4}"
# flannel delegates to the reference `bridge` plugin, which kind's node image does not
# ship: up.sh copies it from this release of containernetworking/plugins.
: "${CNI_PLUGINS_VERSION:=v1.7.1}"
: "${ARCH:=amd64}"
: "${NFTPOL_IMAGE:=nftpol:e2e}"
: "${NFTPOL_NAMESPACE:=kube-system}"
: "${NFTPOL_RELEASE:=nftpol}"
: "${NFTPOL_HELM_TIMEOUT:=5m}"
: "${E2E_CACHE_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/nftpol-e2e}"
# Under target/: ignored by git and by the docker build context.
: "${ARTIFACTS:=$NFTPOL_REPO_ROOT/target/kind-artifacts}"
# The upstream NetworkPolicy suite ("[sig-network] Netpol ..."), without SCTP: see
# netpol-e2e.sh for why.
: "${NETPOL_FOCUS:=\[sig-network\] Netpol }"
: "${NETPOL_SKIP:=SCTP}"
: "${GINKGO_NODES:=4}"

AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.53
# The stand-in "managed database" of examples/egress-db-dns, a container on kind's docker
# network (outside the cluster, like a real managed database).
DEMO_DB_CONTAINER=${DEMO_DB_CONTAINER:-${KIND_CLUSTER_NAME}-demo-db}
DEMO_DB_CIDR_PLACEHOLDER=10.200.0.0/24

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

require_tools() {
	local t missing=()
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || missing+=("$t")
	done
	((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (install them and retry)"
}

kctl() { kubectl --context "kind-$KIND_CLUSTER_NAME" "$@"; }

# "registry:5000/name:tag" -> repository and tag (the tag is required).
image_repository() {
	[[ $1 == *:* && ${1##*:} != */* ]] || die "image '$1' has no tag"
	printf '%s\n' "${1%:*}"
}
image_tag() {
	[[ $1 == *:* && ${1##*:} != */* ]] || die "image '$1' has no tag"
	printf '%s\n' "${1##*:}"
}

flannel_manifest_url() {
	printf 'https://github.com/flannel-io/flannel/releases/download/%s/kube-flannel.yml\n' "$FLANNEL_VERSION"
}

cni_plugins_url() {
	printf 'https://github.com/containernetworking/plugins/releases/download/%s/cni-plugins-linux-%s-%s.tgz\n' \
		"$CNI_PLUGINS_VERSION" "$ARCH" "$CNI_PLUGINS_VERSION"
}

# The upstream test binaries (e2e.test, ginkgo) of exactly the cluster's version.
k8s_test_tarball_url() {
	[[ $1 =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a release version: '$1'"
	printf 'https://dl.k8s.io/%s/kubernetes-test-linux-%s.tar.gz\n' "$1" "$ARCH"
}

# The API server's version from `kubectl get --raw /version` on stdin (no jq needed).
server_git_version() {
	local v
	v=$(tr -d '\n' | sed -n 's/.*"gitVersion"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
	[[ -n $v ]] || die "no gitVersion in the API server's /version answer"
	# kind builds report e.g. v1.33.1; drop build metadata if any (v1.33.1+abc).
	printf '%s\n' "${v%%[+-]*}"
}

# verify_sha256 FILE SUMFILE: SUMFILE holds the hex digest first (with or without a file
# name after it, as dl.k8s.io and GitHub releases write them).
verify_sha256() {
	local want got
	want=$(awk 'NR == 1 { print $1 }' "$2")
	got=$(sha256sum "$1" | awk '{ print $1 }')
	[[ -n $want && $want == "$got" ]] || die "checksum mismatch for $1: want '$want', got '$got'"
}

# download URL DEST: fetch URL and its .sha256 once, verify, keep in the cache.
download_verified() {
	local url=$1 dest=$2
	if [[ -f $dest && -f $dest.sha256 ]] && (verify_sha256 "$dest" "$dest.sha256") 2>/dev/null; then
		return 0
	fi
	mkdir -p "$(dirname "$dest")"
	log "downloading $url"
	curl -fsSL --retry 3 -o "$dest.tmp" "$url"
	curl -fsSL --retry 3 -o "$dest.sha256" "$url.sha256"
	verify_sha256 "$dest.tmp" "$dest.sha256"
	mv "$dest.tmp" "$dest"
}

# The `helm` command line that installs the chart into the kind cluster, one word per line
# (read it with mapfile). ci-tests renders the chart with exactly these values.
nftpol_helm_args() {
	local repository tag
	repository=$(image_repository "$NFTPOL_IMAGE")
	tag=$(image_tag "$NFTPOL_IMAGE")
	printf '%s\n' upgrade --install "$NFTPOL_RELEASE" "$NFTPOL_REPO_ROOT/charts/nftpol" \
		--kube-context "kind-$KIND_CLUSTER_NAME" \
		--namespace "$NFTPOL_NAMESPACE" \
		--values "$KIND_DIR/values-kind.yaml" \
		--set "image.repository=$repository" \
		--set "image.tag=$tag" \
		--wait --timeout "$NFTPOL_HELM_TIMEOUT"
}

# retarget_db_cidr FILE CIDR: FILE with the example's database CIDR replaced by CIDR
# (the address of the local stand-in). Fails unless the placeholder occurs exactly once.
retarget_db_cidr() {
	local file=$1 cidr=$2 n
	[[ $cidr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]] || die "not an IPv4 CIDR: '$cidr'"
	n=$(grep -cF "cidr: $DEMO_DB_CIDR_PLACEHOLDER" "$file" || true)
	[[ $n == 1 ]] || die "$file: expected 'cidr: $DEMO_DB_CIDR_PLACEHOLDER' once, found $n"
	sed "s#cidr: $DEMO_DB_CIDR_PLACEHOLDER#cidr: $cidr#" "$file"
}

# The agent pods as "pod node" lines.
agent_pods() {
	kctl -n "$NFTPOL_NAMESPACE" get pods \
		-l "app.kubernetes.io/instance=$NFTPOL_RELEASE,app.kubernetes.io/component=agent" \
		-o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.nodeName}{"\n"}{end}'
}
