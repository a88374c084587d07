"""The paper's Figure 4 on our backbone: NDCG@10 against FLOPs saved and against measured time saved,
for four families of plans (L = num_layers, s = max(1, L // 6)):
- depth: depth d for d = s, 2s, ..., L (d = L is the full plan, the reference for time saved);
- width: full depth, the passage halved (ratio 2) after one layer l, for l = s, 2s, ... < L;
- joint: depth d with the passage halved after max(1, d // 2) (the `light` plan's shape), d >= 2;
- exit: full depth with a confidence exit from L // 2 on, relevant at p >= 0.99 and irrelevant at
  p <= t for each threshold t;
- lean: full depth, the passage halved after layer a and halved again after b, for (a, b) in
  (s, 3s), (2s, 4s), (3s, 5s), and the named `lean-short` plan (engine/named_plans.py);
- first_stage_exit: full depth and width for the first stage's top n only (the cascade's layer 0,
  FirstStageExit), n in FIRST_STAGE_TOP (a pool of at most n documents runs whole).
Depths snap to head layers. Every point re-ranks the same top-k lists as the comparison; time saved
is 1 - seconds / seconds(full), all measured in one process (the full plan runs first).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from matryoshka.engine.named_plans import describe_plan, head_at_or_below, named_plan
from matryoshka.engine.plan import ConfidenceExit, FirstStageExit, Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.eval.metrics import evaluate
from matryoshka.eval.rerank_run import EvalInput, run_plan
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.model.width import WidthTarget

FAMILIES = ("depth", "width", "joint", "exit", "lean", "first_stage_exit")
FIRST_STAGE_TOP = (20, 30, 50)
DEFAULT_THRESHOLDS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
CSV_NAME = "sweep.csv"
PNG_NAME = "sweep.png"
CSV_FIELDS = (
    "family",
    "label",
    "depth",
    "width_layer",
    "width_ratio",
    "exit_irrelevant",
    "exit_relevant",
    "exit_min_layer",
    "ndcg@10",
    "mrr@10",
    "recall@100",
    "map",
    "flops_saved",
    "time_saved",
    "seconds",
    "pairs",
    "pairs_per_s",
    "mean_exit_layer",
    "plan",
)


@dataclass(frozen=True)
class SweepPoint:
    """One plan of the sweep and the family (curve) it belongs to."""

    family: str
    label: str
    plan: Plan


def sweep_points(
    info: ModelInfo,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    relevant: float | None = 0.99,
    min_layer: int | None = None,
) -> list[SweepPoint]:
    """The sweep's plans, the full plan first (see the module docstring)."""
    n = info.num_layers
    step = max(1, n // 6)
    depths = sorted({head_at_or_below(info, d) for d in [*range(step, n + 1, step), n]})
    full = SweepPoint("depth", f"depth {n}", Plan(depth=n))
    points = [full]
    points += [SweepPoint("depth", f"depth {d}", Plan(depth=d)) for d in depths if d != n]
    points += [
        SweepPoint("width", f"width /2 after {layer}", Plan(width={layer: WidthTarget(ratio=2.0)}))
        for layer in range(step, n, step)
    ]
    for d in depths:
        if d >= 2:
            merge_at = max(1, d // 2)
            plan = Plan(depth=d, width={merge_at: WidthTarget(ratio=2.0)})
            points.append(SweepPoint("joint", f"depth {d} + width /2 after {merge_at}", plan))
    start = min_layer if min_layer is not None else max(1, n // 2)
    for t in thresholds:
        exit_ = ConfidenceExit(relevant=relevant, irrelevant=t, min_layer=start)
        points.append(SweepPoint("exit", f"exit p<={t:g} from {start}", Plan(confidence=exit_)))
    for a, b in ((step, 3 * step), (2 * step, 4 * step), (3 * step, 5 * step)):
        if b < n:
            width = {a: WidthTarget(ratio=2.0), b: WidthTarget(ratio=2.0)}
            points.append(SweepPoint("lean", f"width /2 after {a}, /4 after {b}", Plan(width=width)))
    points.append(SweepPoint("lean", "lean-short", named_plan("lean-short", info)))
    points += [
        SweepPoint("first_stage_exit", f"first stage top {k}", Plan(first_stage=FirstStageExit(top_n=k)))
        for k in FIRST_STAGE_TOP
    ]
    return points


def run_sweep(
    reranker: Reranker,
    data: EvalInput,
    points: Sequence[SweepPoint],
    out_dir: Path,
    *,
    queries_per_batch: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every point, then write sweep.csv and sweep.png into `out_dir`; returns the CSV rows
    (the first stage first, then the points in order)."""
    first = evaluate(data.candidates, data.qrels, relevance_level=data.relevance_level)
    rows: list[dict[str, Any]] = [{"family": "first_stage", "label": data.first_stage, **first}]
    full_seconds: float | None = None
    for point in points:
        plan, result = run_plan(
            reranker,
            data,
            point.plan,
            queries_per_batch=queries_per_batch,
            progress=progress,
            desc=point.label,
        )
        u = result.usage
        if full_seconds is None and _is_full(plan, reranker.info):
            full_seconds = u.seconds
        width = sorted(plan.width.items())
        confidence = plan.confidence
        rows.append(
            {
                "family": point.family,
                "label": point.label,
                "depth": plan.depth,
                "width_layer": width[0][0] if width else None,
                "width_ratio": width[0][1].ratio if width else None,
                "exit_irrelevant": confidence.irrelevant if confidence else None,
                "exit_relevant": confidence.relevant if confidence else None,
                "exit_min_layer": confidence.min_layer if confidence else None,
                **evaluate(result.run, data.qrels, relevance_level=data.relevance_level),
                "flops_saved": u.flops_saved,
                "seconds": u.seconds,
                "pairs": u.pairs,
                "pairs_per_s": u.pairs_per_second,
                "mean_exit_layer": u.mean_exit_layer,
                "plan": describe_plan(plan),
            }
        )
    for row in rows[1:]:
        row["time_saved"] = 1.0 - row["seconds"] / full_seconds if full_seconds else None
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / CSV_NAME)
    plot(rows, out_dir / PNG_NAME, title=f"{data.collection.name} {data.split}, {reranker.info.name}")
    return rows


def _is_full(plan: Plan, info: ModelInfo) -> bool:
    return plan.depth == info.num_layers and not plan.width and not plan.adaptive


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per point with CSV_FIELDS as columns (empty where a field does not apply)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """NDCG@10 against FLOPs saved (left) and measured time saved (right), one curve per family, the
    first stage as a dashed line. Drawn on a bare Figure (Agg canvas), so no pyplot state is touched."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    first = next((r for r in rows if r["family"] == "first_stage"), None)
    for ax, x_key, x_label in zip(
        axes, ("flops_saved", "time_saved"), ("FLOPs saved", "measured time saved"), strict=True
    ):
        for family, marker in zip(FAMILIES, "osD^vP", strict=True):
            points = sorted(
                (float(r[x_key]), float(r["ndcg@10"]))
                for r in rows
                if r["family"] == family and r.get(x_key) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=marker, label=family)
        if first is not None:
            ax.axhline(float(first["ndcg@10"]), color="grey", linestyle="--", label="first stage")
        ax.set_xlabel(x_label)
        ax.xaxis.set_major_formatter(lambda x, _pos: f"{x:.0%}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NDCG@10")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
