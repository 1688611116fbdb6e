"""Peak resident memory of `densekit index merge` against the size of the vectors it merges (issue 13).

Writes a synthetic corpus of ``--docs`` x ``--dim`` float32 unit vectors as ``--shards`` densekit index
shards (``shard-i-of-n/`` folders: shard.json, ids.json, vectors-*.npy pieces, as `index build
--num-shards` writes them), then merges them in a fresh subprocess (``densekit.retriever.shards.merge_shards``) and
reads that child's peak RSS (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``; the child also reports its
VmHWM and its RSS right after imports). ``--baseline`` also measures, in another fresh subprocess, what
``build_index`` did before shards were streamed: load every piece into memory, concatenate, ``Index.build``.
Prints one JSON line per measured merge; the target is a ratio (peak RSS / vector bytes) below 2.

    OMP_NUM_THREADS=1 python bench/merge_memory.py --docs 2000000 --dim 384 >> bench/results/merge_memory.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, os, sys, time
import faiss
faiss.omp_set_num_threads(1)
from pathlib import Path
from densekit.retriever.shards import merge_shards, shard_folders, check_shards, pieces
from densekit.retriever.index import Index

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

work, out, factory, mode, train_sample, add_batch = sys.argv[1:7]
after_imports = rss("VmRSS")
began = time.time()
if mode == "stream":
    index = merge_shards([work], out, factory, int(train_sample), int(add_batch), show_progress=False)
else:  # what build_index did before: every piece in memory, concatenated, then Index.build
    import numpy as np
    infos = check_shards(shard_folders([work]))
    ids = [i for folder, _ in infos for i in json.loads((folder / "ids.json").read_text())]
    vectors = np.concatenate([np.load(p) for folder, _ in infos for p in pieces(folder)])
    index = Index.build(vectors, ids, factory, infos[0][1]["meta"])
    index.save(out)
print(json.dumps({"seconds": round(time.time() - began, 1), "ntotal": index.ntotal, "vm_hwm": rss("VmHWM"),
                  "rss_after_imports": after_imports}))
"""


def write_shards(work: Path, docs: int, dim: int, shards: int, chunk: int = 65536, seed: int = 0) -> None:
    """Densekit shard folders of synthetic unit vectors, written chunk by chunk (never all in memory)."""
    from densekit.retriever.shards import SHARD_FORMAT, shard_name, shard_range

    meta = {"model": "synthetic", "model_hash": "synthetic-0", "corpus_fingerprint": f"synthetic-{docs}x{dim}-{seed}",
            "num_docs": docs, "pooling": "mean", "normalize": True}
    rng = np.random.default_rng(seed)
    for i in range(shards):
        start, stop = shard_range(docs, shards, i)
        folder = work / shard_name(i, shards)
        folder.mkdir(parents=True)
        vectors = np.lib.format.open_memmap(folder / "vectors-00000.npy", mode="w+", dtype=np.float32, shape=(stop - start, dim))
        for a in range(0, stop - start, chunk):
            x = rng.standard_normal((min(chunk, stop - start - a), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            vectors[a:a + len(x)] = x
        vectors.flush()
        del vectors
        (folder / "ids.json").write_text(json.dumps([f"doc{j}" for j in range(start, stop)]))
        (folder / "shard.json").write_text(json.dumps({
            "kind": "index-shard", "format": SHARD_FORMAT, "shard_index": i, "num_shards": shards, "start": start,
            "stop": stop, "num_docs": docs, "dim": dim, "shard_size": stop - start, "meta": meta}))


def measure(work: Path, out: Path, factory: str, mode: str, train_sample: int, add_batch: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-c", CHILD, str(work), str(out), factory, mode, str(train_sample), str(add_batch)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"merge child failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    child = json.loads(done.stdout.strip().splitlines()[-1])
    if peak <= before * 1024:  # an earlier child (baseline) had a higher peak: ru_maxrss is the max over children
        peak = child["vm_hwm"]
    return {**child, "peak_rss": peak, "index_bytes": sum(p.stat().st_size for p in out.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--train-sample", type=int, default=100_000)
    parser.add_argument("--add-batch", type=int, default=65536)
    parser.add_argument("--work", help="folder for the shards and the index (default: a temporary folder, removed after)")
    parser.add_argument("--baseline", action="store_true", help="also measure the in-memory concatenate-then-build merge")
    args = parser.parse_args()
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="densekit-merge-bench-"))
    try:
        work, out = root / "shards", root / "index"
        began = time.time()
        if not work.exists():
            write_shards(work, args.docs, args.dim, args.shards)
        write_s = time.time() - began
        vector_bytes = args.docs * args.dim * 4
        modes = ["stream"] + (["in-memory"] if args.baseline else [])
        for mode in modes:  # streaming first: ru_maxrss of children is a running maximum
            got = measure(work, out, args.factory, mode, args.train_sample, args.add_batch)
            print(json.dumps({
                "bench": "merge_memory", "merge": mode, "docs": args.docs, "dim": args.dim, "shards": args.shards,
                "factory": args.factory, "add_batch": args.add_batch, "vectors_gb": round(vector_bytes / 1e9, 3),
                "peak_rss_gb": round(got["peak_rss"] / 1e9, 3), "vm_hwm_gb": round(got["vm_hwm"] / 1e9, 3),
                "rss_after_imports_gb": round(got["rss_after_imports"] / 1e9, 3),
                "ratio": round(got["peak_rss"] / vector_bytes, 3), "target_ratio": 2.0,
                "index_gb": round(got["index_bytes"] / 1e9, 3), "merge_s": got["seconds"], "write_shards_s": round(write_s, 1),
                "threads": 1, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            }), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
