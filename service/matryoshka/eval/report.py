"""First stage vs re-ranked under named plans: metrics, cost and "rel perf" (the paper's Table 4).

Named plans come from engine/named_plans.py.

rel perf = (metric(plan) - metric(first_stage)) / (metric(full) - metric(first_stage)): the share of
the full plan's gain over the first stage that a plan keeps (None when full gains nothing or is absent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matryoshka.data.datasets import Run, write_run
from matryoshka.engine.named_plans import describe_plan
from matryoshka.engine.plan import Plan
from matryoshka.engine.reranker import Reranker
from matryoshka.eval.metrics import evaluate
from matryoshka.eval.rerank_run import EvalInput, RerankUsage, run_plan

FIRST_STAGE = "first_stage"


def rel_perf(value: float, first_stage: float, full: float) -> float | None:
    """Share of the full plan's gain over the first stage that `value` keeps (None: no gain to share)."""
    gain = full - first_stage
    if not math.isfinite(gain) or abs(gain) < 1e-12:
        return None
    return (value - first_stage) / gain


@dataclass
class SystemResult:
    """One row of the comparison: the first stage (no usage, no plan) or a re-ranked plan."""

    name: str
    metrics: dict[str, float]
    usage: RerankUsage | None = None
    plan: Plan | None = None
    run_path: Path | None = None


def build_report(systems: Sequence[SystemResult], data: EvalInput | None = None) -> dict[str, dict[str, Any]]:
    """The JSON object: system name -> metrics, rel_perf per metric, cost and where the run went."""
    by_name = {s.name: s for s in systems}
    first = by_name.get(FIRST_STAGE)
    full = by_name.get("full")
    report: dict[str, dict[str, Any]] = {}
    for system in systems:
        entry: dict[str, Any] = dict(system.metrics)
        entry["rel_perf"] = {
            metric: (
                rel_perf(value, first.metrics[metric], full.metrics[metric])
                if first is not None and full is not None
                else None
            )
            for metric, value in system.metrics.items()
        }
        if system.usage is not None:
            u = system.usage
            entry.update(
                queries=u.queries,
                pairs=u.pairs,
                flops_saved=u.flops_saved,
                pairs_per_s=u.pairs_per_second,
                seconds=u.seconds,
                flops=u.flops,
                full_flops=u.full_flops,
                mean_exit_layer=u.mean_exit_layer,
                exit_reasons=dict(sorted(u.exit_reasons.items())),
            )
        elif data is not None:
            entry.update(
                queries=len(data.query_ids),
                source=data.first_stage,
                top_k=data.top_k,
                relevance_level=data.relevance_level,
            )
        if system.plan is not None:
            entry["plan"] = asdict(system.plan)
            entry["plan_description"] = describe_plan(system.plan)
        entry["run_file"] = str(system.run_path) if system.run_path is not None else None
        report[system.name] = entry
    return report


def compare(
    reranker: Reranker | None,
    data: EvalInput,
    plans: Mapping[str, Plan],
    *,
    out_dir: Path | None = None,
    queries_per_batch: int | None = None,
    progress: bool = False,
    fuse: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate the first stage and each plan on the same top-k lists; write a TREC run per system.
    `reranker` may be None only when there are no plans (first stage only); `fuse` sends the first-stage
    scores with the documents (rerank_run)."""
    if plans and reranker is None:
        raise ValueError("plans need a reranker")
    systems = [
        SystemResult(
            FIRST_STAGE,
            _evaluate(data.candidates, data),
            run_path=_write(data.candidates, out_dir, FIRST_STAGE),
        )
    ]
    for name, plan in plans.items():
        assert reranker is not None
        resolved, result = run_plan(
            reranker, data, plan, queries_per_batch=queries_per_batch, progress=progress, desc=name, fuse=fuse
        )
        systems.append(
            SystemResult(
                name,
                _evaluate(result.run, data),
                usage=result.usage,
                plan=resolved,
                run_path=_write(result.run, out_dir, name),
            )
        )
    return build_report(systems, data)


def _evaluate(run: Run, data: EvalInput) -> dict[str, float]:
    return evaluate(run, data.qrels, relevance_level=data.relevance_level)


def _write(run: Run, out_dir: Path | None, name: str) -> Path | None:
    if out_dir is None:
        return None
    path = out_dir / f"{name}.trec"
    write_run(run, path, tag=f"matryoshka-{name}")
    return path


_COLUMNS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "R@100", "map": "MAP"}


def format_table(report: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """A fixed-width table: metrics, rel perf on nDCG@10, FLOPs saved, pairs/s and mean exit layer."""
    metric_names = [m for m in _COLUMNS if any(m in row for row in report.values())]
    header = [
        "system",
        *(_COLUMNS[m] for m in metric_names),
        "rel perf",
        "FLOPs saved",
        "pairs/s",
        "exit layer",
        "plan",
    ]
    lines: list[list[str]] = []
    for name, row in report.items():
        rel = row.get("rel_perf", {}).get("ndcg@10")
        cells = [name, *(f"{row[m]:.4f}" for m in metric_names)]
        cells.append("-" if rel is None or name == FIRST_STAGE else f"{rel:.1%}")
        if "flops_saved" in row:
            cells += [
                f"{row['flops_saved']:.1%}",
                f"{row['pairs_per_s']:.2f}",
                f"{row['mean_exit_layer']:.1f}",
            ]
        else:
            cells += ["-", "-", "-"]
        cells.append(row.get("plan_description", f"{row.get('source', '')} top-{row.get('top_k', '?')}"))
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        middle = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
        return "  ".join([first, *middle, cells[-1]]).rstrip()

    out = [title] if title else []
    out += [fmt(header), *(fmt(cells) for cells in lines)]
    return "\n".join(out)
