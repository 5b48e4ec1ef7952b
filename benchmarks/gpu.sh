#!/usr/bin/env bash
# The device check for a lent GPU machine, under 10 minutes: what the CUDA paths do, written to
# benchmarks/results/gpu/. Run from the repository root on the GPU machine:
#
#     PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # a Python with CUDA torch and the package;
#                                                      # ../shared/data beside the repository (LA h5)
#
# 1. `sscce doctor`: versions, the device, what precision `auto` picks on CUDA, the training self-check
#    (bf16/fp16 against fp32) and the inference check;
# 2. the CUDA inference benchmark (benchmarks/inference.py --cuda);
# 3. the LA paper recipe (VNet-16 filters with dropout, patch 112x112x80, batch 2+2, CCE) for as many
#    iterations as fit in GPU_TRAIN_SECONDS (default 300 s), stopped with --resume kept, then the metrics file.
# Every stage has its own timeout; a failing stage makes the script exit non-zero after the others ran.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${GPU_OUT:-$root/benchmarks/results/gpu}"
data="${GPU_DATA:-$root/../shared/data/la2018}"
train_seconds="${GPU_TRAIN_SECONDS:-300}"
py="${PYTHON:-python3}"
mkdir -p "$out"
failed=0

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, log to $out/NAME.log, remember a failure
    local name="$1" limit="$2"
    shift 2
    echo "== $name (at most ${limit} s)"
    if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
        echo "   ok"
    else
        echo "   FAILED ($?), see $out/$name.log"
        failed=1
    fi
    tail -n 5 "$out/$name.log"
}

if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device visible to torch; this check is for a GPU machine" >&2
    exit 3
fi
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true

stage doctor 120 "$py" -m napari_sscce.cli doctor
stage inference 150 "$py" "$root/benchmarks/inference.py" --cuda --out "$out/inference"
if [ -d "$data" ]; then
    run="$out/la_cce_run"
    echo "== la_train (${train_seconds} s, then Ctrl-C: a resumable stop, exit 130, is the expected end)"
    timeout --signal=INT --kill-after=60 "$train_seconds" \
        "$py" -m napari_sscce.cli train --data "$data" --method cce --iterations 6000 --patch 112 112 80 \
        --base-filters 16 --batch 2 2 --device cuda --precision auto --val-every 1000 --quiet \
        --out "$run" --overwrite >"$out/la_train.log" 2>&1
    code=$?
    tail -n 5 "$out/la_train.log"
    if [ "$code" != 0 ] && [ "$code" != 130 ] && [ "$code" != 124 ]; then
        echo "   FAILED ($code), see $out/la_train.log"
        failed=1
    fi
    if [ -f "$run/metrics.jsonl" ]; then
        failed_train=0
        tail -n 3 "$run/metrics.jsonl" >"$out/la_train_last_steps.jsonl"
        "$py" - "$run" "$out/la_train_summary.json" <<'EOF' || failed_train=1
import json, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
steps = [r for r in rows if "loss" in r]
summary = {"iterations": len(steps), "last_loss": steps[-1]["loss"] if steps else None,
           "skipped_steps": steps[-1].get("skipped_steps") if steps else None,
           "val": [r for r in rows if "val_dice" in r][-3:]}
out.write_text(json.dumps(summary, indent=2) + "\n")
print(summary)
sys.exit(0 if steps else 1)
EOF
        [ "$failed_train" = 0 ] || failed=1
    else
        echo "la_train wrote no metrics.jsonl" >&2
        failed=1
    fi
else
    echo "== la_train skipped: no LA data at $data (GPU_DATA=...)"
fi
echo "results in $out"
exit "$failed"
