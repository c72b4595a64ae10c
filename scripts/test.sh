#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh machine (README's test command; .ci/run
# calls it): installs the ComfyUI host into .host/ (and the headless browser for the UI test)
# when missing, lints with ruff, then runs pytest on tests/ with the host's python.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k integration -x
#
# LML_EXTRA_HOSTS="a.tar.gz b/ComfyUI ..." (paths from the repository root): while the whole
# suite runs on the default host, each of these ComfyUI sources (tarball or tree) is built into
# .host-<version>/ by install_host.sh and the tests that depend on the host (nodes,
# integration, web with its pinned frontend and the newest one, the benchmark's field) run
# on it too. Every run is reported with its ComfyUI version; any failing run fails the script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/host_lib.sh
HOST="${LML_HOST_DIR:-$ROOT/.host}"
# On an extra host: everything that imports or serves ComfyUI, and the benchmark's field (the
# host's samplers and schedulers placed, counted and run), not its studies (the same math on any
# host).
BENCH=tests/bench/test_bench.py
HOST_TESTS=(tests/nodes tests/integration tests/web
            "$BENCH::test_baselines_are_the_hosts_own_functions"
            "$BENCH::test_every_host_sampler_is_placed"
            "$BENCH::test_host_model_carries_real_model_sampling"
            "$BENCH::test_nfe_is_counted_and_schedules_follow_ksampler"
            "$BENCH::test_deterministic_samplers_count_nfe_honestly_and_converge"
            "$BENCH::test_stochastic_samplers_are_seeded_per_slice"
            tests/bench/test_pairs.py)
start=$(date +%s)

# One thread per process, like the test server: on 2 busy cores OpenMP's spinning threads
# make the small test models several times slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

summary=()
failed=0

# run_pytest HOST_DIR ARGS...: pytest with that host's python and harness, its result noted.
run_pytest() {
  local host="$1" version rc t0
  shift
  version="$(comfy_src_version "$host/ComfyUI")"
  echo "test.sh: === ComfyUI $version ($host): pytest $* ==="
  t0=$(date +%s)
  set +e
  LML_HOST_DIR="$host" "$host/venv/bin/python" -m pytest "$@"
  rc=$?
  set -e
  local line="ComfyUI $version: pytest exit code $rc after $(( $(date +%s) - t0 )) s"
  if [ "$rc" -eq 5 ]; then
    line="$line (collected no tests; that is a failure here)"
  fi
  echo "test.sh: $line"
  summary+=("$line")
  if [ "$rc" -ne 0 ]; then failed=1; fi
}

bash scripts/install_host.sh
bash scripts/install_browser.sh  # chromium (apt) before anything else installs in parallel
"$HOST/venv/bin/python" -m ruff check .

# Each extra host is built, then tested, while the default suite runs: pip is mostly network
# and disk, and each pytest mostly keeps one core busy (the test server waits on it), so on 2
# cores the two suites overlap instead of queueing (CI: 2572 s one after the other). Each one's
# log is printed after the default suite. The 100-prompt queue (longrun) runs on the default
# host only.
extras=()
for src in ${LML_EXTRA_HOSTS:-}; do
  extra="$(host_dir_for "$ROOT" "$src")"
  mkdir -p "$extra"
  rm -f "$extra/result"
  (
    set +e
    if LML_COMFY_SRC="$src" LML_HOST_DIR="$extra" bash scripts/install_host.sh \
        && LML_HOST_DIR="$extra" bash scripts/install_browser.sh; then
      version="$(comfy_src_version "$extra/ComfyUI")"
      t0=$(date +%s)
      LML_HOST_DIR="$extra" "$extra/venv/bin/python" -m pytest -m "not longrun" \
        "${HOST_TESTS[@]}" "$@"
      rc=$?
      echo "ComfyUI $version: pytest exit code $rc after $(( $(date +%s) - t0 )) s" \
        > "$extra/result"
    else
      echo "$src: the host did not install (log above)" > "$extra/result"
    fi
  ) > "$extra/install.log" 2>&1 &
  extras+=("$! $extra $src")
done

run_pytest "$HOST" tests "$@"

for entry in "${extras[@]}"; do
  read -r pid extra src <<<"$entry"
  wait "$pid" || true
  echo "test.sh: === extra host $src (built and tested beside the default suite) ==="
  cat "$extra/install.log"
  line="$(cat "$extra/result" 2>/dev/null || echo "$src: no result (see the log above)")"
  summary+=("$line")
  case "$line" in
    *"pytest exit code 0 "*) ;;
    *"pytest exit code 5 "*) summary+=("$src: collected no tests; that is a failure here"); failed=1 ;;
    *) failed=1 ;;
  esac
done

echo "test.sh: after $(( $(date +%s) - start )) s:"
printf 'test.sh:   %s\n' "${summary[@]}"
exit "$failed"
