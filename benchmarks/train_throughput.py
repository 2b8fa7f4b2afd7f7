"""Training throughput on this CPU: our episodic pipeline vs learn2learn's, doing the same step.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.train_throughput [--steps 150] [--threads 2] [--bf16]

Both pipelines train the same Conv-4 with the same prototypical loss and Adam on 5-way 1-shot
15-query Omniglot episodes; they differ in how episodes are made (ours: seeded index sampling and
a gather from the in-memory uint8 store; learn2learn: `vision.benchmarks.get_tasksets('omniglot')`,
PIL decode per image) and in our step's memory format. Data time is measured separately from the
step (forward, backward, optimiser), so the table shows where each pipeline spends its time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.data import load_omniglot, resolve_data_root
from fewshot.model.network import FewShotModel, ModelSpec

WAYS, SHOTS, QUERIES = 5, 1, 15


def timed_loop(next_episode, model: FewShotModel, steps: int, warmup: int = 10) -> dict[str, float]:
    """Run `warmup + steps` training steps; return per-episode data and step seconds over the timed steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data_s = step_s = 0.0
    for step in range(warmup + steps):
        started = time.perf_counter()
        support_x, support_y, query_x, query_y = next_episode(step)
        loaded = time.perf_counter()
        output = model(support_x, support_y, query_x, query_y)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        finished = time.perf_counter()
        if step >= warmup:
            data_s += loaded - started
            step_s += finished - loaded
    return {"data": data_s / steps, "step": step_s / steps}


def ours(root: Path, steps: int, compute_dtype: torch.dtype | None = None) -> dict[str, float]:
    store = load_omniglot(root)
    split = store.split("train")
    sampler = EpisodeSampler(split.labels, WAYS, SHOTS, QUERIES, seed=0)
    torch.manual_seed(0)
    model = FewShotModel(ModelSpec())
    model.compute_dtype = compute_dtype  # what `fewshot.train --precision bf16` sets
    episodes = iter(EpisodeDataset(sampler, split))  # what `fewshot.train` iterates
    return timed_loop(lambda i: next(episodes), model, steps)


def learn2learn_pipeline(root: Path, steps: int) -> dict[str, float]:
    from benchmarks.peers import extract_for_torchvision, skip_torchvision_omniglot_md5

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l
    skip_torchvision_omniglot_md5()
    with tempfile.TemporaryDirectory() as scratch:
        peer_root = extract_for_torchvision(root, Path(scratch))
        tasksets = l2l.vision.benchmarks.get_tasksets(
            "omniglot", train_ways=WAYS, train_samples=SHOTS + QUERIES, test_ways=WAYS,
            test_samples=SHOTS + QUERIES, root=str(peer_root))

        def next_episode(_: int):
            images, labels = tasksets.train.sample()
            (support_x, support_y), (query_x, query_y) = l2l.data.partition_task(images, labels, shots=SHOTS)
            return support_x, support_y, query_x, query_y

        torch.manual_seed(0)
        return timed_loop(next_episode, FewShotModel(ModelSpec()), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also time our step with the backbone under bfloat16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = resolve_data_root(args.root)
    results = {"fewshot": ours(root, args.steps), "learn2learn": learn2learn_pipeline(root, args.steps)}
    if args.bf16:
        results["fewshot --precision bf16"] = ours(root, args.steps, torch.bfloat16)

    print(f"\nTraining throughput, Omniglot {WAYS}-way {SHOTS}-shot {QUERIES}-query, Conv-4 protonet, "
          f"{args.threads} threads, {args.steps} timed steps")
    print("| pipeline | episodes/s | data ms/episode | step ms/episode | data share of step |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        total = r["data"] + r["step"]
        print(f"| {name} | {1 / total:.1f} | {1000 * r['data']:.2f} | {1000 * r['step']:.1f} | {100 * r['data'] / total:.1f}% |")
    peer = results["learn2learn"]["data"] + results["learn2learn"]["step"]
    for name in [n for n in results if n != "learn2learn"]:
        print(f"\n{name} / learn2learn episodes per second: {peer / (results[name]['data'] + results[name]['step']):.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
