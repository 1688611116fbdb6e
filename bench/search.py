"""Index.search vs raw FAISS on the same vectors: QPS, overhead and recall@10 against exact search.

Vector sets: the scifact corpus embedded by all-MiniLM-L6-v2 (from bench/encode.py's cache, else
encoded here) with its 300 test queries, and a synthetic set of normalised Gaussian vectors
(default 1M x 384 float32, queries drawn from the same distribution).
Prints one JSON line per (vector set, factory).

    python bench/search.py --synthetic 1000000
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from eval.data import load_dataset, resolve_dataset
from retriever.encoder import DualEncoder
from retriever.index import Index
from retriever.models import cache_dir
from retriever.text import doc_text

FACTORIES = {  # factory -> search knobs
    "Flat": {},
    "HNSW32": {"ef_search": 128},
    "IVF{nlist},Flat": {"nprobe": 16},
    "IVF{nlist},PQ{m}": {"nprobe": 16},
}


def scifact_vectors():
    ds = load_dataset(resolve_dataset("scifact"))
    cached = cache_dir() / "bench-scifact-minilm.npy"
    enc = DualEncoder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    docs = np.load(cached) if cached.exists() else enc.encode([doc_text(d) for d in ds.corpus.values()], show_progress=True)
    queries = enc.encode(list(ds.queries.values()), is_query=True)
    return docs, queries


def synthetic_vectors(n: int, dim: int = 384, n_queries: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    docs = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        docs[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    return docs, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, docs: np.ndarray, queries: np.ndarray, k: int = 10) -> None:
    ids = [f"d{i}" for i in range(len(docs))]
    exact = None
    nlist = max(16, int(4 * np.sqrt(len(docs))))
    for template, knobs in FACTORIES.items():
        factory = template.format(nlist=nlist, m=docs.shape[1] // 8)
        start = time.perf_counter()
        index = Index.build(docs, ids, factory)
        build_s = time.perf_counter() - start
        index.set_params(**knobs)
        ours_s = best_of(lambda: index.search(queries, k))
        raw_s = best_of(lambda: index.faiss.search(queries, k))
        got, _ = index.search(queries, k)
        rows = [[int(d[1:]) for d in row] for row in got]
        if exact is None:
            exact = rows  # Flat comes first
        recall = float(np.mean([len(set(r) & set(e)) / k for r, e in zip(rows, exact)]))
        print(json.dumps({"bench": "search", "vectors": name, "n": len(docs), "dim": docs.shape[1], "queries": len(queries),
                          "factory": factory, **knobs, "build_s": round(build_s, 2),
                          "qps_densekit": round(len(queries) / ours_s, 1), "qps_raw_faiss": round(len(queries) / raw_s, 1),
                          "overhead_pct": round(100 * (ours_s / raw_s - 1), 2), "recall@10_vs_exact": round(recall, 4)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="size of the synthetic set (0 to skip)")
    args = parser.parse_args()
    bench("scifact-minilm", *scifact_vectors())
    if args.synthetic:
        bench(f"synthetic-{args.synthetic}", *synthetic_vectors(args.synthetic))


if __name__ == "__main__":
    main()
