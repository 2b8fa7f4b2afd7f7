"""Gallery search at a million vectors: exact torch search against faiss IVF-Flat and HNSW-Flat, in one run here.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.search_speed runs/proto/best.pt [--size 1000000] [--threads 2]

The gallery is the checkpoint's embeddings of real Omniglot images (the validation and test classes) plus synthetic
vectors to reach `--size`: each a real embedding plus Gaussian noise of the real classes' mean within-class standard
deviation per dimension (new "drawings" near real ones, so the gallery keeps the real clusters' density). The
`--queries` query embeddings are real test images left out of the gallery. For each method and setting: the build
time (exact: none beyond the matrix; faiss: training and adding), queries per second over all queries (one batch,
`--threads` threads for torch and faiss alike), and recall@k against exact search's top k (the model's distance:
squared Euclidean for a protonet) on the same queries. Everything goes through `fewshot.search.Index`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.api import load
from fewshot.evaluation import checkpoint_splits, embed_split
from fewshot.inference.index import Index
from fewshot.inference.exact import recall_against_exact


def synthetic_gallery(real: torch.Tensor, labels: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """`real` [n, d] padded to `size` rows with noisy copies of random real rows (noise: within-class std)."""
    classes = torch.from_numpy(labels)
    means = torch.zeros(int(classes.max()) + 1, real.shape[1]).index_add_(0, classes, real)
    means /= torch.bincount(classes).clamp_min(1)[:, None].float()
    spread = (real - means[classes]).pow(2).mean(0).sqrt()  # per dimension, pooled over classes
    generator = torch.Generator().manual_seed(seed)
    extra = size - len(real)
    if extra <= 0:
        return real[:size].clone()
    out = torch.empty(size, real.shape[1])
    out[: len(real)] = real
    for start in range(0, extra, 100_000):  # in blocks: the noise of a million rows at once is needless memory
        count = min(100_000, extra - start)
        base = torch.randint(0, len(real), (count,), generator=generator)
        out[len(real) + start: len(real) + start + count] = real[base] + spread * torch.randn(count, real.shape[1],
                                                                                               generator=generator)
    return out


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nlist", type=int, default=1000, help="IVF cells (the library default is about 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON of every figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    model = load(args.checkpoint)
    splits = checkpoint_splits(model.state_info, image_size=model.model.spec.image_size)
    (parts, seconds) = timed(lambda: [embed_split(model.model, split, model.device) for split in (splits.val, splits.test)])
    real = torch.cat(parts)
    labels = np.concatenate([splits.val.labels, splits.test.labels + splits.val.num_classes])
    images_per_second = len(real) / seconds
    rng = np.random.default_rng(args.seed)
    held_out = np.sort(rng.choice(np.arange(len(splits.val), len(real)), args.queries, replace=False))
    keep = np.setdiff1d(np.arange(len(real)), held_out)
    queries = real[torch.from_numpy(held_out)]
    vectors = synthetic_gallery(real[torch.from_numpy(keep)], labels[keep], args.size, args.seed)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, faiss "
          f"{faiss.__version__}; gallery {len(vectors):,} x {vectors.shape[1]} ({len(keep):,} real embeddings, "
          f"embedded at {images_per_second:,.0f} images/s), {len(queries)} real held-out queries, k = {args.k}\n")

    index = Index(model, vectors, [f"#{i}" for i in range(len(vectors))], source="benchmark")
    rows = []
    exact, seconds = timed(index.search_embeddings, queries, args.k, exact=True)
    exact_i = exact.indices
    rows.append({"method": "exact (torch, chunked)", "setting": "", "build_s": 0.0, "qps": len(queries) / seconds,
                 "recall": recall_against_exact(exact_i, exact_i)})

    flat = faiss.IndexFlatL2(vectors.shape[1])  # faiss's own brute force, a peer for the exact path
    _, build = timed(flat.add, vectors.numpy())
    (_, flat_i), seconds = timed(flat.search, queries.numpy(), args.k)
    rows.append({"method": "faiss IndexFlatL2 (exact)", "setting": "", "build_s": build, "qps": len(queries) / seconds,
                 "recall": recall_against_exact(torch.from_numpy(flat_i).long(), exact_i)})
    del flat

    for kind, settings, sweep, name in (("ivf", {"seed": args.seed, "nlist": args.nlist}, args.nprobe, "nprobe"),
                                        ("hnsw", {"m": args.hnsw_m, "ef_construction": args.ef_construction},
                                         args.ef_search, "ef_search")):
        _, build = timed(index.build_ann, kind, recall_sample=0, **settings)
        for value in sweep:
            index.set_search_params(**{name: value})
            index.search_embeddings(queries[:50], args.k)  # warm-up
            result, seconds = timed(index.search_embeddings, queries, args.k)
            found = result.indices
            label = f"nlist {index._faiss.nlist}, {name} {value}" if kind == "ivf" else \
                f"M {args.hnsw_m}, efConstruction {args.ef_construction}, {name} {value}"
            rows.append({"method": f"faiss {kind.upper()}-Flat", "setting": label, "build_s": build,
                         "qps": len(queries) / seconds, "recall": recall_against_exact(found, exact_i)})
        index._faiss = None  # free it before the next structure

    print(f"| method | setting | build (s) | queries/s | recall@{args.k} vs exact |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['setting']} | {row['build_s']:.1f} | {row['qps']:,.0f} | {row['recall']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps({"size": len(vectors), "real": int(len(keep)), "queries": len(queries),
                                        "k": args.k, "threads": args.threads, "rows": rows}, indent=1))
        print(f"\nreport: {args.out}")


if __name__ == "__main__":
    main()
