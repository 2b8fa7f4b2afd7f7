"""Device names as the CLIs and the API take them."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` picks CUDA when present; `cpu` and `cuda[:N]` are taken as given (checked)."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA, but torch sees no CUDA device; use cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto")
    return torch.device(name)
