#!/usr/bin/env bash
# Deploy the two examples/ use cases into the kind cluster made by up.sh and check that
# nftpol allows and drops exactly what their policies say:
#
#   e2e/kind/smoke.sh           # deploy, check, leave everything in place to play with
#   e2e/kind/smoke.sh cleanup   # remove the example namespaces and the stand-in database
#
# Each check runs `agnhost connect` in a client pod: exit 0 = connected, "TIMEOUT" = the
# SYN was dropped, "REFUSED" = it reached a host with nothing listening. Before any policy
# exists, a baseline proves every path works, so a later TIMEOUT means a policy drop and not
# a broken network. Checks retry for SMOKE_TIMEOUT seconds (policies apply asynchronously).
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${SMOKE_TIMEOUT:=45}"
EXAMPLES="$NFTPOL_REPO_ROOT/examples"
PASSED=0
FAILED=0

pass() {
	PASSED=$((PASSED + 1))
	log "PASS $*"
}
fail() {
	FAILED=$((FAILED + 1))
	log "FAIL $*"
}

# probe NS DEPLOYMENT HOST:PORT [PROTOCOL]: prints OK, TIMEOUT, REFUSED, DNS or OTHER.
probe() {
	local out
	if out=$(kctl -n "$1" exec "deploy/$2" -- /agnhost connect --timeout=3s --protocol="${4:-tcp}" "$3" 2>&1); then
		echo OK
		return 0
	fi
	case $out in
	*TIMEOUT*) echo TIMEOUT ;;
	*REFUSED*) echo REFUSED ;;
	*DNS*) echo DNS ;;
	*) echo OTHER ;;
	esac
}

# expect WANT NS DEPLOYMENT HOST:PORT: retries until the probe answers WANT.
expect() {
	local want=$1 ns=$2 deploy=$3 target=$4 got deadline=$((SECONDS + SMOKE_TIMEOUT))
	while :; do
		got=$(probe "$ns" "$deploy" "$target")
		if [[ $got == "$want" ]]; then
			pass "$ns/$deploy -> $target: $want"
			return 0
		fi
		if ((SECONDS >= deadline)); then
			fail "$ns/$deploy -> $target: want $want, got $got"
			return 0
		fi
		sleep 2
	done
}

# expect_dns NS DEPLOYMENT udp|tcp: the pod resolves a cluster name over that protocol.
expect_dns() {
	local ns=$1 deploy=$2 proto=$3 flag=+notcp out deadline=$((SECONDS + SMOKE_TIMEOUT))
	[[ $proto == tcp ]] && flag=+tcp
	while :; do
		out=$(kctl -n "$ns" exec "deploy/$deploy" -- dig "$flag" +short +time=2 +tries=1 \
			kubernetes.default.svc.cluster.local 2>&1 || true)
		if [[ $out =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
			pass "$ns/$deploy resolves kubernetes.default over $proto"
			return 0
		fi
		if ((SECONDS >= deadline)); then
			fail "$ns/$deploy cannot resolve kubernetes.default over $proto: $out"
			return 0
		fi
		sleep 2
	done
}

# The "managed database": outside the cluster, on kind's docker network. Prints its IPv4.
start_demo_db() {
	if ! docker inspect "$DEMO_DB_CONTAINER" >/dev/null 2>&1; then
		log "starting the stand-in database $DEMO_DB_CONTAINER (TCP 5432) on docker network kind"
		docker run -d --name "$DEMO_DB_CONTAINER" --network kind "$AGNHOST_IMAGE" \
			netexec --http-port=5432 --udp-port=-1 >/dev/null
	fi
	docker inspect -f '{{with index .NetworkSettings.Networks "kind"}}{{.IPAddress}}{{end}}' "$DEMO_DB_CONTAINER"
}

deploy_workloads() {
	local f
	for f in "$EXAMPLES"/tenant-ingress/00-namespaces.yaml "$EXAMPLES"/egress-db-dns/00-namespace.yaml \
		"$EXAMPLES"/tenant-ingress/20-demo-workloads.yaml "$EXAMPLES"/egress-db-dns/20-demo-workloads.yaml; do
		kctl apply -f "$f"
	done
	for f in tenant-a/web tenant-a/neighbour tenant-b/outsider ingress-nginx/ingress-client shop/api shop/batch; do
		kctl -n "${f%/*}" rollout status "deployment/${f#*/}" --timeout=180s
	done
}

remove_policies() {
	kctl delete --ignore-not-found -f "$EXAMPLES/tenant-ingress/10-policies.yaml"
	kctl delete --ignore-not-found -f "$EXAMPLES/egress-db-dns/10-policy.yaml"
}

apply_policies() {
	local db_ip=$1
	kctl apply -f "$EXAMPLES/tenant-ingress/10-policies.yaml"
	retarget_db_cidr "$EXAMPLES/egress-db-dns/10-policy.yaml" "$db_ip/32" | kctl apply -f -
}

cleanup() {
	kctl delete namespace tenant-a tenant-b shop --ignore-not-found
	# ingress-nginx may be a real controller's namespace: remove only what we put there.
	kctl -n ingress-nginx delete deployment ingress-client --ignore-not-found
	docker rm -f "$DEMO_DB_CONTAINER" >/dev/null 2>&1 || true
}

main() {
	require_tools kubectl docker
	if [[ ${1:-} == cleanup ]]; then
		cleanup
		return 0
	fi
	local db web=web.tenant-a.svc.cluster.local:80 dns_metrics=kube-dns.kube-system.svc.cluster.local:9153
	db=$(start_demo_db)
	[[ -n $db ]] || die "the stand-in database has no address on docker network kind"
	deploy_workloads
	remove_policies

	log "baseline, no policy: everything connects"
	expect OK ingress-nginx ingress-client "$web"
	expect OK tenant-b outsider "$web"
	expect OK tenant-a neighbour "$web"
	expect OK shop api "$db:5432"
	expect REFUSED shop api "$db:8080"
	expect OK shop api "$dns_metrics"

	apply_policies "$db"

	log "tenant-ingress: only the ingress-nginx namespace reaches tenant-a's web pods"
	expect OK ingress-nginx ingress-client "$web"
	expect TIMEOUT tenant-b outsider "$web"
	expect TIMEOUT tenant-a neighbour "$web"

	log "egress-db-dns: shop/api reaches only the database port and DNS"
	expect OK shop api "$db:5432"
	expect TIMEOUT shop api "$db:8080"
	# The DNS pods, but not on port 53: the policy allows that peer on 53 only.
	expect TIMEOUT shop api "$dns_metrics"
	expect_dns shop api udp
	expect_dns shop api tcp
	log "egress-db-dns: shop/batch is selected by no policy and stays unrestricted"
	expect REFUSED shop batch "$db:8080"

	printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
	if ((FAILED > 0)); then
		"$KIND_DIR/collect-logs.sh" "$ARTIFACTS/logs-smoke" || true
		return 1
	fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
