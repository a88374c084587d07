"""The layer-state cache without a server: keys, codecs, the memory store's budget, and the in-process
Reranker answering repeats from cached scores and resuming deeper requests from cached states."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from matryoshka.cache.codec import CodecError, decode_row, decode_scores, encode_row, encode_scores
from matryoshka.cache.keys import KeySpace
from matryoshka.cache.layer_cache import AsyncLayerCache, LayerCache, key_space
from matryoshka.cache.memory import MemoryStore
from matryoshka.engine.exits import ExitReason
from matryoshka.engine.job import ScoredLayer
from matryoshka.engine.plan import ConfidenceExit, Plan
from matryoshka.engine.reranker import Reranker, RerankResult
from matryoshka.model.matryoshka_model import MatryoshkaModel, ModelInfo
from matryoshka.model.prompt import EncodedPair, Truncation
from matryoshka.model.state import RowState
from matryoshka.model.width import WidthTarget
from matryoshka.server.settings import Settings
from matryoshka.server.translate import to_call
from matryoshka_client.convert import exit_reason_name, to_usage
from matryoshka_client.proto import rerank_service_pb2 as pb
from tests.conftest import PASSAGES

QUERY = "what is the capital of france"
SPACE = KeySpace("fp", "cal1", "t1", "heads", (1, 2, 3, 4), "float32", "float32")
PAIR = EncodedPair([5, 6, 7, 8, 9], [1, 1, 3, 2, 2], [0] * 5)


def scores_of(result: RerankResult) -> dict[int, float]:
    return {d.index: d.score for d in result.results}


# -- keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": "other"},
        {"calibration_version": "cal2"},
        {"template_version": "t2"},
        {"scoring": "query_likelihood"},
        {"head_layers": (4,)},
        {"dtype": "bfloat16"},
        {"state_dtype": "bfloat16"},
    ],
)
def test_every_part_of_the_model_identity_changes_the_key(change: dict[str, object]) -> None:
    other = dataclasses.replace(SPACE, **change)  # type: ignore[arg-type]
    assert other.pair(PAIR).key({}, 2, "s") != SPACE.pair(PAIR).key({}, 2, "s")


def test_keys_follow_tokens_layer_and_the_width_prefix_only() -> None:
    keys = SPACE.pair(PAIR)
    base = keys.key({}, 2, "s")
    assert keys.key({}, 3, "s") != base
    assert keys.key({}, 2, "h") != base
    assert SPACE.pair(dataclasses.replace(PAIR, input_ids=[5, 6, 7, 8, 10])).key({}, 2, "s") != base
    assert keys.key({3: WidthTarget(ratio=2.0)}, 2, "s") == base  # merges after the layer do not count
    assert keys.key({2: WidthTarget(ratio=2.0)}, 2, "s") != base  # a merge at the layer does
    assert keys.key({1: WidthTarget(ratio=2.0)}, 2, "s") != keys.key({1: WidthTarget(length=4)}, 2, "s")


def test_one_querys_keys_share_a_cluster_hash_tag() -> None:
    other_passage = EncodedPair([5, 6, 7, 11], [1, 1, 3, 2], [0] * 4)
    other_query = EncodedPair([4, 6, 7, 8, 9], [1, 1, 3, 2, 2], [0] * 5)
    tag = SPACE.pair(PAIR).key({}, 1, "s").split("}")[0]
    assert tag.startswith("mtr:{")
    assert SPACE.pair(other_passage).key({}, 3, "h").split("}")[0] == tag
    assert SPACE.pair(other_query).key({}, 1, "s").split("}")[0] != tag


# -- codecs -------------------------------------------------------------------------------------------


def test_scores_round_trip_and_corruption_is_detected() -> None:
    scores = {2: ScoredLayer(-1.5, 1e9), 4: ScoredLayer(0.25, 2.5e9)}
    blob = encode_scores(4, scores)
    assert decode_scores(blob) == (4, scores)
    broken = bytearray(blob)
    broken[-1] ^= 0xFF
    with pytest.raises(CodecError, match="checksum"):
        decode_scores(bytes(broken))
    with pytest.raises(CodecError, match="magic"):
        decode_scores(b"garbage")
    with pytest.raises(CodecError, match="version"):
        decode_scores(blob[:4] + b"\x09" + blob[5:])


def test_states_can_be_stored_in_bfloat16() -> None:
    row = RowState(torch.randn(6, 8), torch.ones(6, dtype=torch.int8), torch.arange(6), layer=2)
    half = decode_row(encode_row(row, torch.bfloat16))
    assert half.hidden.dtype == torch.bfloat16
    assert len(encode_row(row, torch.bfloat16)) < len(encode_row(row))
    torch.testing.assert_close(half.hidden.float(), row.hidden, atol=0.05, rtol=0.02)


# -- memory store -------------------------------------------------------------------------------------


def test_memory_store_evicts_least_recently_used_within_its_budget() -> None:
    store = MemoryStore(max_bytes=300)
    store.set_many([("a", b"x" * 99), ("b", b"x" * 99), ("c", b"x" * 99)])
    assert store.num_bytes <= 300
    store.get_many(["a"])  # a becomes most recently used
    store.set_many([("d", b"x" * 99)])
    assert store.get_many(["a", "b", "c", "d"]) == [b"x" * 99, None, b"x" * 99, b"x" * 99]
    store.set_many([("huge", b"x" * 1000)])  # larger than the budget: not kept, nothing evicted for it
    assert store.get_many(["huge"]) == [None]
    assert len(store) == 3
    assert store.num_bytes <= 300


# -- the in-process Reranker with a cache ------------------------------------------------------------


@pytest.fixture
def cached(llama_model: MatryoshkaModel) -> Reranker:
    return Reranker(llama_model, cache=LayerCache(MemoryStore(), key_space(llama_model)))


def test_a_repeated_request_is_answered_from_cache_with_no_compute(cached: Reranker) -> None:
    cold = cached.rerank(QUERY, PASSAGES, Plan(depth=3))
    warm = cached.rerank(QUERY, PASSAGES, Plan(depth=3))
    assert scores_of(warm) == pytest.approx(scores_of(cold), abs=1e-6)
    assert all(d.exit_reason is ExitReason.CACHE_HIT and d.exit_layer == 3 for d in warm.results)
    assert (warm.usage.flops, warm.usage.layer_tokens, warm.usage.cache_hits) == (0.0, 0, len(PASSAGES))
    assert warm.usage.cached_flops == pytest.approx(cold.usage.flops)
    assert warm.usage.flops_saved == pytest.approx(cold.usage.flops_saved)  # a hit is not an early exit
    assert cold.usage.cache_hits == 0


def test_a_deeper_request_resumes_and_equals_a_fresh_run(cached: Reranker) -> None:
    width = {1: WidthTarget(ratio=2.0), 3: WidthTarget(ratio=1.5)}
    fresh = cached.rerank(QUERY, PASSAGES, Plan(width=width), use_cache=False)
    shallow = cached.rerank(QUERY, PASSAGES, Plan(depth=2, width={1: WidthTarget(ratio=2.0)}))
    deep = cached.rerank(QUERY, PASSAGES, Plan(width=width))
    assert scores_of(deep) == pytest.approx(scores_of(fresh), abs=1e-5)
    assert deep.usage.cache_resumed == len(PASSAGES)
    assert deep.usage.flops < 0.7 * fresh.usage.flops
    assert deep.usage.cached_flops == pytest.approx(shallow.usage.flops)
    # the same work as a fresh run, plus the shallow run's scoring at its depth
    assert deep.usage.flops + deep.usage.cached_flops == pytest.approx(fresh.usage.flops, rel=1e-4)
    again = cached.rerank(QUERY, PASSAGES, Plan(width=width))
    assert again.usage.cache_hits == len(PASSAGES)


def test_exit_policies_replay_on_cached_scores(cached: Reranker) -> None:
    plan = Plan(confidence=ConfidenceExit(relevant=None, irrelevant=0.5, min_layer=1))
    cold = cached.rerank(QUERY, PASSAGES, plan)
    warm = cached.rerank(QUERY, PASSAGES, plan)
    layers = {d.index: d.exit_layer for d in cold.results}
    assert {d.index: d.exit_layer for d in warm.results} == layers
    assert all(d.exit_reason is ExitReason.CACHE_HIT for d in warm.results)
    assert warm.usage.flops == 0.0


def test_an_entry_without_the_policy_layers_is_not_used(cached: Reranker) -> None:
    """A fixed-depth run scored only at its depth: a confidence plan needs scores below it."""
    cached.rerank(QUERY, PASSAGES, Plan(depth=4))
    plan = Plan(confidence=ConfidenceExit(relevant=None, irrelevant=0.5, min_layer=1))
    fresh = cached.rerank(QUERY, PASSAGES, plan, use_cache=False)
    again = cached.rerank(QUERY, PASSAGES, plan)
    assert again.usage.cache_hits == again.usage.cache_resumed == 0
    assert scores_of(again) == pytest.approx(scores_of(fresh), abs=1e-6)


def test_a_corrupt_entry_is_ignored_and_overwritten(cached: Reranker) -> None:
    cache = cached.cache
    assert isinstance(cache, LayerCache)
    assert isinstance(cache.store, MemoryStore)
    cold = cached.rerank(QUERY, PASSAGES, Plan(depth=2))
    store = cache.store
    for key in list(store._entries):
        store.set_many([(key, store._entries[key][:-3] + b"bad")])
    again = cached.rerank(QUERY, PASSAGES, Plan(depth=2))
    assert again.usage.cache_hits == 0
    assert scores_of(again) == pytest.approx(scores_of(cold), abs=1e-6)
    third = cached.rerank(QUERY, PASSAGES, Plan(depth=2))
    assert third.usage.cache_hits == len(PASSAGES)


def test_the_async_cache_hits_after_its_write_back(llama_model: MatryoshkaModel) -> None:
    cache = AsyncLayerCache(MemoryStore(), key_space(llama_model))
    reranker = Reranker(llama_model)
    plan = Plan(depth=2).resolve(llama_model.info)
    pairs = llama_model.encode(QUERY, PASSAGES, Truncation())

    async def go() -> tuple[int, int]:
        from matryoshka.engine.job import Job, JobResult

        before = await cache.lookup(pairs, plan)
        (result,) = reranker.executor.run([Job(QUERY, PASSAGES, plan, pairs=pairs, keep_states=True)])
        assert isinstance(result, JobResult)
        assert cache.write_back(pairs, plan, result)
        await cache.drain()
        after = await cache.lookup(pairs, plan)
        return len(before.scores), len(after.scores)

    assert asyncio.run(go()) == (0, len(PASSAGES))


def test_the_memory_budget_evicts_old_queries_first(llama_model: MatryoshkaModel) -> None:
    store = MemoryStore(max_bytes=40_000)  # room for about two queries' entries
    reranker = Reranker(llama_model, cache=LayerCache(store, key_space(llama_model)))
    queries = [
        "what is the capital of france",
        "where is the park",
        "who ran to the tree",
        "why is the sky blue",
    ]
    for q in queries:
        reranker.rerank(q, PASSAGES, Plan(depth=2))
        assert store.num_bytes <= store.max_bytes
    assert reranker.rerank(queries[-1], PASSAGES, Plan(depth=2)).usage.cache_hits == len(PASSAGES)
    assert reranker.rerank(queries[0], PASSAGES, Plan(depth=2)).usage.cache_hits == 0


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        (pb.CACHE_MODE_UNSPECIFIED, "read_write"),
        (pb.CACHE_MODE_READ_WRITE, "read_write"),
        (pb.CACHE_MODE_READ_ONLY, "read_only"),
        (pb.CACHE_MODE_BYPASS, "bypass"),
    ],
)
def test_cache_mode_and_cache_usage_cross_the_wire(mode: int, name: str) -> None:
    info = ModelInfo("m", "decoder", 4, 64, (1, 2, 3, 4), "heads", "1", "fp", "identity")
    request = pb.RerankRequest(query="q", documents=[pb.Document(text="d")], cache_mode=mode)
    assert to_call(request, {"m": info}, "m", Settings()).cache_mode == name
    usage = to_usage(pb.Usage(cached_flops=5.0, cache_hits=3, cache_resumed=1))
    assert (usage.cached_flops, usage.cache_hits, usage.cache_resumed) == (5.0, 3, 1)
    assert exit_reason_name(pb.EXIT_REASON_CACHE_HIT) == "cache_hit"


def test_states_over_the_entry_size_cap_are_not_stored(llama_model: MatryoshkaModel) -> None:
    store = MemoryStore()
    reranker = Reranker(llama_model, cache=LayerCache(store, key_space(llama_model), max_entry_bytes=100))
    reranker.rerank(QUERY, PASSAGES, Plan(depth=2))
    assert len(store) == 0
    assert reranker.rerank(QUERY, PASSAGES, Plan(depth=2)).usage.cache_hits == 0
