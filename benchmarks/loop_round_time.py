"""Wall time of one loop round on this machine: the plugin's fine-tune at its defaults plus the
re-segmentation of the round's cases (issue 14's "a round in at most 3 minutes on a 2-core CPU").

The workspace is one a loop benchmark left (``benchmarks/loop.py --work DIR``: ``DIR/<strategy>_seed<n>/
workspace``; it is copied, never changed); the fine-tune starts from ``--checkpoint`` exactly as that
benchmark's rounds did. Results are appended to ``benchmarks/results/loop_round_time.json`` with the CPU
model, torch threads and method. A failing fine-tune raises (non-zero exit, nothing written).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/loop_round_time.py --workspace /tmp/loop/a_ranked_seed0/workspace
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Time one round; append the figures to the results file."""
    import torch

    from napari_sscce.atomic import atomic_write_json
    from napari_sscce.inference.predict import predict_volume
    from napari_sscce.loop import run_finetune
    from napari_sscce.models.checkpoint import load_checkpoint
    from napari_sscce.precision import cpu_model
    from napari_sscce.workspace import Workspace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/models/hippo4_cce/best.safetensors"))
    parser.add_argument("--method", default="cce")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resegment", type=int, default=2, help="cases re-segmented after the fine-tune")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loop_round_time.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sscce_round_"))
    shutil.copytree(args.workspace, work / "workspace")
    ws = Workspace(work / "workspace")
    corrected = [c for c in ws.cases if c.labeled][-args.resegment:]
    t0 = time.perf_counter()
    result = run_finetune(ws, model=args.checkpoint, method=args.method, seed=0, out=work / "run")
    if result.cancelled or result.model_path is None:
        raise RuntimeError(f"fine-tune produced no model: {result.message}")
    t1 = time.perf_counter()
    model = load_checkpoint(result.model_path)
    for case in corrected:
        predict_volume(model, ws.load_case(case.name)[0])
    t2 = time.perf_counter()
    row = {"cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads, "method": args.method,
           "iterations": int(result.iterations), "finetune_s": round(t1 - t0, 1),
           "resegment_s": round(t2 - t1, 1), "resegmented_cases": len(corrected),
           "round_s": round(t2 - t0, 1),
           "workspace": str(args.workspace), "date": time.strftime("%Y-%m-%d")}
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    atomic_write_json(args.out, [*rows, row])
    print(json.dumps(row))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
