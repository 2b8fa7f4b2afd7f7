"""The fused batch-norm kernels give PyTorch's separate operations' values and gradients, on any thread count."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from fewshot.backbones.fused_norm import fused_kernels, norm_activation, use_fused_kernels
from fewshot.model.network import FewShotModel, ModelSpec


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if fused_kernels() is None:
        pytest.skip("the fused kernels cannot be built here (no C++ compiler)")


def norms(channels: int, seed: int) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    generator = torch.Generator().manual_seed(seed)
    pair = (nn.BatchNorm2d(channels), nn.BatchNorm2d(channels))
    with torch.no_grad():
        for norm in pair:  # negative scales too: the pooled maximum of a negatively scaled channel is its minimum
            norm.weight.copy_(torch.empty(channels).uniform_(-1.5, 1.5, generator=generator))
            norm.bias.copy_(torch.empty(channels).uniform_(-0.5, 0.5, generator=generator))
            norm.running_mean.uniform_(-0.2, 0.2, generator=generator)
    return pair


def run(fused: bool, x1, x2, pair, slope, pool, grad_seed=1):
    """Output, input / parameter gradients and running statistics of one training forward and backward."""
    norm1, norm2 = copy.deepcopy(pair)
    a = x1.clone().requires_grad_()
    b = None if x2 is None else x2.clone().requires_grad_()
    with use_fused_kernels(fused):
        y = norm_activation(a, norm1, slope, pool, b, None if x2 is None else norm2)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y.dtype)
    y.backward(grad)
    results = {"y": y, "dx1": a.grad, "dweight1": norm1.weight.grad, "dbias1": norm1.bias.grad,
               "running_mean": norm1.running_mean, "running_var": norm1.running_var,
               "batches": norm1.num_batches_tracked}
    if x2 is not None:
        results.update(dx2=b.grad, dweight2=norm2.weight.grad, dbias2=norm2.bias.grad,
                       running_var2=norm2.running_var)
    return results


# 40 channels: two blocks of 16 in vector registers and 8 one by one; 9 x 11 leaves a row and a column unpooled.
SHAPE = (4, 40, 9, 11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("two", [False, True], ids=["one-input", "shortcut-add"])
@pytest.mark.parametrize("pool", [False, True], ids=["no-pool", "pool"])
@pytest.mark.parametrize("slope", [0.0, 0.1], ids=["relu", "leaky"])
def test_matches_the_separate_operations(dtype, two, pool, slope):
    generator = torch.Generator().manual_seed(0)
    x1 = (torch.randn(SHAPE, generator=generator) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    x2 = torch.randn(SHAPE, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last) if two else None
    pair = norms(SHAPE[1], seed=3)
    separate, fused = run(False, x1, x2, pair, slope, pool), run(True, x1, x2, pair, slope, pool)
    assert fused["y"].shape == separate["y"].shape
    assert fused["y"].is_contiguous(memory_format=torch.channels_last)
    assert int(fused["batches"]) == int(separate["batches"]) == 1
    # bf16 values are rounded as the separate kernels round them, so only a last-bit tie in the statistics may
    # differ; gradients are summed in another order.
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for name, expected in separate.items():
        if name == "batches":
            continue
        got = fused[name]
        scale = expected.float().abs().max().clamp_min(1.0)
        assert (got.float() - expected.float()).abs().max() <= tolerance * scale, name
    if dtype == torch.bfloat16:
        assert torch.equal(fused["y"], separate["y"])


def test_evaluation_mode_uses_running_statistics():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=torch.channels_last)
    norm, shortcut = norms(SHAPE[1], seed=4)
    norm.eval(), shortcut.eval()
    with torch.no_grad():
        with use_fused_kernels(False):
            expected = norm_activation(x, norm, 0.1, True, x * 0.5, shortcut)
        got = norm_activation(x, norm, 0.1, True, x * 0.5, shortcut)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # With gradients in evaluation mode the separate operations run (the fused backward is for batch statistics).
    a = x.clone().requires_grad_()
    norm_activation(a, norm, 0.0, True).sum().backward()
    b = x.clone().requires_grad_()
    with use_fused_kernels(False):
        norm_activation(b, norm, 0.0, True).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_the_same_numbers_on_one_thread_and_two():
    x = torch.randn(8, 64, 32, 32, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    pair = norms(64, seed=6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(True, x, x.flip(2), pair, 0.1, True)
        torch.set_num_threads(2)
        two = run(True, x, x.flip(2), pair, 0.1, True)
    finally:
        torch.set_num_threads(threads)
    for name in one:
        assert torch.equal(one[name], two[name]), name


def test_bad_input_is_refused_by_name():
    norm, other = norms(8, seed=7)
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="x2 and norm2"):
        norm_activation(x, norm, x2=x)
    with pytest.raises(ValueError, match="more than one value per channel"):
        norm_activation(torch.randn(1, 8, 1, 1), norm)


@pytest.mark.parametrize("backbone, size, ways", [("conv4", 28, 5), ("resnet12", 32, 3)])
def test_a_training_step_of_the_backbones_matches(backbone, size, ways):
    """Conv-4 and ResNet-12 give the same loss, gradients and running statistics with and without the kernels
    (float32, so that the comparison is tight; a pooled maximum that is a near-tie in float32 may pick the other
    tap, which moves a gradient locally, so gradients are compared by direction)."""
    torch.manual_seed(0)
    model = FewShotModel(ModelSpec(backbone=backbone, in_channels=3, image_size=size))
    images = torch.rand(ways * 3, 3, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(ways)
    results = []
    for fused in (False, True):
        copy_ = copy.deepcopy(model)
        with use_fused_kernels(fused):
            output = copy_(images[:ways], labels, images[ways:], labels.repeat(2))
            output.loss.backward()
        results.append((output.loss.item(), dict(copy_.named_parameters()), dict(copy_.named_buffers())))
    (loss, params, buffers), (fused_loss, fused_params, fused_buffers) = results
    assert fused_loss == pytest.approx(loss, rel=1e-4)
    for name, parameter in params.items():
        if name.endswith(".0.bias") and backbone == "conv4":  # a conv bias before batch norm: its gradient is ~0
            continue
        cosine = torch.nn.functional.cosine_similarity(fused_params[name].grad.flatten(), parameter.grad.flatten(), dim=0)
        assert cosine > 0.999, name
    for name, buffer in buffers.items():
        torch.testing.assert_close(fused_buffers[name], buffer, rtol=1e-4, atol=1e-6)


def test_without_a_compiler_the_separate_operations_run(tmp_path):
    """Where the kernels cannot be built, a warning says so once and Conv-4 trains on PyTorch's kernels."""
    script = """
import warnings, torch
from fewshot.backbones.fused_norm import fused_kernels
from fewshot.model.network import FewShotModel, ModelSpec
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert fused_kernels() is None
    model = FewShotModel(ModelSpec(backbone="conv4", in_channels=1, image_size=28))
    labels = torch.arange(3)
    model(torch.rand(3, 1, 28, 28), labels, torch.rand(3, 1, 28, 28), labels).loss.backward()
messages = [str(w.message) for w in caught if "fused batch-norm kernels could not be built" in str(w.message)]
assert len(messages) == 1, messages
print("fell back")
"""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "build")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fell back" in result.stdout
