"""Training episodes per second on one process and on two (torchrun, gloo), on the same episodes.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.distributed_speed [--episodes 600] [--cuda]

Every row trains the same Conv-4 protonet on the same Omniglot episodes (60-way 1-shot 5-query,
`--episodes-per-step 2`), so the rows differ only in how the work is spread: one process with one
thread, one process with two threads, and two processes of one thread each under
`torchrun --standalone --nproc_per_node=2` (gloo). With `--cuda` (and a GPU) a row for one GPU is added.
Episodes per second are training episodes over the run's measured training time (`train_seconds`
in last.pt, which includes the validations); the final weights of the two-process run are compared
with the one-process run's (maximum absolute difference).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def train_command(output: Path, episodes: int, threads: int, device: str, precision: str) -> list[str]:
    return ["-m", "fewshot.train", "--episodes", str(episodes), "--episodes-per-step", "2",
            "--val-every", str(episodes), "--val-episodes", "20", "--test-episodes", "20",
            "--checkpoint-every", str(episodes), "--threads", str(threads), "--device", device,
            "--precision", precision, "--no-progress", "--output", str(output)]


def run(launcher: list[str], args: list[str]) -> None:
    result = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode:
        raise SystemExit(f"{' '.join(launcher + args)} failed:\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600, help="training episodes per row (even)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--cuda", action="store_true", help="add a one-GPU row (needs CUDA)")
    args = parser.parse_args()

    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    rows = [("1 process, 1 thread", [], 1, "cpu"), ("1 process, 2 threads", [], 2, "cpu"),
            ("2 processes (torchrun, gloo), 1 thread each", torchrun, 1, "cpu")]
    if args.cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--cuda: torch sees no CUDA device")
        rows.append(("1 GPU", [], 1, "cuda"))
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, launcher, threads, device in rows:
            output = Path(folder) / f"run{len(results)}"
            run(launcher, train_command(output, args.episodes, threads, device, args.precision))
            state = torch.load(output / "last.pt", weights_only=True)
            results.append((name, args.episodes / state["train_seconds"], state["model"]))
    base = results[0][1]
    print(f"| setup | episodes/s | vs 1 process, 1 thread | max abs weight difference vs 1 process, 1 thread |")
    print("|---|---|---|---|")
    for name, speed, weights in results:
        difference = max((weights[k].double() - results[0][2][k].double()).abs().max().item() for k in weights)
        print(f"| {name} | {speed:.2f} | {speed / base:.2f}x | {difference:.2e} |")


if __name__ == "__main__":
    main()
