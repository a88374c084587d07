"""Plans replayed offline on a recording (eval/layer_scores.py): the engine's own JobRun decides where
it scores (`JobRun.scores_at`) and its ExitSchedule (depth, confidence, cascade) decides who exits, fed
the recorded calibrated probabilities; fusion with the first stage is engine/fusion.py's (replayed with
fusion weights, the job carries the recorded first-stage scores, so its cascade ranks by fused keys as
the engine's does; without, by probability). FLOPs are the
recorded layer FLOPs through each row's exit layer plus one head scoring per layer it was scored at."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matryoshka.data.datasets import Qrels, Run
from matryoshka.engine.fusion import fused_keys
from matryoshka.engine.job import Job
from matryoshka.engine.jobrun import JobRun
from matryoshka.engine.plan import CascadeExit, ConfidenceExit, FirstStageExit, Plan
from matryoshka.eval.metrics import evaluate
from matryoshka.model.artifact import ArtifactError as ArtifactError  # re-exported: store_fusion raises it
from matryoshka.model.artifact import read_manifest, set_fusion, shipped_artifact

Row = dict[str, Any]  # one recorded pair (PairScores as JSON: layer keys are strings)


@dataclass
class Recording:
    """A recording's rows grouped by query (first-stage order kept) and what produced it."""

    meta: dict[str, Any]
    queries: dict[str, list[Row]]

    @property
    def head_layers(self) -> tuple[int, ...]:
        """The head layers the recording scored at."""
        return tuple(self.meta["head_layers"])


@dataclass
class Replayed:
    """A replayed plan's run ({qid: {doc: key}}), its FLOPs against the full plan's, and exit layers."""

    run: Run
    flops: float
    full_flops: float
    exit_layers: list[int]

    @property
    def flops_saved(self) -> float:
        """Fraction of the full plan's FLOPs not spent."""
        return 1.0 - self.flops / self.full_flops if self.full_flops > 0 else 0.0


def load_recording(path: str | Path) -> Recording:
    """Read a recording written by eval/layer_scores.save."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    queries: dict[str, list[Row]] = {}
    for row in payload["rows"]:
        queries.setdefault(row["qid"], []).append(row)
    return Recording(payload["meta"], queries)


def replay_query(
    rows: Sequence[Row], plan: Plan, head_layers: tuple[int, ...], fusion: Mapping[int, float] | None
) -> tuple[list[float], list[int], float, float]:
    """One query under a resolved `plan`: ranking keys, exit layers, FLOPs and full-plan FLOPs."""
    assert plan.depth is not None, "resolve the plan first"
    n = len(rows)
    first = [r["first_stage"] for r in rows] if fusion is not None else None
    run = JobRun(Job("replay", ["-"] * n, plan, first_stage=first), [1] * n, 0)
    run.fusion = fusion or {}
    run.exit_by_first_stage()
    scorings = torch.zeros(n)
    for layer in head_layers:
        if not bool(run.active.any()) or layer > plan.depth:
            break
        if not run.scores_at(layer, head_layers):
            continue
        active = run.active.nonzero().flatten()
        probs = torch.tensor([rows[int(i)]["prob"][str(layer)] for i in active], dtype=torch.float64)
        logits = torch.tensor([rows[int(i)]["logit"][str(layer)] for i in active], dtype=torch.float64)
        run.scored(active, layer, logits, torch.logit(probs), 0.0)  # the recorded calibrated scores
        scorings[active] += 1
        run.exit(run.decide(layer), layer)
    layers = run.exit_layer.tolist()
    flops = sum(
        (rows[i]["layer_flops"][str(layers[i])] if layers[i] else 0.0)  # exit layer 0: never ran
        + float(scorings[i]) * rows[i]["score_flops"]
        for i in range(n)
    )
    full = sum(r["full_flops"] for r in rows)
    probabilities = run.prob.tolist()
    if fusion is None:
        return probabilities, layers, flops, full
    return fused_keys(probabilities, layers, [r["first_stage"] for r in rows], fusion), layers, flops, full


def replay(recording: Recording, plan: Plan, fusion: Mapping[int, float] | None = None) -> Replayed:
    """Every query of `recording` under `plan` (resolved; its depth a recorded head layer)."""
    out = Replayed({}, 0.0, 0.0, [])
    for qid, rows in recording.queries.items():
        keys, layers, flops, full = replay_query(rows, plan, recording.head_layers, fusion)
        out.run[qid] = {r["doc"]: k for r, k in zip(rows, keys, strict=True)}
        out.flops += flops
        out.full_flops += full
        out.exit_layers += layers
    return out


def first_stage_run(recording: Recording) -> Run:
    """The recorded first-stage scores as a run."""
    return {q: {r["doc"]: r["first_stage"] for r in rows} for q, rows in recording.queries.items()}


def ndcg10(run: Run, qrels: Qrels, relevance_level: int = 1) -> float:
    """nDCG@10 of `run`."""
    return evaluate(run, qrels, relevance_level=relevance_level)["ndcg@10"]


FUSION_GRID = tuple(i / 20 for i in range(21))


def fit_fusion(
    recordings: Sequence[tuple[Recording, Qrels]], grid: Sequence[float] = FUSION_GRID
) -> dict[int, float]:
    """Per head layer, the weight w in `grid` whose fused ranking (every pair scored at that layer) has the
    best nDCG@10 averaged over `recordings`; ties go to the larger w (trust the head)."""
    weights: dict[int, float] = {}
    for layer in recordings[0][0].head_layers:
        plan = Plan(depth=layer)
        best = max(
            grid,
            key=lambda w: (
                sum(
                    ndcg10(replay(rec, plan, {layer: w}).run, qrels, rec.meta.get("relevance_level", 1))
                    for rec, qrels in recordings
                ),
                w,
            ),
        )
        weights[layer] = best
    return weights


def replay_plans(
    recording: Recording,
    margins: Sequence[float],
    irrelevant: Sequence[float],
    first_stage: Sequence[int] = (),
    top_n: int = 10,
) -> list[tuple[str, Plan]]:
    """The plans a recording can replay: each head layer as the depth; from the head at or below 5/6 of
    the depth, the top-`top_n` cascade at each margin and the confidence exit at each threshold; for
    each n in `first_stage`, only the first stage's top n run: to full depth, and with the cascade at
    margin 0."""
    heads = recording.head_layers
    last = recording.meta["num_layers"]
    start = max((h for h in heads if h <= 5 * last // 6), default=heads[0])
    plans = [(f"depth {d}", Plan(depth=d)) for d in heads]
    patience = len(heads) + 1  # the cascade's stability stop never fires: only its margin drops rows

    def cascade(margin: float) -> CascadeExit:
        return CascadeExit(top_n=top_n, margin=margin, patience=patience, min_layer=start)

    plans += [
        (f"cascade top {top_n} margin {m:g} from {start}", Plan(depth=last, cascade=cascade(m)))
        for m in margins
    ]
    for k in first_stage:
        cut = FirstStageExit(top_n=k)
        plans.append((f"first stage top {k}", Plan(depth=last, first_stage=cut)))
        both = Plan(depth=last, first_stage=cut, cascade=cascade(0.0))
        plans.append((f"first stage top {k} + cascade from {start}", both))
    plans += [
        (
            f"exit p<={t:g} or >=0.99 from {start}",
            Plan(depth=last, confidence=ConfidenceExit(relevant=0.99, irrelevant=t, min_layer=start)),
        )
        for t in irrelevant
    ]
    return plans


def replay_table(
    recording: Recording,
    qrels: Qrels,
    weights: Mapping[int, float],
    margins: Sequence[float],
    irrelevant: Sequence[float],
    first_stage: Sequence[int] = (),
) -> list[str]:
    """One line per replayed plan: nDCG@10 ranked by probability and fused, the share of the fused full
    plan's gain over the first stage the fused ranking keeps, FLOPs saved, mean exit layer."""
    level = recording.meta.get("relevance_level", 1)
    first = ndcg10(first_stage_run(recording), qrels, level)
    full = Plan(depth=recording.meta["num_layers"])
    gain = ndcg10(replay(recording, full, weights).run, qrels, level) - first
    lines = [f"{'plan':<40} {'nDCG@10':>8} {'fused':>8} {'kept':>7} {'saved':>7} {'exit':>6}"]
    lines.append(f"{'first stage':<40} {first:8.4f}")
    for label, plan in replay_plans(recording, margins, irrelevant, first_stage):
        plain = replay(recording, plan)
        fused = ndcg10(replay(recording, plan, weights).run, qrels, level)
        kept = f"{(fused - first) / gain:7.1%}" if gain > 0 else f"{'-':>7}"
        mean_exit = sum(plain.exit_layers) / max(len(plain.exit_layers), 1)
        lines.append(
            f"{label:<40} {ndcg10(plain.run, qrels, level):8.4f} {fused:8.4f} {kept} "
            f"{plain.flops_saved:7.1%} {mean_exit:6.2f}"
        )
    return lines


def store_fusion(artifact: Path, weights: dict[int, float], fitted_on: str) -> None:
    """Write fitted fusion weights into the calibration of the artifact at `artifact` (ArtifactError
    when it has no head at one of their layers)."""
    set_fusion(artifact, weights, fitted_on)


def shipped_fusion(model: str, artifact: str | None) -> dict[int, float]:
    """The fusion weights of `artifact`, or of the artifact shipped for `model` ({} without one)."""
    path = Path(artifact) if artifact is not None else shipped_artifact(model)
    if path is None:
        return {}
    fusion = read_manifest(Path(path))["calibration"].get("fusion", {})
    return {int(k): float(v) for k, v in fusion.items()}
