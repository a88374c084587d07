"""Published checkpoint families from a directory: the engine's score at every exit layer equals the
reference computation on the Hugging Face model's own full forward (fp32), for a padded batch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from matryoshka.engine.plan import Plan, WidthTarget
from matryoshka.engine.reranker import Reranker
from matryoshka.model.checkpoint import UnsupportedCheckpointError, load_checkpoint
from matryoshka.model.families.prompts import BGE_PROMPT, QWEN3_INSTRUCTION, QWEN3_SUFFIX, QWEN3_SYSTEM
from matryoshka.model.matryoshka_model import MatryoshkaModel
from matryoshka.model.prompt import Truncation
from tests.conftest import PASSAGES
from tests.unit import checkpoints
from tests.unit.lightweight_reference import lightweight_scores
from tests.unit.minicpm_reference import layerwise_scores

QUERY = "what is the capital of france"
TOL = 1e-4


def ids(text: str) -> list[int]:
    return list(checkpoints.tokenizer()(text, add_special_tokens=False)["input_ids"])


def engine_logits(model: MatryoshkaModel) -> dict[int, torch.Tensor]:
    """Scores at every head layer, the batch run one layer at a time."""
    state = model.embed(model.encode(QUERY, PASSAGES, Truncation()))
    assert state.mask.sum(dim=1).unique().numel() > 1, "the batch must be right-padded"
    out = {}
    with torch.no_grad():
        for layer in range(1, model.backbone.num_layers + 1):
            state = model.backbone.forward_layer(layer, state)
            if layer in model.scorer.head_layers:
                out[layer] = model.scorer.logits(state)
    return out


def cross_encoder_reference(hf: Any, passage: str) -> dict[int, float]:
    """[CLS] q [SEP] p [SEP] through BertForSequenceClassification; shallower layers via its head."""
    q, p = ids(QUERY), ids(passage)
    tok = checkpoints.tokenizer()
    input_ids = torch.tensor([[tok.cls_token_id, *q, tok.sep_token_id, *p, tok.sep_token_id]])
    types = torch.tensor([[0] * (len(q) + 2) + [1] * (len(p) + 1)])
    with torch.no_grad():
        out = hf(input_ids=input_ids, token_type_ids=types, output_hidden_states=True)
        scores = {}
        for layer in range(1, hf.config.num_hidden_layers + 1):
            pooled = hf.bert.pooler(out.hidden_states[layer])
            scores[layer] = float(hf.classifier(pooled)[0, 0])
    assert scores[hf.config.num_hidden_layers] == pytest.approx(float(out.logits[0, 0]), abs=1e-6)
    return scores


def roberta_reference(hf: Any, passage: str) -> dict[int, float]:
    """<s> q </s></s> p </s> through XLMRobertaForSequenceClassification (its own position ids)."""
    tok = checkpoints.tokenizer()
    cls, sep = tok.cls_token_id, tok.sep_token_id
    input_ids = torch.tensor([[cls, *ids(QUERY), sep, sep, *ids(passage), sep]])
    with torch.no_grad():
        out = hf(input_ids=input_ids, output_hidden_states=True)
        layers = hf.config.num_hidden_layers
        scores = {
            layer: float(hf.classifier(out.hidden_states[layer])[0, 0]) for layer in range(1, layers + 1)
        }
    assert scores[layers] == pytest.approx(float(out.logits[0, 0]), abs=1e-6)
    return scores


def decoder_reference(
    hf: Any, input_ids: list[int], read: Callable[[torch.Tensor], float]
) -> dict[int, float]:
    """The answer read-out of the last token's LM logits after every layer: HF's own logits at the
    last layer, its final norm + LM head (+ soft-cap, as its forward applies) below."""
    cap = getattr(hf.config, "final_logit_softcapping", None)

    def lm_logits(hidden: torch.Tensor) -> torch.Tensor:
        logits = hf.lm_head(hf.model.norm(hidden))
        return logits if cap is None else torch.tanh(logits / cap) * cap

    with torch.no_grad():
        out = hf(input_ids=torch.tensor([input_ids]), output_hidden_states=True)
        last = hf.config.num_hidden_layers
        scores = {layer: read(lm_logits(out.hidden_states[layer][0, -1])) for layer in range(1, last)}
        scores[last] = read(out.logits[0, -1])
    return scores


def bge_ids(passage: str) -> list[int]:
    """FlagEmbedding's layout: [bos] tok("A: q") tok("\\n") tok("B: p") tok("\\n") tok(prompt)."""
    bos = checkpoints.VOCAB["<bos>"]
    return [bos, *ids(f"A: {QUERY}"), *ids("\n"), *ids(f"B: {passage}"), *ids("\n"), *ids(BGE_PROMPT)]


def bge_reference(hf: Any, passage: str) -> dict[int, float]:
    """The "Yes" logit of the bge layout."""
    yes = ids("Yes")[0]
    return decoder_reference(hf, bge_ids(passage), lambda logits: float(logits[yes]))


def qwen3_reference(hf: Any, passage: str) -> dict[int, float]:
    """Qwen3-Reranker's layout, prefix "<Instruct>: ..\\n<Query>: ..\\n<Document>: .." suffix: yes - no."""
    body = f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: {passage}"
    input_ids = [*ids(QWEN3_SYSTEM), *ids(body), *ids(QWEN3_SUFFIX)]
    yes, no = checkpoints.VOCAB["yes"], checkpoints.VOCAB["no"]
    return decoder_reference(hf, input_ids, lambda logits: float(logits[yes] - logits[no]))


CASES = {
    "bert-cross-encoder": (
        checkpoints.bert_cross_encoder,
        "BertForSequenceClassification",
        cross_encoder_reference,
    ),
    "xlm-roberta-cross-encoder": (
        checkpoints.xlm_roberta_cross_encoder,
        "XLMRobertaForSequenceClassification",
        roberta_reference,
    ),
    "gemma-yes": (checkpoints.gemma, "GemmaForCausalLM", bge_reference),
    "gemma2-yes": (checkpoints.gemma2, "Gemma2ForCausalLM", bge_reference),
    "qwen3-yes-no": (checkpoints.qwen3, "Qwen3ForCausalLM", qwen3_reference),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_exit_layer_matches_the_reference(case: str, tmp_path: Path) -> None:
    make, arch, reference = CASES[case]
    directory = make(tmp_path / case)
    model = load_checkpoint(directory)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if "Sequence" in arch else AutoModelForCausalLM
    hf = auto.from_pretrained(directory, dtype=torch.float32).eval()
    ours = engine_logits(model)
    assert sorted(ours) == list(range(1, hf.config.num_hidden_layers + 1))
    for i, passage in enumerate(PASSAGES):
        theirs = reference(hf, passage)
        for layer, value in theirs.items():
            assert float(ours[layer][i]) == pytest.approx(value, abs=TOL), f"{case} layer {layer} row {i}"


MAKERS = {case: make for case, (make, _, _) in CASES.items()} | {
    "minicpm-layerwise": checkpoints.minicpm_layerwise
}


def test_layerwise_heads_match_the_published_math(tmp_path: Path) -> None:
    """Folding MiniCPM's scales into a Llama gives the published per-layer scores at every head layer."""
    directory = checkpoints.minicpm_layerwise(tmp_path / "lw", start_layer=2)
    model = load_checkpoint(directory)
    assert model.scorer.head_layers == (2, 3, 4)
    ours = engine_logits(model)
    for i, passage in enumerate(PASSAGES):
        for layer, value in layerwise_scores(directory, bge_ids(passage)).items():
            assert float(ours[layer][i]) == pytest.approx(value, abs=TOL), f"layer {layer} row {i}"


def test_layerwise_variants_without_simple_heads_are_refused(tmp_path: Path) -> None:
    directory = checkpoints.minicpm_layerwise(tmp_path / "lw")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "head_type": "raw"}))
    with pytest.raises(UnsupportedCheckpointError, match="head_type 'simple'"):
        load_checkpoint(directory)


@pytest.mark.parametrize("case", sorted(MAKERS))
def test_the_engine_serves_the_checkpoint_at_any_depth(case: str, tmp_path: Path) -> None:
    make = MAKERS[case]
    model = load_checkpoint(make(tmp_path / case), name="mine")
    reranker = Reranker(model)
    assert reranker.info.name == "mine"
    assert reranker.info.fingerprint == model.fingerprint
    assert len(model.fingerprint) == 64
    by_layer = engine_logits(model)
    for depth in model.scorer.head_layers:
        result = reranker.rerank(QUERY, PASSAGES, Plan(depth=depth), score_type="logit")
        for r in result.results:
            assert r.exit_layer == depth
            assert r.score == pytest.approx(float(by_layer[depth][r.index]), abs=TOL)


def test_gemma2_sliding_window_layers_mask_their_window(tmp_path: Path) -> None:
    """A window shorter than the rows: sliding layers must see only their window, like HF's forward."""
    directory = checkpoints.gemma2(tmp_path / "g", sliding_window=8)
    model = load_checkpoint(directory)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ours = engine_logits(model)
    for i, passage in enumerate(PASSAGES):
        for layer, value in bge_reference(hf, passage).items():
            assert float(ours[layer][i]) == pytest.approx(value, abs=TOL)


def test_two_label_classifier_scores_label_one_minus_label_zero(tmp_path: Path) -> None:
    model = load_checkpoint(checkpoints.bert_cross_encoder(tmp_path / "b2", num_labels=2))
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b2").eval()
    ours = engine_logits(model)[3]
    tok = checkpoints.tokenizer()
    q, p = ids(QUERY), ids(PASSAGES[0])
    input_ids = torch.tensor([[tok.cls_token_id, *q, tok.sep_token_id, *p, tok.sep_token_id]])
    types = torch.tensor([[0] * (len(q) + 2) + [1] * (len(p) + 1)])
    with torch.no_grad():
        logits = hf(input_ids=input_ids, token_type_ids=types).logits[0]
    assert float(ours[0]) == pytest.approx(float(logits[1] - logits[0]), abs=TOL)


def test_unsupported_directories_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedCheckpointError, match=r"no config\.json"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(
        json.dumps({"architectures": ["T5ForConditionalGeneration"]})
    )
    with pytest.raises(
        UnsupportedCheckpointError, match=r"unsupported architecture.*BertForSequenceClassification"
    ):
        load_checkpoint(tmp_path / "t5")


@pytest.mark.parametrize(
    ("case", "layer"), [("gemma2-sliding", 1), ("gemma2-sliding", 2), ("qwen3", 1), ("qwen3", 3)]
)
def test_anchor_attention_matches_eager_attention(case: str, layer: int, tmp_path: Path) -> None:
    """Width merging's importance row (soft-capped, windowed, q/k-normed) equals the eager attention's."""
    directory = (
        checkpoints.gemma2(tmp_path / case, sliding_window=8)
        if case.startswith("gemma2")
        else checkpoints.qwen3(tmp_path / case)
    )
    model = load_checkpoint(directory)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    state = model.embed(model.encode(QUERY, PASSAGES, Truncation()))
    with torch.no_grad():
        for step in range(1, layer):
            state = model.backbone.forward_layer(step, state)
        ours = model.backbone.anchor_attention(layer, state)
        first = model.embed(model.encode(QUERY, PASSAGES, Truncation()))
        out = hf(
            input_ids=torch.where(first.mask, first.token_ids, 0),
            attention_mask=first.mask.long(),
            output_attentions=True,
        )
    rows = torch.arange(state.batch_size)
    theirs = out.attentions[layer - 1].mean(dim=1)[rows, state.lengths - 1]
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)


def test_from_checkpoint_names_the_model_after_its_directory(tmp_path: Path) -> None:
    reranker = Reranker.from_checkpoint(checkpoints.qwen3(tmp_path / "my-qwen3"), dtype="float32")
    assert reranker.info.name == "my-qwen3"
    assert reranker.model.backbone.device == torch.device("cpu")
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        Reranker.from_checkpoint(tmp_path / "my-qwen3", dtype="int8")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_device_setting_accepts_cpu_and_cuda(device: str) -> None:
    from matryoshka.server.settings import Settings

    assert Settings(device=device).device == device


def test_device_setting_rejects_other_names() -> None:
    from pydantic import ValidationError

    from matryoshka.server.settings import Settings

    with pytest.raises(ValidationError, match="device"):
        Settings(device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", sorted(MAKERS))
def test_cuda_scores_match_cpu_scores(case: str, tmp_path: Path) -> None:
    make = MAKERS[case]
    directory = make(tmp_path / case)
    cpu = Reranker(load_checkpoint(directory))
    gpu = Reranker(load_checkpoint(directory, device="cuda"))
    assert gpu.model.backbone.device.type == "cuda"
    plan = Plan(width={1: WidthTarget(ratio=2.0)})
    for a, b in zip(
        cpu.rerank(QUERY, PASSAGES, plan, score_type="logit").results,
        gpu.rerank(QUERY, PASSAGES, plan, score_type="logit").results,
        strict=True,
    ):
        assert a.index == b.index
        assert a.score == pytest.approx(b.score, abs=1e-3)


@pytest.mark.parametrize(
    ("width", "ratio"),
    [({}, 1), ({1: 2}, 2), ({2: 4}, 4), ({1: 2, 2: 2}, 2), ({1: 8}, 8)],
    ids=["uncompressed", "2x@1", "4x@2", "2x@1,2", "8x@1"],
)
def test_lightweight_compression_matches_the_published_forward(
    width: dict[int, int], ratio: int, tmp_path: Path
) -> None:
    """compress_layers + compress_ratio as width steps, cutoff layers as depths: the published scores."""
    directory = checkpoints.gemma2_lightweight(tmp_path / "lightweight", start_layer=1)
    reranker = Reranker(load_checkpoint(directory))
    assert reranker.info.merge_ratios == (2.0, 4.0, 8.0)
    plan_width = {layer: WidthTarget(ratio=float(r)) for layer, r in width.items()}
    query_len = 1 + len(ids(f"A: {QUERY}")) + len(ids("\n"))
    prompt_len = len(ids("\n")) + len(ids(BGE_PROMPT))
    references = [
        lightweight_scores(directory, bge_ids(p), (query_len, prompt_len), sorted(width), ratio)
        for p in PASSAGES
    ]
    for depth in reranker.info.head_layers:
        steps = {layer: t for layer, t in plan_width.items() if layer < depth}
        if len(steps) != len(plan_width):
            continue  # the published forward compresses at a layer only when it runs past it
        result = reranker.rerank(QUERY, PASSAGES, Plan(depth=depth, width=steps), score_type="logit")
        for r in result.results:
            # Tighter than TOL: on a tiny random model, importance-weighted pooling is only ~3e-5 away.
            expected = references[r.index][depth]
            assert r.score == pytest.approx(expected, abs=5e-6), f"depth {depth} row {r.index}"
