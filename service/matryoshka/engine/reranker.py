"""The in-process API: load a model once, re-rank a query's documents under a plan."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from matryoshka.engine.cost import LatencyModel, Usage
from matryoshka.engine.dtype import DTYPES, NAMES, DtypeChoice, choose_dtype
from matryoshka.engine.executor import Executor
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import EngineError, Job, JobResult, Outcome
from matryoshka.engine.plan import Plan
from matryoshka.engine.state_cache import StateCache
from matryoshka.model.artifact import load_artifact, read_manifest, shipped_artifact
from matryoshka.model.checkpoint import (
    UnsupportedCheckpointError as UnsupportedCheckpointError,  # re-exported: the CLI never imports model/
)
from matryoshka.model.checkpoint import load_checkpoint
from matryoshka.model.loading import BACKBONES, load_backbone
from matryoshka.model.loading import DEFAULT_BACKBONE as DEFAULT_BACKBONE  # re-exported for callers
from matryoshka.model.matryoshka_model import MatryoshkaModel, ModelInfo, Scoring
from matryoshka.model.prompt import Truncation as Truncation  # re-exported: the in-process API's inputs
from matryoshka.model.window import Chunking as Chunking
from matryoshka.model.window import Window

ScoreType = Literal["probability", "logit"]


@dataclass(frozen=True)
class RankedDocument:
    """One re-ranked document, identified by its index in the request."""

    index: int
    score: float
    exit_layer: int
    exit_reason: ExitReason
    document: str | None = None
    window: Window | None = None  # with chunking: the window that decided the score


@dataclass(frozen=True)
class Timing:
    """Seconds spent computing, and in total inside `rerank`."""

    compute_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class RerankResult:
    """Documents sorted by score (best first), what it cost, and whether the budget cut it short."""

    results: list[RankedDocument]
    usage: Usage
    timing: Timing
    partial: bool
    model: str


def rank(
    outcomes: Sequence[Outcome], top_n: int | None = None, min_score: float | None = None
) -> list[Outcome]:
    """Best first by the fused key where there is one (first-stage scores given), else by calibrated
    probability (ties: lower index first), without those whose probability is below `min_score`, cut
    to `top_n`; rows not yet scored (NaN, possible in stage snapshots) are left out."""
    floor = -math.inf if min_score is None else min_score
    ranked = sorted(
        (o for o in outcomes if not math.isnan(o.probability) and o.probability >= floor),
        key=lambda o: (-(o.fused if o.fused is not None else o.probability), o.index),
    )
    return ranked[:top_n] if top_n else ranked


class Reranker:
    """A loaded Matryoshka model and its executor; with a `cache`, repeated pairs are answered or
    resumed from their cached layers (see matryoshka.cache.LayerCache)."""

    def __init__(
        self,
        model: MatryoshkaModel,
        *,
        max_batch_rows: int = 64,
        max_batch_tokens: int = 16384,
        cache: StateCache | None = None,
    ):
        self.model = model
        self.dtype: DtypeChoice = DtypeChoice(NAMES[model.backbone.dtype], "as loaded")
        self.cache = cache
        self.executor = Executor(
            model, max_batch_rows=max_batch_rows, max_batch_tokens=max_batch_tokens, latency=LatencyModel()
        )

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_BACKBONE,
        *,
        dtype: str = "auto",
        scoring: Scoring | None = None,
        head_layers: Sequence[int] | None = None,
        threads: int | None = None,
        artifact: str | Path | None = None,
        device: str = "cpu",
    ) -> Reranker:
        """Load a packaged backbone offline with its trained artifact; `dtype="auto"` probes the CPU.

        `artifact` names an artifact directory; without one, the artifact shipped for `name` is used
        when there is one and no `scoring` is asked for. Otherwise both score zero-shot: decoders by query
        likelihood, encoders as split-pair bi-encoders (cosine); `scoring="heads"` gives untrained heads.
        `device` is "cpu", "cuda" or "cuda:N".
        """
        if threads is not None:
            torch.set_num_threads(threads)
        choice = choose_dtype(dtype, device)
        reranker = cls._load(name, DTYPES[choice.name], scoring, head_layers, artifact, device)
        reranker.dtype = choice
        return reranker

    @classmethod
    def _load(
        cls,
        name: str,
        dtype: torch.dtype,
        scoring: Scoring | None,
        head_layers: Sequence[int] | None,
        artifact: str | Path | None,
        device: str,
    ) -> Reranker:
        if artifact is None and scoring is None:
            artifact = shipped_artifact(name)
        if artifact is not None:
            path = Path(artifact)
            manifest = read_manifest(path)
            if manifest["backbone"]["name"] != name:
                raise ValueError(f"{path} was trained on {manifest['backbone']['name']}, not {name}")
            if scoring is not None and scoring != manifest["scoring"]:
                raise ValueError(f"{path} scores by {manifest['scoring']}, not {scoring}")
            return cls(load_artifact(path, dtype=dtype).to(torch.device(device)))
        loaded = load_backbone(name, dtype)
        loaded.model.to(torch.device(device))
        if scoring is None:  # a zero-shot reading: untrained heads would score at random
            scoring = "query_likelihood" if BACKBONES[name].family == "decoder" else "cosine"
        return cls(MatryoshkaModel.from_backbone(loaded, scoring=scoring, head_layers=head_layers))

    @classmethod
    def from_checkpoint(
        cls,
        model_dir: str | Path,
        *,
        name: str | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
    ) -> Reranker:
        """Serve a published re-ranker checkpoint directory (docs/models.md) with its own heads.

        `name` defaults to the directory's name; `device` is "cpu", "cuda" or "cuda:N".
        """
        if threads is not None:
            torch.set_num_threads(threads)
        choice = choose_dtype(dtype, device)
        reranker = cls(load_checkpoint(model_dir, name=name, dtype=DTYPES[choice.name], device=device))
        reranker.dtype = choice
        return reranker

    @property
    def info(self) -> ModelInfo:
        """The loaded model's description."""
        return self.model.info

    def warmup(self) -> None:
        """Run one small request so kernels are initialised and the latency model has a measurement."""
        self.rerank("warm up query", ["a short warm-up passage", "another passage"], Plan(), use_cache=False)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        plan: Plan | None = None,
        *,
        top_n: int | None = None,
        score_type: ScoreType = "probability",
        truncation: Truncation | None = None,
        return_documents: bool = False,
        use_cache: bool = True,
        chunking: Chunking | None = None,
        min_score: float | None = None,
    ) -> RerankResult:
        """Score `documents` against `query` under `plan` (default: full depth, full width);
        `use_cache=False` neither reads nor writes the cache. With `chunking`, long documents are
        split into windows (model/window.py); `min_score` drops results below that probability."""
        start = time.perf_counter()
        if not query.strip():
            raise ValueError("query must not be empty")
        resolved = (plan or Plan()).resolve(self.info)
        job = Job(query, list(documents), resolved, truncation or Truncation(), chunking=chunking)
        cache = self.cache if use_cache else None
        if cache is not None:
            job.pairs = self.executor.encode(job)
            cached = cache.lookup(job.pairs, resolved)
            job.resume, job.cached_scores, job.keep_states = cached.states, cached.scores, True
        (answer,) = self.executor.run([job])
        if isinstance(answer, EngineError):
            raise answer
        if cache is not None and job.pairs is not None:
            cache.write_back(job.pairs, resolved, answer)
        return self.present(answer, documents, top_n, score_type, return_documents, start, min_score)

    def present(
        self,
        answer: JobResult,
        documents: Sequence[str],
        top_n: int | None,
        score_type: ScoreType,
        return_documents: bool,
        start: float,
        min_score: float | None = None,
    ) -> RerankResult:
        """Turn executor outcomes into a sorted result."""
        ranked = rank(answer.outcomes, top_n, min_score)
        results = [self._ranked(o, documents, score_type, return_documents) for o in ranked]
        return RerankResult(
            results=results,
            usage=answer.usage,
            timing=Timing(answer.compute_seconds, time.perf_counter() - start),
            partial=answer.partial,
            model=self.info.name,
        )

    @staticmethod
    def _ranked(
        o: Outcome, documents: Sequence[str], score_type: ScoreType, with_doc: bool
    ) -> RankedDocument:
        assert o.exit_reason is not None
        return RankedDocument(
            index=o.index,
            score=o.probability if score_type == "probability" else o.logit,
            exit_layer=o.exit_layer,
            exit_reason=o.exit_reason,
            document=documents[o.index] if with_doc else None,
            window=o.window,
        )
