"""The pooled lens: self-distillation of a sentence encoder's shallow layers towards its last layer.

Under split-pair scoring (model/biencoder.py) a row's score at layer l is the cosine of the two sides'
mean-pooled states. The last layer's cosine is the bi-encoder's; shallower layers are weak because
their pooled states live in another space. A per-layer affine map `W_l x + b_l`, fitted so that the
L2-normalised pooled state of layer l lands on the normalised pooled state of the last layer (ridge
least squares, closed form), translates each shallow layer into the last layer's space. The fit
needs no labels and no pairs: every sentence (query or passage) of any corpus is a training example,
and each side of a split pair is exactly that sentence encoded alone.

Pooled states are computed once per text and cached on disk in chunks (`PooledCache`), so a run
killed part-way resumes where it stopped, and fits and evaluations reuse them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from matryoshka.model.biencoder import CosineScorer

CHUNK = 256  # texts per cache file


def pooled_states(
    hf_model: Any, tokenizer: Any, texts: Sequence[str], max_tokens: int, batch: int = 32
) -> Tensor:
    """(texts, layers, hidden) fp32 mean-pooled hidden states of every layer, each text encoded alone
    as "[CLS] text [SEP]" with at most `max_tokens` text tokens (the split-pair layout of one side)."""
    ids = [
        [tokenizer.cls_token_id, *t[:max_tokens], tokenizer.sep_token_id]
        for t in tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), int(hf_model.config.num_hidden_layers), int(hf_model.config.hidden_size))
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            input_ids[j, : len(ids[i])] = torch.tensor(ids[i])
            mask[j, : len(ids[i])] = 1
        with torch.no_grad():
            hidden = hf_model(
                input_ids=input_ids, attention_mask=mask, output_hidden_states=True
            ).hidden_states
        weights = mask.unsqueeze(-1).float()
        for layer, h in enumerate(hidden[1:]):
            out[rows, layer] = (h.float() * weights).sum(dim=1) / weights.sum(dim=1)
    return out


class PooledCache:
    """Pooled states of texts under `root`, keyed by each text's sha256, in chunk files of new texts.

    The folder is named by the backbone's sha256 and the token limit, so it never serves states of
    other weights or cuts. `get` computes only texts no chunk holds yet, CHUNK at a time, each chunk
    written atomically: a killed run loses at most the chunk it was computing.
    """

    def __init__(self, root: Path, backbone_sha: str, max_tokens: int) -> None:
        self.folder = root / f"{backbone_sha[:16]}-t{max_tokens}"
        self.max_tokens = max_tokens

    def _index(self) -> dict[str, Tensor]:
        index: dict[str, Tensor] = {}
        for file in sorted(self.folder.glob("chunk-*.safetensors")):
            tensors = load_file(file)
            keys = json.loads((file.with_suffix(".json")).read_text())
            index.update(zip(keys, tensors["pooled"].float(), strict=True))
        return index

    def get(self, hf_model: Any, tokenizer: Any, texts: Sequence[str], log: Any = None) -> Tensor:
        """(texts, layers, hidden) states of `texts`, computing and saving only the missing ones."""
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        index = self._index()
        missing = list({k: t for k, t in zip(keys, texts, strict=True) if k not in index}.items())
        for start in range(0, len(missing), CHUNK):
            part = missing[start : start + CHUNK]
            states = pooled_states(hf_model, tokenizer, [t for _, t in part], self.max_tokens)
            file = self.folder / f"chunk-{len(list(self.folder.glob('chunk-*.json'))):05d}.safetensors"
            file.with_suffix(".json").write_text(json.dumps([k for k, _ in part]))
            save_file({"pooled": states.half().contiguous()}, file.with_suffix(".tmp"))
            file.with_suffix(".tmp").rename(file)  # the chunk counts only once its tensors are whole
            index.update(zip([k for k, _ in part], states, strict=True))
            if log is not None:
                log(f"pooled {min(start + CHUNK, len(missing))}/{len(missing)} new texts")
        if not keys:
            return torch.zeros(0)
        return torch.stack([index[k] for k in keys])


def fit_pooled_lens(
    pooled: Tensor, layers: Sequence[int], ridge: float = 1e-2
) -> dict[int, tuple[Tensor, Tensor]]:
    """Per layer (1-based) the (weight (hidden, hidden), bias (hidden,)) of the ridge fit that maps the
    layer's normalised pooled states onto the last layer's normalised pooled states."""
    unit = torch.nn.functional.normalize(pooled.double(), dim=-1)
    target = unit[:, -1]
    fits = {}
    for layer in layers:
        x = torch.cat([unit[:, layer - 1], torch.ones(len(unit), 1, dtype=torch.float64)], dim=1)
        gram = x.T @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
        solution = torch.linalg.solve(gram, x.T @ target)  # (hidden + 1, hidden)
        fits[layer] = (solution[:-1].T.float().contiguous(), solution[-1].float().contiguous())
    return fits


def install_pooled_lens(scorer: CosineScorer, fits: dict[int, tuple[Tensor, Tensor]]) -> None:
    """Copy fitted maps (from `fit_pooled_lens`) into the scorer's lens."""
    with torch.no_grad():
        for layer, (weight, bias) in fits.items():
            linear: Any = scorer.lens[str(layer)]
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
