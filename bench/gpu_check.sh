#!/usr/bin/env bash
# GPU speed check for issue 7, in one short command on a machine with a CUDA GPU:
#
#     bash bench/gpu_check.sh [DATA_ROOT]        (default: $MVTEC_ROOT, ../shared/data/dev, else a demo)
#
# 1. bench_speed.py on cuda (bf16 autocast, channels_last, on-device batches): training and
#    inference images/s per model, fit vs the DataLoader baseline, one job's time split, the
#    full grid of one category at default settings, and the 15 x 4 MVTec AD estimate;
# 2. the same throughput with --compile for the CNN models (torch.compile warm-up included
#    in round 0, excluded from the timing).
# 3. the grid of one demo category on Ray with 0.25 GPU per job vs the local loop.
# Numbers go to stdout and bench/gpu_speed*.json. Expect a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-${MVTEC_ROOT:-}}"
if [[ -z "$root" && -d ../shared/data/dev ]]; then root=../shared/data/dev; fi
args=(--device cuda --json bench/gpu_speed.json)
if [[ -n "$root" ]]; then args+=(--data-root "$root"); fi
(cd / && python -c "import models, pipeline") 2>/dev/null || {  # as the scripts see it (not via the cwd)
    echo "gpu_check: cannot import models / pipeline; install the project first: pip install -r requirements.txt" >&2
    exit 1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python bench/bench_speed.py "${args[@]}" --only throughput baseline job aupro memory grid
python bench/bench_speed.py "${args[@]/gpu_speed.json/gpu_speed_compile.json}" --only throughput --compile \
    --models cae vae vae_grf
# 3. Ray (issue 14): one demo category's grid (4 models x 2 seeds) with four jobs per GPU
#    (--executor ray --gpus-per-job 0.25) against the local loop (one job at a time), wall time.
work="$(mktemp -d)"
python -m pipeline demo-data --out "$work/demo" > /dev/null
for mode in local ray; do
    extra=()
    if [[ "$mode" == ray ]]; then extra=(--executor ray --gpus-per-job 0.25); fi
    SECONDS=0
    python -m pipeline run --data-root "$work/demo" --categories weave --seeds 0 1 --device cuda --no-progress \
        --results-csv "$work/$mode.csv" --checkpoint-dir "$work/ck_$mode" "${extra[@]}" > /dev/null
    echo "gpu_check: $mode grid of demo/weave (4 models x 2 seeds): ${SECONDS} s"
done
rm -rf "$work"
