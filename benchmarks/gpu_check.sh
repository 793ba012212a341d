#!/usr/bin/env bash
# The GPU check: train, benchmark and analyse on CUDA in under 8 minutes on one GPU.
#
#   make install && bash benchmarks/gpu_check.sh [OUT]      # from the repo root
#
# Writes everything under OUT ($1, else $OUT, else gpu_check_out): one <step>.log per step
# (its console output), train/ (the run: metrics.json, sae/), analysis/report/index.html,
# ddp/ (with 2 or more GPUs) and summary.txt, which is also printed at the end. Steps:
#   env         torch.__version__, the GPU's name; fails at once without CUDA
#   train       python train.py trainer=gpu (bf16-mixed), 300 steps, validation every 100
#   throughput  benchmarks/train_throughput.py on CUDA, fp32 and bf16-mixed (with torch.mm)
#   topk        benchmarks/topk_decoder.py on CUDA (sparse against dense decoder)
#   analyze     python analyze.py on the trained SAE, 100k tokens, with the HTML dashboards
#               (feature-centric) and one prompt's page (prompt-centric)
#   ddp         python train.py trainer=ddp on 2 GPUs, 100 steps (skipped with fewer GPUs)
# A failed step does not stop the independent ones; the exit status is 1 if any failed.
#
# GPU_CHECK_DEVICE=cpu runs the same commands on the CPU in a dry mode, so a test can check
# them end to end: trainer=cpu, --device cpu, tiny sizes (debug=fast, --steps 2), no CUDA
# check, and the DDP command is only composed (train.py ... --cfg job), not run. It takes
# about 4 to 8 minutes on 2 shared CPU cores (3.5 minutes of CPU time).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [[ "$DEVICE" != cuda && "$DEVICE" != cpu ]]; then
    echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
rm -rf "$OUT_DIR/train" "$OUT_DIR/ddp"  # a re-run: train.py refuses a folder holding a run
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1

if [[ "$DEVICE" == cuda ]]; then
    TRAINER=gpu
    TRAIN_SIZE=(trainer.max_steps=300 trainer.val_check_interval=100)
    THROUGHPUT_SIZE=(--d-sae 4096 16384 --batch 4096 --steps 30)
    TOPK_SIZE=(--d-sae 16384 --k 32 --batch 4096 --steps 20 --rounds 3)
    ANALYZE_TOKENS=100000
else
    TRAINER=cpu
    TRAIN_SIZE=(debug=fast)
    THROUGHPUT_SIZE=(--d-sae 256 --batch 256 --steps 2)
    TOPK_SIZE=(--d-sae 256 --k 8 --batch 256 --steps 2 --rounds 1)
    ANALYZE_TOKENS=2000
fi

SUMMARY=()
FAILED=()

# run_step NAME CMD...: run CMD from the repo root, its output teed to $OUT_DIR/NAME.log;
# records "NAME ok|FAILED (rc) Ns" for the summary. Returns CMD's status.
run_step() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo "== $name: $*" | tee "$OUT_DIR/$name.log"
    set +e
    "$@" 2>&1 | tee -a "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if ((rc == 0)); then
        SUMMARY+=("$(printf '%-15s ok          %4d s' "$name" $((SECONDS - start)))")
    else
        SUMMARY+=("$(printf '%-15s FAILED (%3d) %4d s  see %s' "$name" "$rc" \
            $((SECONDS - start)) "$OUT_DIR/$name.log")")
        FAILED+=("$name")
    fi
    return "$rc"
}

# note TEXT: an indented line under the last step in the summary
note() { SUMMARY+=("    $*"); }

env_check() {
    "$PY" - "$DEVICE" <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}")
if sys.argv[1] == "cpu":
    print("device: cpu (GPU_CHECK_DEVICE=cpu dry run)")
    sys.exit(0)
if not torch.cuda.is_available():
    print("gpu_check: torch.cuda.is_available() is False: no usable GPU for this torch "
          f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    sys.exit(1)
print(f"device: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}, CUDA {torch.version.cuda}")
EOF
}

# final_metrics RUN_DIR: the metrics of RUN_DIR/metrics.json, one line
final_metrics() {
    "$PY" - "$1/metrics.json" <<'EOF'
import json
import sys

metrics = json.load(open(sys.argv[1]))["metrics"]
keys = ["val/loss_recovered", "val/explained_variance", "val/l0", "train/loss", "train/l0"]
shown = [k for k in keys if k in metrics] or sorted(metrics)
print("final metrics: " + "  ".join(f"{k}={metrics[k]:.4g}" for k in shown))
EOF
}

# --- env ---------------------------------------------------------------------------------
if ! run_step env env_check; then
    echo "gpu_check: stopping: no CUDA device (set GPU_CHECK_DEVICE=cpu for the CPU dry run)"
    exit 1
fi
note "$(grep -E '^(torch|device)' "$OUT_DIR/env.log" | paste -sd ' ')"

# --- train -------------------------------------------------------------------------------
TRAINED=0
if run_step train "$PY" train.py trainer=$TRAINER "${TRAIN_SIZE[@]}" \
    paths.output_dir="$OUT_DIR/train"; then
    if [[ -f "$OUT_DIR/train/metrics.json" ]]; then
        TRAINED=1
        metrics_line="$(final_metrics "$OUT_DIR/train" || echo "final metrics: unreadable")"
        echo "$metrics_line" >>"$OUT_DIR/train.log"
        echo "$metrics_line"
        note "$metrics_line"
    else
        note "train/metrics.json missing"
        FAILED+=(train)
    fi
fi

# --- throughput --------------------------------------------------------------------------
for precision in 32-true bf16-mixed; do
    name="throughput-${precision%%-*}"
    if run_step "$name" "$PY" benchmarks/train_throughput.py --device "$DEVICE" \
        --precision "$precision" "${THROUGHPUT_SIZE[@]}"; then
        while IFS= read -r line; do note "$line"; done \
            < <(grep -E '^(device=|arch  |relu  |topk  )' "$OUT_DIR/$name.log")
    fi
done
if run_step topk "$PY" benchmarks/topk_decoder.py --device "$DEVICE" "${TOPK_SIZE[@]}"; then
    while IFS= read -r line; do note "$line"; done \
        < <(grep -E '^(device=| +sparse tok/s|SAE step|full loop)' "$OUT_DIR/topk.log")
fi

# --- analyze -----------------------------------------------------------------------------
if ((TRAINED)); then
    if run_step analyze "$PY" analyze.py sae_path="$OUT_DIR/train" trainer=$TRAINER \
        tokens=$ANALYZE_TOKENS dashboards=true "prompt='import numpy as np'" \
        report_dir="$OUT_DIR/analysis"; then
        if [[ -f "$OUT_DIR/analysis/report/index.html" && \
            -f "$OUT_DIR/analysis/report/prompts.html" ]]; then
            note "report: $OUT_DIR/analysis/report/index.html (and prompts.html)"
        else
            note "analysis/report/index.html or prompts.html missing"
            FAILED+=(analyze)
        fi
    fi
else
    SUMMARY+=("$(printf '%-15s skipped: no trained SAE' analyze)")
fi

# --- ddp ---------------------------------------------------------------------------------
DDP_CMD=("$PY" train.py trainer=ddp trainer.accelerator=gpu trainer.devices=2
    trainer.precision=bf16-mixed trainer.max_steps=100 trainer.val_check_interval=50
    paths.output_dir="$OUT_DIR/ddp")
if [[ "$DEVICE" == cpu ]]; then
    # compose only (prints the trainer node): checks the overrides without a GPU
    run_step ddp-config "${DDP_CMD[@]}" --cfg job --package trainer || true
    note "ddp not run on cpu (overrides composed only)"
else
    n_gpus=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
    if ((n_gpus >= 2)); then
        if run_step ddp "${DDP_CMD[@]}"; then
            if [[ -f "$OUT_DIR/ddp/metrics.json" ]]; then
                note "$(final_metrics "$OUT_DIR/ddp" || echo "final metrics: unreadable")"
            else
                note "ddp/metrics.json missing"
                FAILED+=(ddp)
            fi
        fi
    else
        SUMMARY+=("$(printf '%-15s skipped: %d GPU(s), needs 2' ddp "$n_gpus")")
    fi
fi

# --- summary -----------------------------------------------------------------------------
{
    echo "== gpu_check summary (GPU_CHECK_DEVICE=$DEVICE, $SECONDS s, output $OUT_DIR)"
    printf '%s\n' "${SUMMARY[@]}"
    if ((${#FAILED[@]})); then
        echo "gpu_check: FAILED: ${FAILED[*]}"
    else
        echo "gpu_check: PASSED"
    fi
} | tee "$OUT_DIR/summary.txt"
((${#FAILED[@]} == 0))
