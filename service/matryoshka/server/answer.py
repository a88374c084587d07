"""Engine -> wire: a job's outcomes, usage and timing, and a model's description, as response messages
(server/translate.py maps the other direction)."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.duration_pb2 import Duration

from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import JobResult, Outcome
from matryoshka.engine.named_plans import describe_plan, named_plan
from matryoshka.engine.reranker import rank
from matryoshka.model.matryoshka_model import ModelInfo
from matryoshka.server.settings import Settings
from matryoshka.server.translate import RerankCall
from matryoshka_client.proto import rerank_service_pb2 as pb


def to_duration(seconds: float) -> Duration:
    """Seconds (negative clamps to 0) as a google.protobuf.Duration."""
    d = Duration()
    d.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return d


class NonFiniteScoreError(ArithmeticError):
    """The model produced NaN scores: an error, never a silently dropped document."""

    def __init__(self, indexes: list[int]) -> None:
        shown = ", ".join(map(str, indexes[:20])) + (", ..." if len(indexes) > 20 else "")
        super().__init__(f"the model produced a NaN score for {len(indexes)} document(s): [{shown}]")


EXIT_REASONS = {reason: pb.ExitReason.Value(f"EXIT_REASON_{reason.name}") for reason in ExitReason}
FAMILIES = {"decoder": pb.MODEL_FAMILY_DECODER, "encoder": pb.MODEL_FAMILY_ENCODER}
SCORINGS = {
    "heads": pb.SCORING_MODE_HEADS,
    "query_likelihood": pb.SCORING_MODE_QUERY_LIKELIHOOD,
    "cosine": pb.SCORING_MODE_COSINE,
}


def to_results(call: RerankCall, outcomes: list[Outcome], running_ok: bool = False) -> list[pb.RerankResult]:
    """Outcomes ranked, without those below the call's min_score, and cut to its top_n; `running_ok`
    allows rows still running (a stream stage, where min_score does not apply: a running candidate may
    still rise above it)."""
    if not running_ok:
        nan = [o.index for o in outcomes if math.isnan(o.probability) or math.isnan(o.logit)]
        if nan:
            raise NonFiniteScoreError(nan)
    out = []
    for o in rank(outcomes, call.top_n, None if running_ok else call.min_score):
        kwargs: dict[str, Any] = {}
        if call.return_documents:
            kwargs["document"] = call.documents[o.index]
        if o.window is not None:
            w = o.window
            kwargs["window"] = pb.Window(index=w.index, count=w.count, start=w.start, end=w.end)
        assert running_ok or o.exit_reason is not None
        out.append(
            pb.RerankResult(
                index=o.index,
                id=call.ids[o.index],
                score=o.probability if call.score_type == "probability" else o.logit,
                exit_layer=o.exit_layer,
                exit_reason=EXIT_REASONS[o.exit_reason] if o.exit_reason else pb.EXIT_REASON_UNSPECIFIED,
                **kwargs,
            )
        )
    return out


def to_answer(
    call: RerankCall, result: JobResult, model: str, *, queued: float, total: float
) -> dict[str, Any]:
    """The fields a RerankResponse (and a final StreamRerankResponse) carries for a finished job."""
    usage = result.usage
    return {
        "results": to_results(call, result.outcomes),
        "usage": pb.Usage(
            layer_tokens=usage.layer_tokens,
            flops=usage.flops,
            full_flops=usage.full_flops,
            flops_saved=usage.flops_saved,
            cached_flops=usage.cached_flops,
            cache_hits=usage.cache_hits,
            cache_resumed=usage.cache_resumed,
            rows=usage.rows,
        ),
        "timing": pb.Timing(
            queue=to_duration(queued), compute=to_duration(result.compute_seconds), total=to_duration(total)
        ),
        "partial": result.partial,
        "model": model,
        "request_id": call.request_id,
    }


def to_model_info(
    info: ModelInfo, settings: Settings, dtype: str = "", *, is_default: bool = True
) -> pb.ModelInfo:
    """A served model as GetModelInfo describes it: shape, exit layers, scoring, dtype and the limits."""
    s = settings
    return pb.ModelInfo(
        name=info.name,
        family=FAMILIES[info.family],
        num_layers=info.num_layers,
        hidden_size=info.hidden_size,
        head_layers=list(info.head_layers),
        scoring=SCORINGS[info.scoring],
        merge_ratios=list(info.merge_ratios),
        limits=pb.ModelLimits(
            max_documents=s.max_documents,
            max_request_bytes=s.max_request_bytes,
            max_query_tokens=s.max_query_tokens,
            max_document_tokens=s.max_document_tokens,
            max_windows_per_document=s.max_windows_per_document,
            max_windows_per_request=s.max_windows_per_request,
        ),
        default_truncation=pb.Truncation(
            max_query_tokens=s.max_query_tokens,
            max_document_tokens=s.default_document_tokens,
            side=pb.TRUNCATION_SIDE_END,
        ),
        calibration_version=info.calibration_version,
        fingerprint=info.fingerprint,
        template_version=info.template_version,
        is_default=is_default,
        dtype=dtype,
        budget_plan=budget_plan_text(info),
    )


def budget_plan_text(info: ModelInfo) -> str:
    """ModelInfo.budget_plan: "name: shape" of the plan budget-only requests run ("" = the full plan)."""
    if info.budget_plan is None:
        return ""
    return f"{info.budget_plan}: {describe_plan(named_plan(info.budget_plan, info))}"
