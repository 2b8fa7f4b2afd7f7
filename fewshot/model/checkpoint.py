"""Checkpoints: written atomically, read with weights-only unpickling, checked against the architecture."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fewshot.backbones import BACKBONES, initialisation_arguments
from fewshot.files import atomic_write, load_error_reason
from fewshot.model.network import FewShotModel, ModelSpec

FORMAT_VERSION = 1


def non_finite_tensors(value: Any, where: str = "") -> Iterator[str]:
    """Names (dotted paths) of the floating-point tensors in a nested state that hold NaN or inf."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            yield where or "tensor"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite_tensors(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from non_finite_tensors(item, f"{where}[{index}]")


def describe_names(names: list[str], limit: int = 5) -> str:
    """`a, b, c` for a few names, `a, b, ... (12 in all)` for many."""
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` atomically.

    Refuses (ValueError, nothing written) a state whose model or optimizer tensors hold NaN or inf: such a
    checkpoint would only give chance-level results, and it would replace a good one.
    """
    bad = [*non_finite_tensors(state.get("model", {}), "model"), *non_finite_tensors(state.get("optimizer", {}), "optimizer")]
    if bad:
        raise ValueError(f"refusing to write checkpoint {path}: {len(bad)} tensors hold NaN or inf ({describe_names(bad)})")
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    return atomic_write(path, lambda file: file.write(buffer.getvalue()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with weights-only unpickling; clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        # Not chained: torch's own message advises re-running with weights_only=False, which for a damaged or
        # untrusted file is exactly the unsafe thing to do. The reason is kept, without that advice.
        raise ValueError(f"checkpoint {path} is corrupt or not a fewshot checkpoint (not a checkpoint written by "
                         f"this project): {load_error_reason(error)}") from None
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise ValueError(f"checkpoint {path} is not a fewshot checkpoint (expected keys 'model' and 'spec')")
    return state


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, to identify the exact checkpoint a report was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(model: FewShotModel) -> str:
    """SHA-256 of a model's architecture and weights: equal exactly when two models embed alike. Unlike a
    checkpoint file's hash, it stays the same when metadata is added to the file (a stored threshold); a saved
    search index and a stored calibration are tied to it."""
    digest = hashlib.sha256(json.dumps(model.spec.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


#: Spec fields of old checkpoints that are learner arguments now.
LEGACY_SPEC_FIELDS = ("margin", "miner")


def spec_from_state(state: dict[str, Any], source: str | Path) -> ModelSpec:
    """The ModelSpec a checkpoint names (old-style specs included), or an error saying what is missing."""
    spec = dict(state["spec"])
    # Specs written before learners took arguments hold `margin` and `miner` as fields of their own.
    legacy = {key: spec.pop(key) for key in LEGACY_SPEC_FIELDS if key in spec}
    legacy = {key: value for key, value in legacy.items() if value is not None}
    if legacy:
        spec["learner_args"] = {**dict(spec.get("learner_args") or {}), **legacy}
    try:
        return ModelSpec(**spec)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint {source} names an architecture that cannot be built here: {error}. "
                         "A learner, distance or backbone defined outside fewshot must be registered (its module "
                         "imported) before the checkpoint is loaded") from error


def load_model_state(model: FewShotModel, state: dict[str, Any], source: str | Path) -> None:
    """Load weights into `model`, explaining an architecture mismatch instead of a raw key diff."""
    saved = spec_from_state(state, source)
    if saved != model.spec:
        differences = {
            key: (value, getattr(model.spec, key)) for key, value in saved.to_dict().items() if value != getattr(model.spec, key)
        }
        described = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in differences.items())
        raise ValueError(f"checkpoint {source} was saved from another architecture ({described})")
    bad = list(non_finite_tensors(state["model"]))
    if bad:  # a diverged run's weights: every prediction would be chance, with a confident-looking interval
        raise ValueError(f"checkpoint {source} holds non-finite weights (NaN or inf in {len(bad)} of {len(state['model'])} "
                         f"tensors: {describe_names(bad)}); it cannot give meaningful results. It comes from a run "
                         "whose training diverged: use an earlier checkpoint, or train again with a lower --lr")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {source} does not match the {saved.backbone} architecture: {error}") from error


def _backbone_architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """What fixes a backbone's weights: its registered name, its arguments (defaults filled in, so an
    argument given at its default value compares equal to one left out) and its input channels.
    Image size and normalisation are left out: they change no weight, so a backbone may be fine-tuned
    at another size or under a loss that does not normalise its embeddings; so are a pretrained backbone's
    starting weights (``weights``): --init replaces them."""
    defaults = ModelSpec()
    name = spec.get("backbone", defaults.backbone)
    arguments = dict(spec.get("backbone_args") or {})
    if name in BACKBONES:
        for key in initialisation_arguments(name):
            arguments.pop(key, None)
        for key, parameter in BACKBONES.parameters(name).items():
            if parameter.default is not parameter.empty:
                arguments.setdefault(key, parameter.default)
    return {"backbone": name, "backbone_args": arguments, "in_channels": spec.get("in_channels", defaults.in_channels)}


def load_backbone_state(model: FewShotModel, state: dict[str, Any], source: str | Path) -> None:
    """Load only the backbone of checkpoint `state` into `model` (pretrain, then fine-tune).

    The learner's parameters in the checkpoint (class proxies, a learned distance, a scale) are dropped:
    they belong to the pretraining loss and its classes. Refuses, with the reason, a checkpoint whose
    backbone differs in architecture (name, arguments, input channels, or any tensor's shape) or holds
    non-finite weights.
    """
    saved, wanted = _backbone_architecture(state["spec"]), _backbone_architecture(model.spec.to_dict())
    if saved != wanted:
        described = ", ".join(f"{key}: checkpoint {saved[key]!r} vs this run {wanted[key]!r}"
                              for key in saved if saved[key] != wanted[key])
        raise ValueError(f"--init {source} holds another backbone architecture ({described}); initialise from a "
                         "checkpoint of the same backbone, or train this one from scratch")
    prefix = "backbone."
    weights = {key[len(prefix):]: value for key, value in state["model"].items() if key.startswith(prefix)}
    own = model.backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    reshaped = [f"{key} {tuple(weights[key].shape)} vs {tuple(own[key].shape)}" for key in own
                if key in weights and weights[key].shape != own[key].shape]
    if missing or unexpected or reshaped:
        problems = [f"{label}: {describe_names(names)}" for label, names in
                    (("missing", missing), ("unexpected", unexpected), ("other shapes", reshaped)) if names]
        raise ValueError(f"--init {source}: its backbone weights do not fit the {model.spec.backbone} backbone "
                         f"({'; '.join(problems)})")
    bad = list(non_finite_tensors(weights, "backbone"))
    if bad:
        raise ValueError(f"--init {source} holds non-finite backbone weights ({describe_names(bad)}): it comes from a "
                         "run whose training diverged; initialise from an earlier checkpoint")
    model.backbone.load_state_dict(weights)


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[FewShotModel, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its weights (in eval mode)."""
    state = load_checkpoint(path)
    model = FewShotModel(spec_from_state(state, path), load_weights=False)  # the checkpoint holds every weight
    load_model_state(model, state, path)
    return model.to(device).eval(), state
