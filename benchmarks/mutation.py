"""Mutation testing of the science code: plant one bug at a time, run the tests that should catch it.

A small home-made harness (no dependency): each mutant is applied to a copy of the repository in a
temporary folder (``src/``, ``tests/``, ``scripts/``, ``pyproject.toml``), the test files that cover its
module are run there with ``pytest -x`` and a timeout, and the file is restored. A mutant is *killed* when
a test fails (or the run times out), *survived* when every test passes.

Two kinds of mutants:

* **named**: the planted bugs of issue 16 (text replacements: the Dice loss with background or with
  ``sum p + sum y``, CPS with the learner's own mask, the KL direction swapped, the CPS weight not ramped,
  the manifest written with ``write_text``, TTA ignoring the recorded flip axes, ``weights_only=False``
  when importing reference weights, entropy / KL layers not updated on a re-run, validation Dice with the
  background, ``best.safetensors`` keeping the worst model);
* **generated**: operator and constant mutants drawn (seeded) from the AST of the listed functions of
  ``methods/`` (losses, cce, ugmcl, supervised), ``training/loop.py`` (validation and best model),
  ``uncertainty.py`` and ``workspace.py``: ``+``/``-``, ``*``/``/``, ``**`` -> ``*``, comparison
  operators (``<`` -> ``<=`` ...), ``and``/``or``, numeric constants (``c`` -> ``c + 1`` or ``2 c``,
  ``0`` -> ``1``), ``True``/``False``, dropping a unary ``-`` or ``not``, and deleting a call statement.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/mutation.py --per-module 12 --jobs 2 \\
        --out benchmarks/results/mutation

writes ``mutation.json`` (every mutant, its status and the first failing test) and ``mutation.md``
(killed / total per module, the named mutants and which test killed each, the survivors).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "src/napari_sscce"
PYTHON = sys.executable

# module -> (functions to mutate (None = all), tiers of test files). The tiers run in order and stop at
# the first failure: the fast exact-value tests first, the slower end-to-end ones only for a survivor.
M = "tests/methods"
MODULES: dict[str, tuple[list[str] | None, list[list[str]]]] = {
    f"{PKG}/methods/losses.py": (
        None, [[f"{M}/test_loss_values.py"], [f"{M}/test_losses.py", f"{M}/test_ugmcl_terms.py"]]
    ),
    f"{PKG}/methods/cce.py": (
        None,
        [[f"{M}/test_loss_values.py"], [f"{M}/test_cce.py"], [f"{M}/test_cce_learns_from_unlabeled.py"]],
    ),
    f"{PKG}/methods/ugmcl.py": (None, [[f"{M}/test_ugmcl_terms.py"], [f"{M}/test_ugmcl.py"]]),
    f"{PKG}/methods/supervised.py": (None, [[f"{M}/test_loss_values.py"], [f"{M}/test_cce.py"]]),
    f"{PKG}/training/loop.py": (
        ["validate", "run_validation", "save_all", "lr_factor"],
        [
            ["tests/training/test_lr_factor.py", "tests/training/test_validation_best.py",
             "tests/training/test_save_all.py"],
            ["tests/training/test_loop.py"],
        ],
    ),
    f"{PKG}/uncertainty.py": (None, [["tests/test_uncertainty_regions.py", "tests/test_uncertainty.py"]]),
    f"{PKG}/workspace.py": (
        None,
        [
            ["tests/test_workspace_atomic.py", "tests/test_workspace.py", "tests/test_workspace_cleanup.py"],
            ["tests/test_workspace_reliability.py"],
        ],
    ),
}

GUI = "gui"  # marker in a test list: run under scripts/with_display.sh


@dataclass
class Named:
    """A planted bug: replace ``old`` (must occur exactly once) by ``new`` in ``path``."""

    name: str
    path: str
    old: str
    new: str
    tests: list[list[str]]


NAMED: list[Named] = [
    Named(
        "dice_loss: background always included",
        f"{PKG}/methods/losses.py",
        "start = 0 if include_background or probs.shape[1] == 1 else 1",
        "start = 0",
        [["tests/methods/test_loss_values.py"]],
    ),
    Named(
        "dice_loss: sum p + sum y in the denominator",
        f"{PKG}/methods/losses.py",
        "denom = (p * p).sum(dims) + (y * y).sum(dims)",
        "denom = p.sum(dims) + y.sum(dims)",
        [["tests/methods/test_loss_values.py"]],
    ),
    Named(
        "CPS: the learner's own entropy mask",
        f"{PKG}/methods/cce.py",
        'terms["cps_a"] = masked_cross_entropy(logits_a, pseudo_b, keep_b.float() * w_a, keep_b.sum())',
        'terms["cps_a"] = masked_cross_entropy(logits_a, pseudo_b, keep_a.float() * w_a, keep_a.sum())',
        [["tests/methods/test_loss_values.py"]],
    ),
    Named(
        "kl_weights: KL direction swapped",
        f"{PKG}/methods/cce.py",
        "return torch.exp(-kl(p_provider, p_learner))",
        "return torch.exp(-kl(p_learner, p_provider))",
        [["tests/methods/test_loss_values.py"]],
    ),
    Named(
        "term_weights: CPS weight without the ramp-up",
        f"{PKG}/methods/cce.py",
        '"cps": float(o["cps_weight"]) * ramp,',
        '"cps": float(o["cps_weight"]),',
        [["tests/methods/test_loss_values.py"]],
    ),
    Named(
        "Workspace._save: manifest written with a plain write_text",
        f"{PKG}/workspace.py",
        "atomic_write_json(self.manifest_path, manifest)",
        "self.manifest_path.write_text(json.dumps(manifest, indent=2))",
        [["tests/test_workspace_atomic.py"]],
    ),
    Named(
        "predict_volume: TTA ignores the recorded flip axes",
        f"{PKG}/inference/predict.py",
        "flips = flip_combinations(tta_axes(config.tta_axes, meta)) if config.tta else [()]",
        "flips = flip_combinations(config.tta_axes) if config.tta else [()]",
        [["tests/inference/test_tta_wiring.py"]],
    ),
    Named(
        "import_reference_vnet: torch.load(weights_only=False)",
        f"{PKG}/models/checkpoint.py",
        'obj = torch.load(path, map_location="cpu", weights_only=True)',
        'obj = torch.load(path, map_location="cpu", weights_only=False)',
        [["tests/test_security_pickle.py"]],
    ),
    Named(
        "upsert_layer: entropy and KL layers not updated on a re-run",
        f"{PKG}/widgets/_layers.py",
        "        existing.data = data\n",
        '        if layer_type == "labels":\n            existing.data = data\n',
        [[GUI, "tests/widgets/test_rerun_layers.py"]],
    ),
    Named(
        "validation Dice includes the background",
        f"{PKG}/training/loop.py",
        "for c in range(1, num_classes)]",
        "for c in range(0, num_classes)]",
        [["tests/training/test_validation_best.py"]],
    ),
    Named(
        "best.safetensors keeps the worst validation model",
        f"{PKG}/training/loop.py",
        'if best_metric is None or metrics["dice"] > best_metric:',
        'if best_metric is None or metrics["dice"] < best_metric:',
        [["tests/training/test_validation_best.py"]],
    ),
]


#: surviving mutants read and judged, keyed by (module, description): "equivalent" ones change no
#: observable behaviour of the package; "not equivalent" ones are explained test gaps. Both count as
#: survivors in the raw score; the report gives a second score without the equivalent ones only.
JUDGED: dict[tuple[str, str], tuple[str, str]] = {
    ("uncertainty.py", "line 267: 1.0 -> 2.0"): (
        "equivalent",
        "error_probability clips u to [0, 1] before np.interp, which already returns the end value 0.5 for "
        "any u above the grid's last point H = 1: the clip's upper bound is redundant",
    ),
    ("methods/losses.py", "line 96: 1e-06 -> 2e-06"): (
        "equivalent",
        "masked_cross_entropy's clamp of the denominator: every caller in the package passes a voxel count "
        "or a 0/1 mask sum (0 or >= 1), where clamping at 1e-6 or 2e-6 gives the same result (0 for 0); "
        "only an outside caller with weights summing to less than 2e-6 could tell",
    ),
    ("methods/losses.py", "line 125: 1e-08 -> 2e-08"): (
        "not equivalent",
        "kl_map's probability floor: changes the KL (by up to p ln 2) where a probability is below 2e-8, "
        "i.e. very confident disagreeing networks; a test would have to pin the floor constant itself",
    ),
    ("methods/cce.py", "line 270: 4096 -> 4097"): (
        "not equivalent",
        "default cap on the random contrastive anchors: differs only with more than 4096 uncertain voxels "
        "and then only in which random subset is drawn; a test would have to pin the default constant",
    ),
    ("methods/cce.py", "line 192: 1e-12 -> 2e-12"): (
        "not equivalent",
        "floor of the soft contrastive targets' renormalisation: differs only where the classes with a "
        "prototype hold less than 2e-12 of an anchor's probability together (0 stays 0 either way); a test "
        "would have to pin the floor constant itself",
    ),
}


@dataclass
class Mutant:
    """One mutant and, after the run, its outcome."""

    id: str
    module: str
    kind: str  # "named" or the operator class
    description: str
    tests: list[list[str]]
    status: str = "pending"  # killed / survived / timeout / not_applicable / error
    killed_by: str | None = None
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ AST mutants
_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
          ast.FloorDiv: ast.Div}
_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _function_spans(tree: ast.AST, names: list[str] | None) -> list[tuple[int, int]]:
    """Line spans of the (possibly nested) functions called ``names``; the whole module when None."""
    if names is None:
        return [(1, 10**9)]
    return [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names
    ]


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _candidates(tree: ast.AST, spans: list[tuple[int, int]]) -> list[tuple[int, str, str]]:
    """``(walk index, kind, description)`` of every mutable node inside ``spans`` (deterministic order)."""
    skip = _docstring_nodes(tree)
    annotations = {id(n) for node in ast.walk(tree) for n in _annotation_nodes(node)}
    out = []
    for i, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", None)
        if line is None or not any(a <= line <= b for a, b in spans) or id(node) in annotations:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOP and not _is_path_join(node):
            new = _BINOP[type(node.op)]
            out.append((i, "binop", f"line {line}: {type(node.op).__name__} -> {new.__name__}"))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP:
            new = _CMP[type(node.ops[0])]
            out.append((i, "compare", f"line {line}: {type(node.ops[0]).__name__} -> {new.__name__}"))
        elif isinstance(node, ast.BoolOp):
            out.append((i, "boolop", f"line {line}: {type(node.op).__name__} swapped"))
        elif isinstance(node, ast.Constant) and id(node) not in skip:
            if isinstance(node.value, bool):
                out.append((i, "constant", f"line {line}: {node.value} -> {not node.value}"))
            elif isinstance(node.value, int | float):
                out.append((i, "constant", f"line {line}: {node.value!r} -> {_new_number(node.value)!r}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            out.append((i, "unary", f"line {line}: drop {type(node.op).__name__}"))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            out.append((i, "delete", f"line {line}: delete call statement"))
    return out


def _is_path_join(node: ast.BinOp) -> bool:
    """``folder / "name"``-like divisions: mutating them only raises a TypeError (a trivial kill)."""
    if not isinstance(node.op, ast.Div):
        return False
    if isinstance(node.right, ast.JoinedStr) or (
        isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)
    ):
        return True
    left = ast.unparse(node.left).lower()
    return any(word in left for word in ("folder", "path", "root", "out", "dir"))


def _annotation_nodes(node: ast.AST) -> list[ast.AST]:
    """Nodes inside type annotations (mutating them changes nothing at run time)."""
    found: list[ast.AST] = []
    roots = []
    if isinstance(node, ast.arg) and node.annotation is not None:
        roots.append(node.annotation)
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
        roots.append(node.returns)
    if isinstance(node, ast.AnnAssign):
        roots.append(node.annotation)
    for root in roots:
        found.extend(ast.walk(root))
    return found


def _new_number(value: float) -> float:
    if value == 0:
        return 1 if isinstance(value, int) else 1.0
    return value + 1 if isinstance(value, int) else value * 2.0


class _Apply(ast.NodeTransformer):
    """Mutate the node at walk index ``target``."""

    def __init__(self, tree: ast.AST, target: int):
        self.node = list(ast.walk(tree))[target]

    def visit(self, node):  # noqa: D102 - NodeTransformer protocol
        if node is not self.node:
            return self.generic_visit(node)
        if isinstance(node, ast.BinOp):
            node.op = _BINOP[type(node.op)]()
        elif isinstance(node, ast.Compare):
            node.ops[0] = _CMP[type(node.ops[0])]()
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.Constant):
            node.value = (not node.value) if isinstance(node.value, bool) else _new_number(node.value)
        elif isinstance(node, ast.UnaryOp):
            return node.operand
        elif isinstance(node, ast.Expr):
            return ast.Pass()
        return node


def generated_mutants(per_module: int, seed: int) -> list[Mutant]:
    """``per_module`` AST mutants per module of :data:`MODULES`, drawn at random (seeded)."""
    rng = random.Random(seed)
    mutants = []
    for path, (functions, tests) in MODULES.items():
        tree = ast.parse((ROOT / path).read_text())
        cands = _candidates(tree, _function_spans(tree, functions))
        for index, kind, description in sorted(rng.sample(cands, min(per_module, len(cands)))):
            mutants.append(Mutant(f"{Path(path).stem}:{index}", path, kind, description, tests,
                                  detail={"walk_index": index}))
    return mutants


def named_mutants() -> list[Mutant]:
    return [
        Mutant(f"named:{i}", m.path, "named", m.name, m.tests, detail={"old": m.old, "new": m.new})
        for i, m in enumerate(NAMED)
    ]


def mutated_source(mutant: Mutant, original: str) -> str | None:
    """The mutated text of the module, or None when the mutant does not apply to this source."""
    if mutant.kind == "named":
        old, new = mutant.detail["old"], mutant.detail["new"]
        return original.replace(old, new) if original.count(old) == 1 else None
    tree = ast.parse(original)
    tree = _Apply(tree, mutant.detail["walk_index"]).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


# ------------------------------------------------------------------------------------------ running
def make_copy(dest: Path) -> Path:
    """Copy what the tests need (sources, tests, scripts, pyproject) to ``dest``."""
    for name in ("src", "tests", "scripts"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, str | None, str]:
    """Run ``tests`` in ``workdir``; returns ``(status, first failing test, output tail)``."""
    gui = GUI in tests
    files = [t for t in tests if t != GUI]
    cmd = [PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    if gui:
        cmd = ["bash", "scripts/with_display.sh", *cmd]
    else:  # napari's pytest plugins take seconds to import and are only needed by the widget tests
        cmd += ["-p", "no:napari", "-p", "no:napari-plugin-engine", "-p", "no:npe2", "-p", "no:pytest-qt"]
    cmd += files
    env = {**os.environ, "PYTHONPATH": str(workdir / "src"), "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", None, ""
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    if proc.returncode == 0:
        return "survived", None, out[-2000:]
    if proc.returncode in (1, 2, 3) or failed:
        return "killed", failed[0] if failed else f"pytest exit {proc.returncode}", out[-2000:]
    return "error", None, out[-2000:]


def run_mutant(mutant: Mutant, workdir: Path, timeout: float) -> Mutant:
    target = workdir / mutant.module
    original = target.read_text()
    start = time.perf_counter()
    try:
        text = mutated_source(mutant, original)
        if text is None:
            mutant.status = "not_applicable"
            return mutant
        target.write_text(text)
        for tier in mutant.tests:
            mutant.status, mutant.killed_by, tail = run_tests(workdir, tier, timeout)
            if mutant.status != "survived":
                break
        if mutant.status in ("survived", "error"):
            mutant.detail["output_tail"] = tail[-800:]
    finally:
        target.write_text(original)
        mutant.seconds = round(time.perf_counter() - start, 1)
    return mutant


def baseline(workdir: Path, timeout: float, mutants: list[Mutant]) -> dict[str, str]:
    """Every test list the mutants use must pass unmutated, else they would be 'killed' for nothing."""
    lists = {tuple(t) for m in mutants for t in m.tests}
    result = {}
    for tests in sorted(lists):
        status, failed, tail = run_tests(workdir, list(tests), timeout)
        result[" ".join(tests)] = "pass" if status == "survived" else f"{status}: {failed}\n{tail[-600:]}"
    return result


# ------------------------------------------------------------------------------------------ report
def judgement(m: Mutant) -> tuple[str, str] | None:
    """``(kind, reason)`` when the surviving mutant is listed in :data:`JUDGED`, else None."""
    if m.status != "survived":
        return None
    return JUDGED.get((Path(m.module).relative_to(PKG).as_posix(), m.description))


def _survivor_line(m: Mutant) -> str:
    judged = judgement(m)
    note = f" -- **{judged[0]}**: {judged[1]}" if judged else " -- not judged"
    return f"- `{m.module}` {m.description} ({m.kind}, {m.status}){note}"


def summarise(mutants: list[Mutant]) -> dict:
    per_module: dict[str, dict[str, int]] = {}
    for m in mutants:
        if m.status == "not_applicable":
            continue
        row = per_module.setdefault(
            Path(m.module).relative_to(PKG).as_posix(), {"killed": 0, "timeout": 0, "total": 0}
        )
        row["total"] += 1
        row["killed"] += m.status == "killed"
        row["timeout"] += m.status == "timeout"
    killed = sum(r["killed"] for r in per_module.values())
    timeouts = sum(r["timeout"] for r in per_module.values())
    total = sum(r["total"] for r in per_module.values())
    score = (killed + timeouts) / total if total else None
    strict = killed / total if total else None
    judged = sum((judgement(m) or ("",))[0] == "equivalent" for m in mutants)
    return {
        "equivalent_survivors": judged,
        "score_without_equivalent": (killed + timeouts) / (total - judged) if total > judged else None,
        "killed": killed,
        "timeout": timeouts,
        "total": total,
        "score": score,
        "score_without_timeouts": strict,
        "per_module": per_module,
    }


def write_report(out: Path, mutants: list[Mutant], summary: dict, base: dict, args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "summary": summary,
        "baseline": base,
        "args": {k: str(v) for k, v in vars(args).items()},
        "mutants": [asdict(m) for m in mutants],
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    n_named = sum(m.kind == "named" for m in mutants)
    lines = [
        "# Mutation testing (benchmarks/mutation.py)",
        "",
        f"{summary['killed']} killed and {summary['timeout']} timed out of {summary['total']} mutants: "
        f"**{100 * (summary['score'] or 0):.1f} %** with timeouts counted as killed, "
        f"{100 * (summary['score_without_timeouts'] or 0):.1f} % without ("
        f"{args.per_module} generated mutants per module, seed {args.seed}, plus {n_named} named "
        "bugs of issue 16).",
        "",
        f"Excluding the {summary['equivalent_survivors']} survivors judged equivalent below: "
        f"{summary['killed'] + summary['timeout']} / {summary['total'] - summary['equivalent_survivors']} = "
        f"**{100 * (summary['score_without_equivalent'] or 0):.1f} %** (a judgement, not a measurement).",
        "",
        "| module | killed | timed out | total |",
        "|---|---|---|---|",
    ]
    for module, row in sorted(summary["per_module"].items()):
        lines.append(f"| {module} | {row['killed']} | {row['timeout']} | {row['total']} |")
    lines += ["", "## Named mutants (issue 16)", ""]
    lines += ["| planted bug | status | first failing test |", "|---|---|---|"]
    for m in mutants:
        if m.kind == "named":
            lines.append(f"| {m.description} | {m.status} | `{m.killed_by or '-'}` |")
    survivors = [m for m in mutants if m.status in ("survived", "error")]
    lines += ["", "## Survivors", ""]
    lines += [_survivor_line(m) for m in survivors] or ["none"]
    bad = {k: v for k, v in base.items() if v != "pass"}
    if bad:
        lines += ["", "## Baseline failures (unmutated)", ""]
        lines += [f"- `{k}`: {v.splitlines()[0]}" for k, v in bad.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def merge(args) -> int:
    """One report from partial runs (``--only`` subsets run side by side): mutants by id, baselines joined."""
    mutants: dict[str, Mutant] = {}
    base: dict[str, str] = {}
    for path in args.merge:
        payload = json.loads(path.read_text())
        base.update(payload.get("baseline", {}))
        for m in payload["mutants"]:
            mutants[m["id"]] = Mutant(**m)
    order = [m.id for m in named_mutants() + generated_mutants(args.per_module, args.seed)]
    ordered = sorted(mutants.values(), key=lambda m: order.index(m.id) if m.id in order else len(order))
    write_report(args.out, ordered, summarise(ordered), base, args)
    print(json.dumps(summarise(ordered), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-module", type=int, default=12, help="generated mutants per module")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (one copy each)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    parser.add_argument("--only", default=None, help="regex on mutant id / description")
    parser.add_argument("--no-named", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="write one report from the JSON files of partial runs (later files win)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)

    mutants = ([] if args.no_named else named_mutants()) + generated_mutants(args.per_module, args.seed)
    if args.only:
        mutants = [m for m in mutants if re.search(args.only, f"{m.id} {m.description}")]
    if args.list:
        for m in mutants:
            print(f"{m.id:18s} {m.module.removeprefix(PKG + '/'):22s} {m.description}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copies = [make_copy(Path(tmp) / f"w{i}") for i in range(max(1, args.jobs))]
        base = {} if args.skip_baseline else baseline(copies[0], args.timeout, mutants)
        for key, value in base.items():
            print(f"baseline {key}: {value.splitlines()[0]}", flush=True)
        free = list(copies)
        lock = threading.Lock()

        def work(m: Mutant) -> Mutant:
            with lock:
                workdir = free.pop()
            try:
                done = run_mutant(m, workdir, args.timeout)
            finally:
                with lock:
                    free.append(workdir)
            print(f"{done.status:14s} {done.seconds:6.1f}s {done.id:16s} {done.description} "
                  f"{done.killed_by or ''}", flush=True)
            with lock:  # a report after every mutant: an interrupted run still leaves its numbers
                finished = [x for x in mutants if x.status != "pending"]
                write_report(args.out, finished, summarise(finished), base, args)
            return done

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            results = list(pool.map(work, mutants))
    summary = summarise(results)
    write_report(args.out, results, summary, base, args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
