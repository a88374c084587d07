"""Width compression: importance-aware merging of passage tokens on real and hand-built layer states."""

from __future__ import annotations

import math

import pytest
import torch

from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from matryoshka.model.state import LayerState, Segment
from matryoshka.model.width import Merge, WidthTarget, apply_merge, merge_rows, merge_width, plan_merge
from tests.conftest import PASSAGES

QUERY = "where is paris"
MODELS = ["llama_model", "bert_model"]
P, Q, X = int(Segment.PROMPT), int(Segment.QUERY), int(Segment.PASSAGE)


# --- helpers ---


def real_state(model: MatryoshkaModel, passages: list[str]) -> tuple[LayerState, torch.Tensor]:
    """The layer-0 state of (QUERY, passages) and the anchor's attention row in layer 1."""
    with torch.no_grad():
        state = model.embed(model.encode(QUERY, passages, Truncation()))
        attention = model.backbone.anchor_attention(1, state)
    return state, attention


def hand_state(rows: list[list[int]], hidden_size: int = 3, seed: int = 0) -> LayerState:
    """A right-padded float32 state from per-row segment lists; token ids are 100 + 10 * row + position."""
    width = max(len(r) for r in rows)
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(rows), width, hidden_size, generator=gen)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    segments = torch.zeros(len(rows), width, dtype=torch.int8)
    token_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        mask[i, : len(r)] = True
        segments[i, : len(r)] = torch.tensor(r, dtype=torch.int8)
        token_ids[i, : len(r)] = 100 + 10 * i + torch.arange(len(r))
    hidden = hidden * mask.unsqueeze(-1)
    return LayerState(hidden=hidden, mask=mask, segments=segments, token_ids=token_ids, layer=3)


def layout(n_query: int, n_passage: int, n_after: int = 2) -> list[int]:
    """The relevance template's shape: prompt, query, prompt, passage, prompt tail."""
    return [P, *[Q] * n_query, P, *[X] * n_passage, *[P] * n_after]


def n_passage(state: LayerState) -> list[int]:
    return (state.segments == Segment.PASSAGE).sum(dim=1).tolist()


def groups(merge: Merge, row: int) -> list[list[int]]:
    """Token indices of each merged-row slot, in order."""
    g = merge.group[row]
    return [torch.nonzero(g == j).flatten().tolist() for j in range(int(merge.new_lengths[row]))]


def assert_right_padded_with_fresh_positions(state: LayerState) -> None:
    lengths = state.lengths
    width = state.hidden.shape[1]
    assert width == int(lengths.max())
    expected_mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    assert torch.equal(state.mask, expected_mask)
    assert torch.equal(state.positions, torch.arange(width).unsqueeze(0).expand(state.batch_size, width))
    assert (state.segments[~state.mask] == Segment.PAD).all()
    assert (state.token_ids[~state.mask] == -1).all()
    assert (state.segments[state.mask] != Segment.PAD).all()


# --- identity ---


@pytest.mark.parametrize("fixture", MODELS)
def test_target_equal_to_passage_length_is_the_identity(fixture: str, request: pytest.FixtureRequest) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    for target in (WidthTarget(ratio=1.0), WidthTarget(length=int(state.lengths.max()))):
        assert merge_width(state, attention, target) is state

    merge = plan_merge(state, attention, (state.segments == Segment.PASSAGE).sum(dim=1))
    assert torch.equal(merge.new_lengths, state.lengths)
    assert torch.equal(merge.weight, state.mask.float())
    expected_group = torch.where(state.mask, torch.arange(state.mask.shape[1]).unsqueeze(0), -1)
    assert torch.equal(merge.group, expected_group)
    out = apply_merge(state, merge)
    assert torch.equal(out.hidden[out.mask], state.hidden[state.mask])
    assert torch.equal(out.mask, state.mask)
    assert torch.equal(out.segments, state.segments)
    assert torch.equal(out.token_ids, state.token_ids)


def test_rows_already_at_target_are_untouched_in_a_merged_batch() -> None:
    state = hand_state([layout(2, 3), layout(2, 8)])
    attention = torch.rand(state.mask.shape, generator=torch.Generator().manual_seed(1)) * state.mask
    out = merge_width(state, attention, WidthTarget(length=state.lengths[0].item()))
    assert out is not state
    assert out.lengths.tolist() == [state.lengths[0].item()] * 2
    n = int(state.lengths[0])
    assert torch.equal(out.hidden[0, :n], state.hidden[0, :n])
    assert torch.equal(out.token_ids[0, :n], state.token_ids[0, :n])


# --- pooling weights ---


@pytest.mark.parametrize("fixture", MODELS)
def test_pooling_weights_are_attention_renormalised_within_each_group(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    is_passage = state.segments == Segment.PASSAGE
    merged_groups = 0
    for target in (WidthTarget(ratio=2.0), WidthTarget(ratio=3.0), WidthTarget(length=10)):
        merge = plan_merge(state, attention, target.passage_targets(state))
        assert (merge.weight[~state.mask] == 0).all()
        assert (merge.group[~state.mask] == -1).all()
        for row in range(state.batch_size):
            for members in groups(merge, row):
                idx = torch.tensor(members)
                w = merge.weight[row, idx]
                if len(members) == 1:
                    assert w.item() == 1.0
                    continue
                merged_groups += 1
                assert is_passage[row, idx].all(), "only passage tokens are ever merged"
                assert members == list(range(members[0], members[-1] + 1)), "a group is a consecutive window"
                torch.testing.assert_close(w.sum(), torch.tensor(1.0))
                a = attention[row, idx]
                torch.testing.assert_close(w, a / a.sum())
    assert merged_groups > 0


@pytest.mark.parametrize("fixture", MODELS)
def test_merged_hidden_is_the_weighted_sum_of_its_group(fixture: str, request: pytest.FixtureRequest) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    merge = plan_merge(state, attention, WidthTarget(ratio=2.5).passage_targets(state))
    out = apply_merge(state, merge)
    for row in range(state.batch_size):
        for j, members in enumerate(groups(merge, row)):
            idx = torch.tensor(members)
            expected = (state.hidden[row, idx] * merge.weight[row, idx].unsqueeze(-1)).sum(dim=0)
            torch.testing.assert_close(out.hidden[row, j], expected)


def test_pooling_weights_of_a_hand_built_window() -> None:
    # 4 passage tokens to 2 -> windows of 2: [a, b], [c, d]; both must merge.
    state = hand_state([layout(1, 4, 1)])
    attention = torch.tensor([[0.1, 0.1, 0.1, 0.3, 0.1, 0.2, 0.0, 0.1]])
    merge = plan_merge(state, attention, torch.tensor([2]))
    assert groups(merge, 0) == [[0], [1], [2], [3, 4], [5, 6], [7]]
    torch.testing.assert_close(merge.weight[0, 3:5], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(merge.weight[0, 5:7], torch.tensor([1.0, 0.0]))
    out = apply_merge(state, merge)
    torch.testing.assert_close(out.hidden[0, 3], 0.75 * state.hidden[0, 3] + 0.25 * state.hidden[0, 4])
    torch.testing.assert_close(out.hidden[0, 4], state.hidden[0, 5])


def test_zero_attention_window_still_pools_to_a_distribution() -> None:
    state = hand_state([layout(1, 4, 1)])
    attention = torch.tensor([[0.5, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]])
    merge = plan_merge(state, attention, torch.tensor([2]))
    w = merge.weight[0]
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[3:5].sum(), torch.tensor(1.0))
    torch.testing.assert_close(w[5:7].sum(), torch.tensor(1.0))


# --- what survives ---


@pytest.mark.parametrize("fixture", MODELS)
def test_query_and_prompt_tokens_survive_unchanged_in_order(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    for target in (WidthTarget(ratio=2.0), WidthTarget(ratio=4.0), WidthTarget(length=1)):
        out = merge_width(state, attention, target)
        assert out is not state
        for row in range(state.batch_size):
            before, after = state.row(row), out.row(row)
            keep_before = before.segments != Segment.PASSAGE
            keep_after = after.segments != Segment.PASSAGE
            assert {int(s) for s in before.segments[keep_before]} <= {P, Q}
            assert (after.segments == Segment.QUERY).any()
            assert torch.equal(after.segments[keep_after], before.segments[keep_before])
            assert torch.equal(after.token_ids[keep_after], before.token_ids[keep_before])
            assert torch.equal(after.hidden[keep_after], before.hidden[keep_before])
            # The passage is still one contiguous block at the same place in the template.
            first = int(torch.nonzero(before.segments == Segment.PASSAGE)[0])
            kept = int((after.segments == Segment.PASSAGE).sum())
            expected_segments = torch.cat(
                [
                    before.segments[:first],
                    torch.full((kept,), X, dtype=torch.int8),
                    before.segments[keep_before][first:],
                ]
            )
            assert torch.equal(after.segments, expected_segments), f"{target} row {row}"


@pytest.mark.parametrize("fixture", MODELS)
def test_merged_tokens_get_id_minus_one_and_kept_tokens_keep_theirs(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    merge = plan_merge(state, attention, WidthTarget(ratio=1.5).passage_targets(state))
    out = apply_merge(state, merge)
    assert (state.token_ids[state.mask] >= 0).all()
    saw_kept_passage = False
    for row in range(state.batch_size):
        for j, members in enumerate(groups(merge, row)):
            if len(members) > 1:
                assert out.token_ids[row, j].item() == -1
            else:
                assert out.token_ids[row, j].item() == state.token_ids[row, members[0]].item()
                saw_kept_passage |= bool(state.segments[row, members[0]] == Segment.PASSAGE)
    assert saw_kept_passage, "ratio 1.5 must leave some passage tokens unmerged"
    assert (out.token_ids[~out.mask] == -1).all()


@pytest.mark.parametrize("fixture", MODELS)
def test_merged_state_is_right_padded_with_positions_from_zero(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    out = merge_width(state, attention, WidthTarget(ratio=3.0))
    assert_right_padded_with_fresh_positions(out)
    assert out.layer == state.layer
    assert out.hidden.dtype == state.hidden.dtype
    assert out.aux == {}
    assert out.hidden.shape[1] < state.hidden.shape[1]


# --- exact targets ---


@pytest.mark.parametrize("fixture", MODELS)
def test_ratio_targets_are_reached_exactly(fixture: str, request: pytest.FixtureRequest) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    before = n_passage(state)
    non_passage = [length - n for length, n in zip(state.lengths.tolist(), before, strict=True)]
    for ratio in (1.5, 2.0, 3.0, 4.0):
        expected = [max(1, math.ceil(n / ratio)) for n in before]
        assert WidthTarget(ratio=ratio).passage_targets(state).tolist() == expected, f"ratio {ratio}"
        out = merge_width(state, attention, WidthTarget(ratio=ratio))
        assert n_passage(out) == expected, f"ratio {ratio}"
        assert out.lengths.tolist() == [a + b for a, b in zip(non_passage, expected, strict=True)]
        assert_right_padded_with_fresh_positions(out)


@pytest.mark.parametrize("fixture", MODELS)
def test_every_length_target_is_reached_exactly(fixture: str, request: pytest.FixtureRequest) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    lengths = state.lengths.tolist()
    floor = [length - n + 1 for length, n in zip(lengths, n_passage(state), strict=True)]
    for target in range(1, max(lengths) + 3):
        out = merge_width(state, attention, WidthTarget(length=target))
        expected = [min(length, max(target, f)) for length, f in zip(lengths, floor, strict=True)]
        assert out.lengths.tolist() == expected, f"length target {target}"
        assert (torch.tensor(n_passage(out)) >= 1).all()


@pytest.mark.parametrize("n", range(1, 26))
def test_every_passage_target_is_reached_exactly_hand_built(n: int) -> None:
    state = hand_state([layout(2, n)], seed=n)
    attention = torch.rand(state.mask.shape, generator=torch.Generator().manual_seed(n))
    for target in range(1, n + 1):
        out = apply_merge(state, plan_merge(state, attention, torch.tensor([target])))
        assert n_passage(out) == [target], f"{n} passage tokens to {target}"
        assert out.lengths.tolist() == [state.lengths.item() - n + target]


@pytest.mark.parametrize("fixture", MODELS)
def test_length_below_query_and_prompt_clamps_to_one_passage_token(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    state, attention = real_state(model, PASSAGES)
    assert min(n_passage(state)) >= 2
    fixed = [length - n for length, n in zip(state.lengths.tolist(), n_passage(state), strict=True)]
    for target in (WidthTarget(length=1), WidthTarget(length=min(fixed))):
        assert target.passage_targets(state).tolist() == [1] * state.batch_size
        out = merge_width(state, attention, target)
        assert n_passage(out) == [1] * state.batch_size
        assert out.lengths.tolist() == [f + 1 for f in fixed]
        # Every passage has at least two tokens, so the single passage token left is a pooled one.
        assert (out.token_ids[out.segments == Segment.PASSAGE] == -1).all()


def test_passage_targets_never_grow_a_row_and_never_go_below_one() -> None:
    state = hand_state([layout(2, 2), layout(2, 9)])
    assert WidthTarget(ratio=4.0).passage_targets(state).tolist() == [1, 3]
    assert WidthTarget(ratio=1.0).passage_targets(state).tolist() == [2, 9]
    assert WidthTarget(length=10).passage_targets(state).tolist() == [2, 4]
    assert WidthTarget(length=100).passage_targets(state).tolist() == [2, 9]
    assert WidthTarget(length=0).passage_targets(state).tolist() == [1, 1]


# --- which windows ---


def test_lowest_importance_windows_are_merged() -> None:
    # 6 passage tokens (indices 3..8) to 4: windows of 2 with importance 0.2, 0.6, 0.1 -> merge 1st and 3rd.
    state = hand_state([layout(1, 6, 1)])
    attention = torch.tensor([[0.02, 0.02, 0.01, 0.1, 0.1, 0.3, 0.3, 0.05, 0.05, 0.05]])
    merge = plan_merge(state, attention, torch.tensor([4]))
    assert groups(merge, 0) == [[0], [1], [2], [3, 4], [5], [6], [7, 8], [9]]
    out = apply_merge(state, merge)
    assert out.token_ids[0].tolist() == [100, 101, 102, -1, 105, 106, -1, 109]


def test_only_the_least_important_window_merges_when_one_suffices() -> None:
    state = hand_state([layout(1, 6, 1)])
    attention = torch.tensor([[0.02, 0.02, 0.01, 0.2, 0.2, 0.04, 0.06, 0.3, 0.1, 0.05]])
    merge = plan_merge(state, attention, torch.tensor([5]))
    assert groups(merge, 0) == [[0], [1], [2], [3], [4], [5, 6], [7], [8], [9]]


def test_last_chosen_window_merges_only_the_tokens_still_needed() -> None:
    # 9 passage tokens (indices 3..11) to 4: windows of 3 with importance 0.6, 0.09, 0.15; 5 to remove.
    # The two least important windows save 2 each; the most important merges only its first 2 tokens.
    state = hand_state([layout(1, 9, 1)])
    attention = torch.tensor([[0.04, 0.04, 0.08, 0.1, 0.2, 0.3, 0.03, 0.03, 0.03, 0.05, 0.05, 0.05, 0.04]])
    merge = plan_merge(state, attention, torch.tensor([4]))
    assert groups(merge, 0) == [[0], [1], [2], [3, 4], [5], [6, 7, 8], [9, 10, 11], [12]]
    torch.testing.assert_close(merge.weight[0, 3:5], torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(merge.weight[0, 6:9], torch.full((3,), 1 / 3))
    assert merge.weight[0, 5].item() == 1.0


def test_query_and_prompt_attention_does_not_steer_window_choice() -> None:
    base = torch.tensor([[0.0, 0.0, 0.0, 0.1, 0.1, 0.3, 0.3, 0.05, 0.05, 0.0]])
    state = hand_state([layout(1, 6, 1)])
    noisy = base.clone()
    noisy[0, [0, 1, 2, 9]] = torch.tensor([0.9, 0.5, 0.7, 0.8])
    a = plan_merge(state, base, torch.tensor([4]))
    b = plan_merge(state, noisy, torch.tensor([4]))
    assert torch.equal(a.group, b.group)
    torch.testing.assert_close(a.weight, b.weight)


# --- batching ---


@pytest.mark.parametrize("fixture", MODELS)
def test_a_row_merges_the_same_alone_and_in_a_padded_batch(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    model: MatryoshkaModel = request.getfixturevalue(fixture)
    batch, batch_attention = real_state(model, PASSAGES)
    assert len(set(batch.lengths.tolist())) > 1, "the batch must be right-padded"
    targets = (WidthTarget(ratio=2.0), WidthTarget(ratio=3.0), WidthTarget(length=14), WidthTarget(length=9))
    merged_batches = [merge_width(batch, batch_attention, target) for target in targets]
    for i, passage in enumerate(PASSAGES):
        alone, alone_attention = real_state(model, [passage])
        n = int(alone.lengths[0])
        assert n == int(batch.lengths[i])
        torch.testing.assert_close(alone_attention[0], batch_attention[i, :n])
        for target, merged_batch in zip(targets, merged_batches, strict=True):
            a, b = merge_width(alone, alone_attention, target).row(0), merged_batch.row(i)
            assert a.length == b.length, f"{target} row {i}"
            assert torch.equal(a.token_ids, b.token_ids), f"{target} row {i}"
            assert torch.equal(a.segments, b.segments), f"{target} row {i}"
            torch.testing.assert_close(a.hidden, b.hidden)


def test_hand_built_row_merges_the_same_alone_and_in_a_padded_batch() -> None:
    short, long = layout(2, 7), layout(3, 15, 4)
    batch = hand_state([short, long, layout(1, 4)], seed=5)
    gen = torch.Generator().manual_seed(6)
    attention = torch.rand(batch.mask.shape, generator=gen) * batch.mask
    # Garbage in the padding must not matter.
    batch.hidden[~batch.mask] = 1e3
    attention_garbage = torch.where(batch.mask, attention, torch.tensor(5.0))
    n = len(short)
    alone = LayerState(
        hidden=batch.hidden[:1, :n].clone(),
        mask=batch.mask[:1, :n].clone(),
        segments=batch.segments[:1, :n].clone(),
        token_ids=batch.token_ids[:1, :n].clone(),
        layer=batch.layer,
    )
    for target in (WidthTarget(ratio=2.0), WidthTarget(ratio=3.0), WidthTarget(length=8)):
        a = merge_width(alone, attention[:1, :n], target).row(0)
        b = merge_width(batch, attention_garbage, target).row(0)
        assert a.length == b.length
        assert torch.equal(a.token_ids, b.token_ids)
        assert torch.equal(a.segments, b.segments)
        torch.testing.assert_close(a.hidden, b.hidden)
        assert torch.isfinite(b.hidden).all()


# --- invalid targets ---


@pytest.mark.parametrize(
    "target",
    [
        WidthTarget(ratio=0.5),
        WidthTarget(ratio=0.0),
        WidthTarget(ratio=-2.0),
        WidthTarget(ratio=math.nan),
        WidthTarget(ratio=math.inf),
        WidthTarget(),
        WidthTarget(ratio=2.0, length=5),
    ],
    ids=["half", "zero", "negative", "nan", "inf", "neither", "both"],
)
def test_invalid_targets_raise_value_error(target: WidthTarget) -> None:
    state = hand_state([layout(2, 6)])
    attention = torch.full(state.mask.shape, 1.0 / state.mask.shape[1])
    with pytest.raises(ValueError, match="ratio"):
        target.passage_targets(state)
    with pytest.raises(ValueError, match="ratio"):
        merge_width(state, attention, target)


def test_uniform_windows_pool_runs_of_k_into_their_mean() -> None:
    """A trained compressor's windows: 4 + 1 for a 5-token passage at ratio 4, plain means, prompt kept."""
    segments = torch.tensor([[Segment.QUERY] + [Segment.PASSAGE] * 5 + [Segment.PROMPT]], dtype=torch.int8)
    hidden = torch.arange(7, dtype=torch.float32).reshape(1, 7, 1)
    state = LayerState(
        hidden=hidden,
        mask=torch.ones(1, 7, dtype=torch.bool),
        segments=segments,
        token_ids=torch.zeros(1, 7).long(),
        layer=1,
    )
    merged = merge_rows(state, None, [WidthTarget(ratio=4.0)], uniform=True)
    assert merged.hidden[0, :, 0].tolist() == [0.0, 2.5, 5.0, 6.0]
    assert merged.segments[0].tolist() == [Segment.QUERY, Segment.PASSAGE, Segment.PASSAGE, Segment.PROMPT]
    assert merge_rows(state, None, [None], uniform=True) is state
