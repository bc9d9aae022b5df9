#!/usr/bin/env bash
# Delete the kind cluster made by up.sh and the stand-in database of smoke.sh.
# Downloads stay cached in $E2E_CACHE_DIR.
set -euo pipefail
shopt -s inherit_errexit
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
	require_tools kind docker
	docker rm -f "$DEMO_DB_CONTAINER" >/dev/null 2>&1 || true
	local clusters
	clusters=$(kind get clusters 2>/dev/null || true)
	if grep -qx "$KIND_CLUSTER_NAME" <<<"$clusters"; then
		kind delete cluster --name "$KIND_CLUSTER_NAME"
	else
		log "no kind cluster named $KIND_CLUSTER_NAME"
	fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
