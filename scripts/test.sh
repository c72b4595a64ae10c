#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine (README's test command; .ci/run
# calls it): installs the ComfyUI host into .host/ (and the headless browser for the UI test)
# when missing, lints with ruff, then runs pytest on tests/ with the host's python.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k integration -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HOST="${LML_HOST_DIR:-$ROOT/.host}"
PY="$HOST/venv/bin/python"
start=$(date +%s)

bash scripts/install_host.sh
bash scripts/install_browser.sh

# One thread per process, like the test server: on 2 busy cores OpenMP's spinning threads
# make the small test models several times slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

"$PY" -m ruff check .

set +e
"$PY" -m pytest tests "$@"
rc=$?
set -e
echo "test.sh: pytest exit code $rc after $(( $(date +%s) - start )) s"
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"
