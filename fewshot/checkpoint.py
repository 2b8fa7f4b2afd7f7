"""Checkpoints: written atomically, read with weights-only unpickling, checked against the architecture."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from fewshot.data.store import atomic_write
from fewshot.model import FewShotModel, ModelSpec

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) to `path` atomically."""
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
        raise ValueError(f"checkpoint {path} is corrupt or not a fewshot checkpoint: {error}") from error
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


def spec_from_state(state: dict[str, Any], source: str | Path) -> ModelSpec:
    """The ModelSpec a checkpoint names (old-style specs included), or an error saying what is missing."""
    try:
        return ModelSpec(**state["spec"])
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
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {source} does not match the {saved.backbone} architecture: {error}") from error


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[FewShotModel, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its weights (in eval mode)."""
    state = load_checkpoint(path)
    model = FewShotModel(spec_from_state(state, path))
    load_model_state(model, state, path)
    return model.to(device).eval(), state
