"""Trained artifacts: a directory with `manifest.json` and safetensors for heads and adapters.

    manifest.json            backbone (package, file, sha256), template, scoring, head layers,
                             calibration, adapter configs, training command + data hashes, metrics,
                             and the sha256 of every tensor file
    heads.safetensors        the scorer's trained tensors: per-layer heads, or the depth lens's
                             translators for query-likelihood scoring
    lora.safetensors         optional stage-1 LoRA (peft), merged into the backbone at load
    compensation.safetensors optional V-LoRA / H-LoRA (model/compensation.py), applied per row

Loading refuses a backbone whose weight file hash differs from the one trained on, and any tensor file
whose hash differs from the manifest's. The artifact hash (sha256 of the manifest bytes) joins the
backbone hash in the model fingerprint, so cached layer states never outlive the weights that made them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from matryoshka.model.biencoder import CosineScorer
from matryoshka.model.compensation import Compensation, CompensationConfig
from matryoshka.model.heads import HeadScorer, QueryLikelihoodScorer, Scorer
from matryoshka.model.loading import BACKBONES, LoadedBackbone, load_backbone, sha256_file
from matryoshka.model.matryoshka_model import MatryoshkaModel, PlanSpec

FORMAT = "matryoshka-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEADS_FILE = "heads.safetensors"
LORA_FILE = "lora.safetensors"
COMPENSATION_FILE = "compensation.safetensors"


SHIPPED = Path(__file__).resolve().parent.parent / "artifacts"


def shipped_artifact(backbone: str) -> Path | None:
    """The trained artifact that ships with this package for `backbone`, if there is one."""
    path = SHIPPED / backbone
    return path if (path / MANIFEST).is_file() else None


class ArtifactError(ValueError):
    """An artifact that cannot be loaded as asked: wrong backbone, corrupt or missing files."""


@dataclass
class LoraAdapter:
    """A stage-1 peft LoRA: its LoraConfig fields and its tensors (as peft names them)."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]


@dataclass
class Provenance:
    """How an artifact was made: the command, data file hashes, seeds and measured metrics."""

    command: str = ""
    data: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def apply_lora(hf_model: Any, adapter: LoraAdapter) -> Any:
    """Merge a stage-1 LoRA into a Hugging Face model's weights; returns the plain (unwrapped) model."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    peft_model = get_peft_model(hf_model, LoraConfig(**adapter.config))
    result: Any = set_peft_model_state_dict(peft_model, adapter.tensors)
    if result.unexpected_keys:
        raise ArtifactError(f"LoRA tensors not in the model: {sorted(result.unexpected_keys)[:3]}")
    return peft_model.merge_and_unload()


def save_artifact(
    model: MatryoshkaModel,
    path: Path,
    *,
    lora: LoraAdapter | None = None,
    provenance: Provenance | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Write `model`'s heads, calibration and adapters to `path`; returns the artifact hash."""
    scorer = model.scorer
    if model.name not in BACKBONES and model.fingerprint == "unversioned":
        raise ArtifactError("the model has no backbone fingerprint to pin the artifact to")
    path.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    heads = {k: v.detach().to(dtype).cpu().contiguous() for k, v in _trained(scorer).state_dict().items()}
    files[HEADS_FILE] = _save(heads, path / HEADS_FILE)
    compensation: Compensation | None = model.backbone.compensation
    if compensation is not None:
        tensors = {k: v.to(dtype) for k, v in compensation.adapter_state().items()}
        files[COMPENSATION_FILE] = _save(tensors, path / COMPENSATION_FILE)
    if lora is not None:
        files[LORA_FILE] = _save(
            {k: v.to(dtype).contiguous() for k, v in lora.tensors.items()}, path / LORA_FILE
        )
    calibration = scorer.calibration
    prov = provenance or Provenance()
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": {"name": model.name, "sha256": model.backbone_sha256},
        "template": {"name": model.template.name, "version": model.template.version},
        "scoring": scorer.name,
        "head_layers": list(scorer.head_layers),
        "lens_layers": _lens_layers(scorer),
        "calibration": {
            "version": model.calibration_version,
            "temperature": calibration.temperature.tolist(),
            "bias": calibration.bias.tolist(),
            **({"fusion": {str(k): v for k, v in sorted(model.fusion.items())}} if model.fusion else {}),
            **({"fusion_fitted_on": model.fusion_fitted_on} if model.fusion_fitted_on else {}),
        },
        "lora": lora.config if lora is not None else None,
        "compensation": _compensation_config(compensation),
        "plans": {name: spec.to_json() for name, spec in sorted(model.plans.items())},
        **({"budget_plan": model.budget_plan} if model.budget_plan is not None else {}),
        "training": {"command": prov.command, "data": prov.data, "settings": prov.settings},
        "metrics": prov.metrics,
        "files": files,
    }
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (path / MANIFEST).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the artifact at `path`, checked for format and version."""
    file = path / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{path}: not an artifact (no {MANIFEST})")
    try:
        manifest: dict[str, Any] = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{file}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: format {manifest.get('format')!r} v{manifest.get('version')}, "
            f"this build reads {FORMAT!r} v{FORMAT_VERSION}"
        )
    return manifest


def set_fusion(path: Path, weights: dict[int, float], fitted_on: str) -> None:
    """Store per-layer fusion weights (engine/fusion.py) in the calibration of the artifact at `path`."""
    manifest = read_manifest(path)
    unknown = sorted(set(weights) - set(manifest["head_layers"]))
    if unknown:
        raise ArtifactError(f"{path}: no head at layers {unknown}")
    manifest["calibration"]["fusion"] = {str(k): weights[k] for k in sorted(weights)}
    manifest["calibration"]["fusion_fitted_on"] = fitted_on
    (path / MANIFEST).write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")


def load_artifact(
    path: Path, *, dtype: torch.dtype = torch.float32, backbone: LoadedBackbone | None = None
) -> MatryoshkaModel:
    """Load an artifact onto its backbone (loaded from its package unless given) and check both."""
    manifest = read_manifest(path)
    want = manifest["backbone"]
    loaded = backbone or load_backbone(want["name"], dtype)
    if loaded.sha256 != want["sha256"]:
        raise ArtifactError(
            f"{path}: trained on backbone {want['name']} with weights sha256 {want['sha256'][:16]}..., "
            f"but the installed weights hash to {loaded.sha256[:16]}...; install the package version the "
            "artifact names or retrain"
        )
    tensors = {name: _load(path, name, sha) for name, sha in manifest["files"].items()}
    hf_model = loaded.model
    if manifest["lora"] is not None:
        hf_model = apply_lora(hf_model, LoraAdapter(manifest["lora"], tensors[LORA_FILE]))
    model = MatryoshkaModel.from_hf(
        want["name"],
        hf_model,
        loaded.tokenizer,
        scoring=manifest["scoring"],
        head_layers=manifest["head_layers"],
        lens_layers=manifest.get("lens_layers", []),
        fingerprint=loaded.sha256,
        template=manifest["template"]["name"],
    )
    if model.template.version != manifest["template"]["version"]:
        raise ArtifactError(
            f"{path}: template {manifest['template']['name']} version {manifest['template']['version']}, "
            f"this build has {model.template.version}"
        )
    scorer = model.scorer
    _trained(scorer).load_state_dict({k: v.float() for k, v in tensors[HEADS_FILE].items()})
    cal = manifest["calibration"]
    for layer, t, b in zip(scorer.head_layers, cal["temperature"], cal["bias"], strict=True):
        scorer.calibration.set(layer, t, b)
    if manifest["compensation"] is not None:
        spec = manifest["compensation"]
        config = CompensationConfig(
            rank=int(spec["rank"]),
            alpha=float(spec["alpha"]),
            ratios=tuple(float(r) for r in spec["ratios"]),
            targets=tuple(spec["targets"]),
        )
        compensation = Compensation(model.backbone, config)
        compensation.load_adapter_state({k: v.float() for k, v in tensors[COMPENSATION_FILE].items()})
        model.merge_ratios = config.ratios
    try:
        model.plans = {name: PlanSpec.from_json(spec) for name, spec in manifest.get("plans", {}).items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{path}: bad `plans` in the manifest ({exc})") from exc
    model.budget_plan = manifest.get("budget_plan")
    if model.budget_plan is not None and model.budget_plan not in model.plans:
        name = model.budget_plan
        raise ArtifactError(f"{path}: `budget_plan` {name!r} is not one of the manifest's `plans`")
    model.calibration_version = cal["version"]
    model.fusion = {int(layer): float(w) for layer, w in cal.get("fusion", {}).items()}
    model.fusion_fitted_on = cal.get("fusion_fitted_on")
    model.artifact_hash = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    model.to(loaded.model.device)
    model.eval()
    return model


def _trained(scorer: Scorer) -> torch.nn.Module:
    """The module holding what training gave a scorer: its heads, or its depth lens."""
    if isinstance(scorer, HeadScorer):
        return scorer.heads
    if isinstance(scorer, QueryLikelihoodScorer | CosineScorer):
        return scorer.lens
    raise ArtifactError(f"a {scorer.name} scorer has nothing trained to save")


def _lens_layers(scorer: Scorer) -> list[int]:
    """The layers a scorer reads through a trained lens (none for heads)."""
    if isinstance(scorer, QueryLikelihoodScorer):
        return list(scorer.lens.layers)
    if isinstance(scorer, CosineScorer):
        return list(scorer.lens_layers)
    return []


def _compensation_config(compensation: Compensation | None) -> dict[str, Any] | None:
    if compensation is None:
        return None
    c = compensation.config
    return {"rank": c.rank, "alpha": c.alpha, "ratios": list(c.ratios), "targets": list(c.targets)}


def _save(tensors: dict[str, Tensor], file: Path) -> str:
    save_file(tensors, file)
    return sha256_file(file)


def _load(path: Path, name: str, sha: str) -> dict[str, Tensor]:
    file = path / name
    if not file.is_file():
        raise ArtifactError(f"{file}: listed in the manifest but missing")
    if sha256_file(file) != sha:
        raise ArtifactError(f"{file}: sha256 differs from the manifest (corrupt or edited)")
    return load_file(file)
