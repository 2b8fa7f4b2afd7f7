"""Device check: ResNet-12 trained on real colour images on a GPU (bf16 autocast, channels-last), images/s.

    python -m benchmarks.gpu_check [--device cuda] [--data-root /work/emoji/xd] [--episodes 300] [--compile]
    python -m benchmarks.gpu_check --device cpu --tiny      # a smoke test of the same path on a CPU

Two data sets, each trained with `fewshot.training.train` exactly as `fewshot train --device DEVICE
--precision bf16 --backbone resnet12 --augment crop-flip-jitter` runs it (the model is channels-last,
`FewShotModel`), 5-way 1-shot 4-query episodes at 84x84:

- the emoji colour set as a folder (`--dataset folder`, its `train/`, `val/`, `test/` classes);
- a miniImageNet-format copy of it (`--dataset miniimagenet`): the same images as 84x84 JPEGs named
  `<wnid><8 digits>.jpg` in `miniimagenet/images/`, listed in `miniimagenet/splits/ravi/{train,val,test}.csv`,
  written to a temporary folder, so the miniImageNet loader and its decode path run as on the real set.

For each it prints the training step's throughput (images per second over timed steps after a warm-up,
the device synchronised; with `--compile` also with the backbone under torch.compile, its compilation
untimed) and the whole run's (episodes x images per episode / the run's training seconds, which include
one short validation), then the run's test accuracy as a sanity check (a few hundred episodes are far
from a trained model). Never a test dependency: the project runs without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.data import load_splits
from fewshot.data.images import IMAGE_EXTENSIONS
from fewshot.model.network import FewShotModel
from fewshot.training import TrainConfig, train
from fewshot.training.augment import augment_episode, augment_generator
from fewshot.training.steps import keep_freed_memory

WAYS, SHOTS, QUERIES = 5, 1, 4


def write_miniimagenet_copy(folder_root: Path, target: Path, image_size: int) -> Path:
    """The ImageFolder `folder_root/{train,val,test}/<class>/<image>` as a miniImageNet JPEG folder under
    `target/miniimagenet/` (class i named n%08d, images resized to `image_size`, RGBA composited on white as
    the folder loader does); returns `target`, the data root to give the miniImageNet loader."""
    folder = target / "miniimagenet"
    images, lists = folder / "images", folder / "splits" / "ravi"
    images.mkdir(parents=True)
    lists.mkdir(parents=True)
    class_number = 0
    for split in ("train", "val", "test"):
        rows = []
        for class_dir in sorted(p for p in (folder_root / split).iterdir() if p.is_dir()):
            wnid = f"n{class_number:08d}"
            class_number += 1
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            for index, path in enumerate(files):
                with Image.open(path) as image:
                    rgba = image.convert("RGBA")
                    flat = Image.new("RGB", rgba.size, (255, 255, 255))
                    flat.paste(rgba, mask=rgba.getchannel("A"))
                    name = f"{wnid}{index + 1:08d}.jpg"
                    flat.resize((image_size, image_size), Image.Resampling.BICUBIC).save(images / name, quality=95)
                    rows.append((name, wnid))
        with open(lists / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
    return target


def step_throughput(config: TrainConfig, device: torch.device, steps: int, compile_backbone: bool) -> float:
    """Training images per second of the step `fewshot train` runs (augmentation, forward, backward, Adam),
    over `steps` timed steps after warm-up ones."""
    splits = load_splits(config.dataset, config.split, config.data_root, config.image_size)
    split = splits.train
    run = config.resolve(splits, 1)
    torch.manual_seed(0)
    model = FewShotModel(run.model_spec(splits)).to(device)
    model.compute_dtype = torch.bfloat16
    if compile_backbone:
        model.backbone.forward = torch.compile(model.backbone.forward)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = EpisodeSampler(split.labels, WAYS, SHOTS, QUERIES, seed=0)
    stream = iter(EpisodeDataset(sampler, split, with_classes=True))
    warm_up = 3 if not compile_backbone else 5

    def step(index: int) -> None:
        support_x, support_y, query_x, query_y, _ = (t.to(device, non_blocking=True) for t in next(stream))
        support_x, query_x = augment_episode(config.augment, support_x, query_x, augment_generator(0, index))
        optimizer.zero_grad(set_to_none=True)
        model(support_x, support_y, query_x, query_y).loss.backward()
        optimizer.step()

    for index in range(warm_up):
        step(index)
    synchronise(device)
    started = time.perf_counter()
    for index in range(warm_up, warm_up + steps):
        step(index)
    synchronise(device)
    return steps * WAYS * (SHOTS + QUERIES) / (time.perf_counter() - started)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(name: str, config: TrainConfig, device: torch.device, steps: int, compile_backbone: bool) -> None:
    """Time the step, then train the run `config` describes; print both throughputs and its test accuracy."""
    print(f"\n## {name}: ResNet-12 {WAYS}-way {SHOTS}-shot {QUERIES}-query {config.image_size}x{config.image_size}, "
          f"bf16 autocast, channels-last, crop-flip-jitter, on {device}")
    print(f"| measure | images / s |\n|---|---:|")
    print(f"| training step | {step_throughput(config, device, steps, False):.0f} |")
    if compile_backbone:
        try:
            print(f"| training step, backbone under torch.compile | {step_throughput(config, device, steps, True):.0f} |")
        except Exception as error:  # compilation needs a working toolchain; the check goes on without it
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); left out", stacklevel=1)
    report = train(config, progress=False)
    images = config.episodes * WAYS * (SHOTS + QUERIES)
    print(f"| whole run ({config.episodes} episodes, one validation) | {images / report['train_seconds']:.0f} |")
    result = report["results"][0]
    print(f"test accuracy after {config.episodes} training episodes: {100 * result['accuracy']:.1f} +- "
          f"{100 * result['ci95']:.1f}% ({result['ways']}-way {result['shots']}-shot, {result['episodes']} episodes)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check), or cpu (a smoke test: use with --tiny)")
    parser.add_argument("--data-root", default="/work/emoji/xd", help="the emoji set: train/, val/, test/ class folders")
    parser.add_argument("--episodes", type=int, default=300, help="training episodes of each run")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps of the throughput measure")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--compile", action="store_true", help="also time the step with the backbone under torch.compile")
    parser.add_argument("--tiny", action="store_true",
                        help="a few episodes of a narrow ResNet-12 on 32x32 images: checks the path, not the speed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here; run it where a GPU is lent, or smoke-test "
                         "the path with --device cpu --tiny")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    episodes, steps, image_size = (4, 2, 32) if args.tiny else (args.episodes, args.steps, args.image_size)
    backbone_args = {"channels": [16, 32, 64, 128]} if args.tiny else {}
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    common = dict(ways=WAYS, shots=SHOTS, queries=QUERIES, eval_queries=QUERIES, backbone="resnet12",
                  backbone_args=backbone_args, image_size=image_size, augment="crop-flip-jitter", episodes=episodes,
                  val_every=episodes, val_episodes=10 if args.tiny else 50, test_episodes=10 if args.tiny else 200,
                  checkpoint_every=episodes, device=str(device), precision="bf16", threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        scratch = Path(scratch)
        check("emoji folder", TrainConfig(dataset="folder", data_root=args.data_root, output=str(scratch / "folder"),
                                          **common), device, steps, args.compile)
        started = time.perf_counter()
        root = write_miniimagenet_copy(Path(args.data_root), scratch / "data", image_size)
        print(f"\n(wrote the miniImageNet-format copy in {time.perf_counter() - started:.0f} s)")
        check("emoji as miniImageNet", TrainConfig(dataset="miniimagenet", data_root=str(root),
                                                   output=str(scratch / "mini"), **common), device, steps, args.compile)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
