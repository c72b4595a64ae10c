#!/usr/bin/env bash
# Regenerate the LML quality benchmark (docs/bench/) from a clean clone, CPU only.
#   bash scripts/bench.sh            # the default suite (< 10 min on 2 idle cores)
#   bash scripts/bench.sh --quick    # smoke run; any other arguments go to the benchmark
#   bash scripts/bench.sh study      # the parameter study instead (longer)
#   bash scripts/bench.sh rotation   # issue 7's rotation targets vs DPM++ 2M (~7 min)
#   bash scripts/bench.sh wrap       # lml_wrap around the field -> docs/bench/wrap_study.md
#   bash scripts/bench.sh calibrated # calibrated LML vs the field, 5 calibration seeds a point
#                                    # -> docs/bench/calibrated.md (--seeds, --quick)
#   bash scripts/bench.sh sigmas     # calibrated sigmas vs each sampler's best scheduler
#   bash scripts/bench.sh transfer   # a calibration on other classes / other cfg (issue 25 item 7)
#                                    # -> docs/bench/transfer.md (~7 min on one busy core)
#   bash scripts/bench.sh oracle     # how far a better choice could take LML Calibrate (choices
#                                    # by the test noise itself) -> docs/bench/oracle.md (~15 min)
#   bash scripts/bench.sh gradient   # the calibrated sampler's family fitted by Adam through the
#                                    # rollout, in and out of sample -> docs/bench/gradient_fit.md
#                                    # (~22 min; the digits network: --data --cfg 6 --split ...)
#   bash scripts/bench.sh memory     # a calibration's memory at SDXL latent size -> docs/bench/memory.md
#   bash scripts/bench.sh precision  # the fit's finite-difference step vs the model's precision
#                                    # -> docs/bench/precision.md (~15 min)
#   bash scripts/bench.sh reference  # the calibration's reference against a 256-step solution,
#                                    # per model call -> docs/bench/reference.md (~3 min)
#   bash scripts/bench.sh options --sets '{"a": {...}, "b": {}}'  # calibrate option sets side
#                                    # by side -> docs/bench/options.md (~15 min for two sets;
#                                    # --name NAME: docs/bench/NAME.md)
#   (calibrated, sigmas, oracle and gradient then rewrite README's generated blocks: python -m bench.readme)
#   bash scripts/gpu_check.sh        # (not here: on a lent GPU) -> docs/bench/gpu/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install_host.sh
PY="${LML_HOST_DIR:-$ROOT/.host}/venv/bin/python"  # install_host.sh also installs matplotlib, scikit-learn
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
case "${1:-}" in
  study) module=bench.study; shift ;;
  rotation) module=bench.rotation; shift ;;
  wrap) module=bench.wrap_study; shift ;;
  calibrated) module=bench.calibrated; shift ;;
  sigmas) module=bench.calibrated_sigmas; shift ;;
  memory) module=bench.memory; shift ;;
  oracle) module=bench.oracle; shift ;;
  gradient) module=bench.gradient_fit; shift ;;
  transfer) module=bench.transfer; shift ;;
  precision) module=bench.precision; shift ;;
  reference) module=bench.reference; shift ;;
  options) module=bench.options; shift ;;
  *) module=bench ;;
esac
"$PY" -m "$module" "$@"
case "$module" in  # README's numbers come from the JSON just written (bench/readme.py)
  bench.calibrated|bench.calibrated_sigmas|bench.oracle|bench.gradient_fit) "$PY" -m bench.readme ;;
esac
