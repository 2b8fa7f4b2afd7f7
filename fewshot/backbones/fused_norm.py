"""Batch norm, an optional residual add, a 2x2 max-pool and a (leaky) ReLU as one fused CPU operation.

`norm_activation(x, norm, slope, pool)` computes ``act(pool(norm(x) [+ norm2(x2)]))``, the tail of a Conv-4 block
and of a ResNet-12 layer. On a CPU, with float32 or bfloat16 activations in channels-last memory, it runs the C++
kernels of ``fused_norm.cpp``: they read each activation twice in the forward pass and once in the backward,
where PyTorch's separate batch-norm, add, max-pool and activation kernels each make their own passes and the
max-pool keeps an int64 index per value. The values are those of the separate operations (each normalised value
is rounded to the activation's type before the add and the pool); batch statistics can differ from PyTorch's in
the last bits of float32, as the order of summation differs.

The kernels are compiled on first use with PyTorch's C++ extension loader (a C++ compiler is needed; the build
is cached). Where that fails, on other devices, and wherever the fused form does not apply (a batch norm in
evaluation mode with gradients, a momentum of None), the separate PyTorch operations run instead, with the same
results. ``FEWSHOT_FUSED_KERNELS=0`` in the environment, or `use_fused_kernels(False)`, turns the kernels off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

SOURCE = Path(__file__).with_name("fused_norm.cpp")
_FUSED_DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
_kernels: ModuleType | None = None
_load_failed = False
_enabled = os.environ.get("FEWSHOT_FUSED_KERNELS", "1") != "0"


def _cpu_signature() -> str:
    """What the compiled code depends on besides its source and flags: it is built for this CPU (-march=native)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name")):
                flags += line
    except OSError:
        flags = platform.processor()
    return flags


def fused_kernels() -> ModuleType | None:
    """The compiled kernels, built on first call; None (after one warning) where they cannot be built."""
    global _kernels, _load_failed
    if _kernels is not None or _load_failed:
        return _kernels
    with _lock:
        if _kernels is not None or _load_failed:
            return _kernels
        # Deferred: it imports setuptools and probes the toolchain. Its note that no CUDA runtime exists is not
        # news on a CPU, so its logger is quietened while it loads.
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            from torch.utils import cpp_extension
        finally:
            quiet.setLevel(level)

        source = SOURCE.read_bytes()
        flags = ["-O3", "-march=native", "-fopenmp"]
        digest = hashlib.sha256(source + " ".join(flags).encode() + _cpu_signature().encode()
                                + torch.__version__.encode()).hexdigest()[:16]
        try:
            _kernels = cpp_extension.load(
                name=f"fewshot_fused_norm_{digest}", sources=[str(SOURCE)],
                # OpenMP: at::parallel_for runs on PyTorch's own OpenMP threads (torch.set_num_threads) only in
                # code compiled with it; the libgomp PyTorch ships is the one loaded.
                extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as error:  # no compiler, no headers, a read-only cache: fall back to PyTorch's kernels
            _load_failed = True
            warnings.warn(f"the fused batch-norm kernels could not be built ({type(error).__name__}: {error}); "
                          "using PyTorch's separate kernels, which compute the same values more slowly", stacklevel=2)
    return _kernels


def fused_enabled() -> bool:
    """Whether `norm_activation` may use the fused kernels (see `use_fused_kernels`)."""
    return _enabled


@contextmanager
def use_fused_kernels(enabled: bool) -> Iterator[None]:
    """Within the block, `norm_activation` uses the fused kernels only if `enabled` (e.g. to time both paths)."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


class _FusedNormActivation(torch.autograd.Function):
    """act(pool(bn(x1) [+ bn(x2)])) with batch statistics given, and its gradients."""

    @staticmethod
    def forward(ctx, slope: float, pool: bool, x1: torch.Tensor, mean1: torch.Tensor, invstd1: torch.Tensor,
                weight1: torch.Tensor, bias1: torch.Tensor, x2: torch.Tensor | None, mean2: torch.Tensor | None,
                invstd2: torch.Tensor | None, weight2: torch.Tensor | None, bias2: torch.Tensor | None) -> torch.Tensor:
        kernels = fused_kernels()
        scale1, shift1 = affine_terms(mean1, invstd1, weight1, bias1)
        scale2, shift2 = (None, None) if x2 is None else affine_terms(mean2, invstd2, weight2, bias2)
        out, index, raw1, raw2 = kernels.norm_act_forward(x1, scale1, shift1, x2, scale2, shift2, slope, pool)
        ctx.slope, ctx.pool, ctx.two = slope, pool, x2 is not None
        ctx.weight_dtypes = (weight1.dtype, None if weight2 is None else weight2.dtype)
        ctx.save_for_backward(out, index, raw1, raw2, x1, mean1, invstd1, weight1.detach().float(),
                              *(() if x2 is None else (x2, mean2, invstd2, weight2.detach().float())))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, index, raw1, raw2, x1, mean1, invstd1, weight1, *second = ctx.saved_tensors
        x2, mean2, invstd2, weight2 = second if ctx.two else (None, None, None, None)
        grads = fused_kernels().norm_act_backward(
            grad.contiguous(memory_format=torch.channels_last), out, index, raw1, raw2, x1, mean1, invstd1, weight1,
            x2, mean2, invstd2, weight2, ctx.slope, ctx.pool)
        dx1, dweight1, dbias1 = grads[:3]
        dtype1, dtype2 = ctx.weight_dtypes
        first = (dx1, None, None, dweight1.to(dtype1), dbias1.to(dtype1))
        if not ctx.two:
            return (None, None, *first, None, None, None, None, None)
        dx2, dweight2, dbias2 = grads[3:]
        return (None, None, *first, dx2, None, None, dweight2.to(dtype2), dbias2.to(dtype2))


def affine_terms(mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor | None,
                 bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch norm as ``x * scale + shift``: float32 `scale` and `shift` from the statistics and affine parameters."""
    scale = invstd if weight is None else invstd * weight.detach().float()
    shift = -mean * scale if bias is None else bias.detach().float() - mean * scale
    return scale.contiguous(), shift.contiguous()


def _fusable(x: torch.Tensor, norm: nn.BatchNorm2d) -> bool:
    return (x.device.type == "cpu" and x.dtype in _FUSED_DTYPES and x.dim() == 4 and norm.affine
            and (norm.momentum is not None or not norm.training))


def _batch_statistics(x: torch.Tensor, norm: nn.BatchNorm2d,
                      kernels: ModuleType) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and inverse standard deviation of `x`'s batch, updating `norm`'s running statistics as its forward does."""
    mean, var = kernels.batch_stats(x)
    if norm.training and norm.track_running_stats:
        count = x.numel() // x.size(1)
        if count < 2:
            raise ValueError(f"batch norm in training needs more than one value per channel, got input of shape "
                             f"{tuple(x.shape)}")
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), norm.momentum)
            norm.running_var.lerp_((var * (count / (count - 1))).to(norm.running_var.dtype), norm.momentum)
    return mean, torch.rsqrt(var + norm.eps)


def _running_statistics(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    mean = norm.running_mean.float()
    return mean, torch.rsqrt(norm.running_var.float() + norm.eps)


def _separate(x1: torch.Tensor, norm1: nn.BatchNorm2d, slope: float, pool: bool, x2: torch.Tensor | None,
              norm2: nn.BatchNorm2d | None) -> torch.Tensor:
    """The same computation with PyTorch's separate kernels."""
    y = norm1(x1)
    if x2 is not None:
        y = y + norm2(x2)
    if pool:
        y = F.max_pool2d(y, 2)
    return F.relu(y) if slope == 0 else F.leaky_relu(y, slope)


def norm_activation(x1: torch.Tensor, norm1: nn.BatchNorm2d, slope: float = 0.0, pool: bool = False,
                    x2: torch.Tensor | None = None, norm2: nn.BatchNorm2d | None = None) -> torch.Tensor:
    """``act(pool(norm1(x1) [+ norm2(x2)]))``: a ReLU when `slope` is 0, else a leaky ReLU with that slope, after a
    2x2 max-pool (floor mode) when `pool`. `norm1` and `norm2` update their running statistics in training, as
    their own forward does. Fused on CPUs (see the module's docstring); PyTorch's separate kernels elsewhere."""
    if (x2 is None) != (norm2 is None):
        raise ValueError("norm_activation needs both x2 and norm2, or neither")
    use_batch = norm1.training or not norm1.track_running_stats
    fusable = (_enabled and _fusable(x1, norm1)
               and (x2 is None or (_fusable(x2, norm2) and x2.shape == x1.shape and x2.dtype == x1.dtype
                                   and (norm2.training or not norm2.track_running_stats) == use_batch))
               and (use_batch or not (torch.is_grad_enabled() and _needs_grad(x1, norm1, x2, norm2)))
               and (not pool or min(x1.shape[2:]) >= 2))
    kernels = fused_kernels() if fusable else None
    if kernels is None:
        return _separate(x1, norm1, slope, pool, x2, norm2)
    x1 = x1.contiguous(memory_format=torch.channels_last)
    x2 = None if x2 is None else x2.contiguous(memory_format=torch.channels_last)
    if not use_batch:  # evaluation with running statistics and no gradient: the forward kernel alone
        scale1, shift1 = affine_terms(*_running_statistics(norm1), norm1.weight, norm1.bias)
        scale2, shift2 = (None, None) if x2 is None else affine_terms(*_running_statistics(norm2), norm2.weight,
                                                                      norm2.bias)
        return kernels.norm_act_forward(x1, scale1, shift1, x2, scale2, shift2, float(slope), bool(pool))[0]
    mean1, invstd1 = _batch_statistics(x1.detach(), norm1, kernels)
    mean2, invstd2 = (None, None) if x2 is None else _batch_statistics(x2.detach(), norm2, kernels)
    return _FusedNormActivation.apply(
        float(slope), bool(pool), x1, mean1, invstd1, norm1.weight, norm1.bias,
        x2, mean2, invstd2, None if norm2 is None else norm2.weight, None if norm2 is None else norm2.bias)


def _needs_grad(x1: torch.Tensor, norm1: nn.Module, x2: torch.Tensor | None, norm2: nn.Module | None) -> bool:
    tensors = [x1, *norm1.parameters()] + ([] if x2 is None else [x2, *norm2.parameters()])
    return any(t.requires_grad for t in tensors)
