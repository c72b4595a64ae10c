#!/usr/bin/env bash
# The pack on a lent CUDA GPU machine (no CI machine has one).  Two halves:
#
#   bash scripts/gpu_check.sh prepare   # here: stage ComfyUI's source (from .host), the two
#                                       # pure-python wheels it needs and an `av` stand-in in .gpu/
#   bash scripts/gpu_check.sh run OUT   # there (carry .gpu): bench.gpu, then the in-process
#                                       # node tests with ComfyUI choosing the GPU itself
#
# The GPU machine has torch, transformers, scipy and the rest of ComfyUI's imports, but no
# network: torchsde and trampoline travel as wheels; PyAV (35 MB) does not fit the transfer, and
# only ComfyUI's video types import it, so a stand-in module answers those imports.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=.gpu

prepare() {
    rm -rf "$GPU" && mkdir -p "$GPU/host" "$GPU/whl" "$GPU/stubs/av/subtitles"
    tar -C .host -c --exclude=ComfyUI/tests --exclude=ComfyUI/tests-unit --exclude=__pycache__ \
        --exclude='ComfyUI/comfy/text_encoders/*_tokenizer' ComfyUI | tar -C "$GPU/host" -x
    .host/venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$GPU/whl" \
        torchsde==0.2.6 trampoline==0.1.2
    local stub='def __getattr__(name):  # a stand-in: any attribute is a placeholder class
    return type(name, (), {})
'
    for f in __init__ container subtitles/__init__ subtitles/stream; do
        printf '%s' "$stub" > "$GPU/stubs/av/$f.py"
    done
    du -sh "$GPU"
}

run() {
    local out=${1:?OUT}
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$GPU"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/$GPU/stubs PYTHONUNBUFFERED=1
    export LML_HOST_DIR=$PWD/$GPU/host LML_HOST_DEVICE=auto
    # harness.comfy_host runs $LML_HOST_DIR/venv/bin/python: here, the machine's own python.
    mkdir -p "$GPU/host/venv/bin"
    printf '#!/bin/sh\nexec %s "$@"\n' "$(python3 -c 'import sys; print(sys.executable)')" \
        > "$GPU/host/venv/bin/python"
    chmod +x "$GPU/host/venv/bin/python"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    python3 -c 'import torch; print("torch", torch.__version__)' | tee -a "$out/gpu.txt"
    timeout "${BENCH_TIMEOUT:-300}" python3 -m bench.gpu --out "$out" \
        --parts "${BENCH_PARTS:-precondition,samplers,sdxl,calibrate}" 2>&1 \
        | tee "$out/bench.log" || echo "bench.gpu: exit $?"
    [[ -z "${SKIP_TESTS:-}" ]] || return 0
    # The node tests that sample and calibrate first: the time limit may cut the rest.
    local first=(test_tiny_digits test_sample_custom test_calibrate_node
                 test_calibrate_sigmas_node test_latent_ratios test_interrupt_and_nan
                 test_digits_field)
    local files=() f
    for f in "${first[@]}"; do files+=("tests/nodes/$f.py"); done
    for f in tests/nodes/test_*.py; do
        [[ " ${files[*]} " == *" $f "* ]] || files+=("$f")
    done
    timeout "${TEST_TIMEOUT:-200}" python3 -m pytest "${files[@]}" -q -rf --durations=10 \
        -p no:randomly 2>&1 | tee "$out/nodes_tests.log" | tail -40 || echo "node tests: exit $?"
}

"$@"
