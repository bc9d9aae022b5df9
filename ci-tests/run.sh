#!/usr/bin/env bash
# Static checks of nftpol's install surface, runnable anywhere (no cluster, no docker):
# the Helm chart (rendered and linted by Helm's own library, every manifest validated
# against the Kubernetes schemas), values.schema.json, the Dockerfile, the e2e/kind scripts
# and e2e/demo.sh (shellcheck and dry runs with stub tools) and the examples/ manifests.
#
#   ci-tests/run.sh            # everything
#   ci-tests/run.sh -k schema  # extra arguments go to pytest
#
# The pinned Python tools are installed once into a virtualenv keyed by requirements.txt
# (NFTPOL_CI_VENV overrides the location).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
	{ echo "ci-tests: needs Python 3.11+ ($python is $("$python" -V 2>&1))" >&2; exit 1; }

req="$here/requirements.txt"
key=$(sha256sum "$req" | cut -c1-12)
venv=${NFTPOL_CI_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/nftpol/ci-venv-$key}
if [[ ! -f $venv/.installed ]]; then
	rm -rf "$venv"
	"$python" -m venv "$venv"
	"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
	touch "$venv/.installed"
fi

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
