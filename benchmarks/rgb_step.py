"""The colour training step, today's against the new, side by side in one run on this CPU.

    python -m benchmarks.rgb_step [--data-root /work/emoji/xd] [--threads 1] [--repeats 5] [--compile]
                                  [--cases conv4 resnet12 resnet12-fp32]

Three cases on the emoji colour set (`--dataset folder`, the `train/` classes) with `--augment
crop-flip-jitter`, as `fewshot train` runs them:

- Conv-4, 20-way 1-shot 4-query episodes of 64x64 RGB images (100 images a step), bf16 autocast;
- ResNet-12, 5-way 1-shot 4-query episodes of 84x84 RGB images (25 images; the emoji resized), bf16 autocast;
- the same ResNet-12 step in float32, the default precision.

"today" is the step as it ran before the colour issue's changes: the per-image torchvision v2
crop-flip-jitter (a faithful copy below, `per_image_crop_flip_jitter`), glibc's default heap (allocations
above 32 MB mapped and unmapped every episode), PyTorch's separate batch-norm, add, max-pool and ReLU
kernels and its default Adam. "new" is the step `fewshot train` runs now: the batched
`fewshot.training.augment.random_crop_flip_jitter`, `keep_freed_memory`, the fused batch-norm kernels
(`fewshot.backbones.fused_norm`) and fused Adam (`fewshot.training.steps.make_optimizer`). Both train their
own copy of the same initial weights on the same episodes; each repeat times a few steps of one, then the
other (interleaved, so that load from other processes falls on both), and the tables give medians over
repeats. Each step is split into data (gather + to float), augmentation, forward, backward and the
optimiser step. With `--compile` a third column runs the new step with the backbone under `torch.compile`
(its compilation is not timed).

Numbers: the fused kernels round as the separate ones do, but they sum the batch statistics in another order
(and, in bf16, a pooled maximum tied after rounding may then come from another tap), so the two steps agree
within the precision's rounding, not bit for bit. The run checks it on un-augmented episodes from the same
weights: the loss of each against the same step in float32 with PyTorch's kernels, and the cosine between
each parameter's gradient and float32's. The augmentation's implementation changed too (the same parameter
distributions, resampled in a batch), so augmented images differ by design: the numbers are compared without
augmentation and the times with it.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.data import load_splits
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.backbones.fused_norm import fused_kernels, use_fused_kernels
from fewshot.training.augment import CropFlipJitterRange, augment_generator, random_crop_flip_jitter
from fewshot.training.steps import keep_freed_memory, make_optimizer

PARTS = ("data", "augment", "forward", "backward", "optimiser")
SEED = 0


@dataclass(frozen=True)
class Case:
    """One training step shape."""

    name: str
    backbone: str
    image_size: int
    ways: int
    shots: int = 1
    queries: int = 4
    precision: str = "bf16"

    @property
    def key(self) -> str:
        return self.backbone if self.precision == "bf16" else f"{self.backbone}-{self.precision}"


CASES = (Case("Conv-4 20-way 1-shot 64x64, bf16", "conv4", 64, 20),
         Case("ResNet-12 5-way 1-shot 84x84, bf16", "resnet12", 84, 5),
         Case("ResNet-12 5-way 1-shot 84x84, fp32 (the default precision)", "resnet12", 84, 5, precision="fp32"))


def per_image_crop_flip_jitter(images: torch.Tensor, generator: torch.Generator,
                               params: CropFlipJitterRange = CropFlipJitterRange()) -> torch.Tensor:
    """Today's crop-flip-jitter, as fewshot.training.augment had it: the v2 transforms called once per
    image under a reseeded, forked global RNG."""
    count, channels, height, width = images.shape
    geometric = v2.Compose([
        v2.RandomResizedCrop((height, width), scale=params.crop_scale, ratio=params.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(params.flip_p),
    ])
    saturation = params.saturation if channels == 3 else 0.0
    colour = (v2.ColorJitter(brightness=params.brightness, contrast=params.contrast, saturation=saturation)
              if params.brightness or params.contrast or saturation else None)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    work = images if images.dtype in (torch.uint8, torch.float32) else images.float()
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for image in work:
            image = v2.functional.to_dtype(geometric(image), torch.float32, scale=True)
            out.append(image if colour is None else colour(image))
    return v2.functional.to_dtype(torch.stack(out), images.dtype, scale=True)


def glibc_default_heap() -> None:
    """glibc's heap as a process that never called mallopt has it in a steady state: its dynamic mmap
    threshold at its 32 MB ceiling, the trim threshold twice that, free memory returned now."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    libc.malloc_trim(0)


class StepPath:
    """One way of running the step: its augmentation, heap setting, model and optimiser, its episode stream."""

    def __init__(self, name: str, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                 heap: Callable[[], object], model: FewShotModel, stream_factory: Callable[[], object],
                 new: bool) -> None:
        self.name, self.augment, self.heap, self.model, self.new = name, augment, heap, model, new
        # Today's optimiser was torch's default Adam; the new one is what `fewshot train` builds.
        self.optimizer = (make_optimizer(model.parameters(), lr=1e-3, weight_decay=0.0, device=torch.device("cpu"))
                          if new else torch.optim.Adam(model.parameters(), lr=1e-3))
        self.stream = stream_factory()
        self.episode = 0
        self.times: dict[str, list[float]] = {part: [] for part in PARTS}

    def warm(self, episode: tuple[torch.Tensor, ...]) -> None:
        """Forward and backward on `episode`, untimed, no update: the allocator's steady state after a heap change."""
        support_x, support_y, query_x, query_y, _ = episode
        with use_fused_kernels(self.new):
            self.model(support_x, support_y, query_x, query_y).loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One training step as the training loop runs it, each part timed."""
        marks = [time.perf_counter()]
        support_x, support_y, query_x, query_y, _ = next(self.stream)
        marks.append(time.perf_counter())
        both = self.augment(torch.cat([support_x, query_x]), augment_generator(SEED, self.episode))
        support_x, query_x = both[:len(support_x)], both[len(support_x):]
        marks.append(time.perf_counter())
        self.optimizer.zero_grad(set_to_none=True)
        with use_fused_kernels(self.new):
            output = self.model(support_x, support_y, query_x, query_y)
            marks.append(time.perf_counter())
            output.loss.backward()
        marks.append(time.perf_counter())
        self.optimizer.step()
        marks.append(time.perf_counter())
        self.episode += 1
        for part, start, end in zip(PARTS, marks, marks[1:]):
            self.times[part].append(end - start)


def build_model(case: Case, precision: str | None = None) -> FewShotModel:
    torch.manual_seed(SEED)
    model = FewShotModel(ModelSpec(backbone=case.backbone, in_channels=3, image_size=case.image_size))
    model.compute_dtype = torch.bfloat16 if (precision or case.precision) == "bf16" else None
    return model


def compiled(model: FewShotModel) -> FewShotModel:
    """`model` with its backbone under torch.compile (the state dict keys stay those of the plain model)."""
    model.backbone.forward = torch.compile(model.backbone.forward)
    return model


def check_numbers(case: Case, split, episodes: int = 3) -> str:
    """How far today's and the new step are from the same step in float32, on un-augmented episodes from the
    same weights: the loss, and the cosine between each parameter's gradient and float32's (the new kernels
    round as today's do, so in bf16 the two should be equally far from float32)."""
    sampler = EpisodeSampler(split.labels, case.ways, case.shots, case.queries, seed=SEED + 1)
    stream = iter(EpisodeDataset(sampler, split, with_classes=True))
    first = build_model(case)
    lines = []
    for _ in range(episodes):
        support_x, support_y, query_x, query_y, _ = next(stream)
        results = {}
        for label, precision, new in (("float32 reference", "fp32", False), ("today", None, False), ("new", None, True)):
            model = copy.deepcopy(first)
            model.compute_dtype = torch.bfloat16 if (precision or case.precision) == "bf16" else None
            with use_fused_kernels(new):
                output = model(support_x, support_y, query_x, query_y)
                output.loss.backward()
            results[label] = (output.loss.item(), [p.grad.flatten() for p in model.parameters() if p.grad is not None])
        reference_loss, reference_grads = results["float32 reference"]
        parts = [f"float32 loss {reference_loss:.4f}"]
        for label in ("today", "new"):
            loss, grads = results[label]
            cosines = [torch.nn.functional.cosine_similarity(g, r, dim=0).item() for g, r in zip(grads, reference_grads)
                       if r.norm() > 1e-6 * max(x.norm() for x in reference_grads)]
            parts.append(f"{label} loss {loss:.4f} (gradient cosine to float32: median {statistics.median(cosines):.5f},"
                         f" min {min(cosines):.5f})")
        lines.append("; ".join(parts))
    return "un-augmented episodes, same weights:\n" + "\n".join(f"  {line}" for line in lines)


def run_case(case: Case, args: argparse.Namespace) -> None:
    split = load_splits("folder", None, args.data_root, case.image_size).train
    sampler = EpisodeSampler(split.labels, case.ways, case.shots, case.queries, seed=SEED)

    def stream():
        return iter(EpisodeDataset(sampler, split, with_classes=True))

    warm_up = next(iter(EpisodeDataset(EpisodeSampler(split.labels, case.ways, case.shots, case.queries, seed=SEED + 2),
                                       split, with_classes=True)))
    first = build_model(case)
    paths = [StepPath("today", per_image_crop_flip_jitter, glibc_default_heap, first, stream, new=False),
             StepPath("new", random_crop_flip_jitter, keep_freed_memory, copy.deepcopy(first), stream, new=True)]
    if args.compile:
        model = compiled(copy.deepcopy(first))
        path = StepPath("new + compile", random_crop_flip_jitter, keep_freed_memory, model, stream, new=True)
        started = time.perf_counter()
        try:
            path.heap()
            path.warm(warm_up)
            paths.append(path)
            print(f"compiled in {time.perf_counter() - started:.0f} s")
        except Exception as error:  # compilation needs a C++ compiler; the comparison goes on without it
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); left out", stacklevel=1)
    images = case.ways * (case.shots + case.queries)
    print(f"\n## {case.name}: {images} images a step, crop-flip-jitter, "
          f"{torch.get_num_threads()} thread(s), {args.repeats} repeats x {args.steps} steps")
    print(check_numbers(case, split))
    for repeat in range(args.repeats):
        for path in paths:
            path.heap()
            path.warm(warm_up)
            for _ in range(args.steps):
                path.step()
    medians = {path.name: {part: 1000 * statistics.median(path.times[part]) for part in PARTS} for path in paths}
    totals = {name: sum(parts.values()) for name, parts in medians.items()}
    reference = totals["today"]
    names = list(medians)
    print("\n| part (ms, median) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for part in PARTS:
        print(f"| {part} | " + " | ".join(f"{medians[name][part]:.1f}" for name in names) + " |")
    print("| **step** | " + " | ".join(f"**{totals[name]:.1f}**" for name in names) + " |")
    print("| speed-up against today | " + " | ".join(f"{reference / totals[name]:.2f}x" for name in names) + " |")
    print("| images / s | " + " | ".join(f"{1000 * images / totals[name]:.0f}" for name in names) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="/work/emoji/xd", help="an ImageFolder with train/ (the emoji set)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (as the training run's --threads)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (the tables give medians)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps of each path per repeat")
    parser.add_argument("--cases", nargs="+", choices=[case.key for case in CASES],
                        default=[case.key for case in CASES])
    parser.add_argument("--compile", action="store_true", help="add the new step with the backbone under torch.compile")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f} at the start")
    if fused_kernels() is None:
        print("the fused kernels could not be built here: the new step runs PyTorch's separate kernels")
    for case in CASES:
        if case.key in args.cases:
            run_case(case, args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share this CPU: compare within a run)")


if __name__ == "__main__":
    main()
