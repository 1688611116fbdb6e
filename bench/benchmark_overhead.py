"""The benchmark's own overhead: `densekit benchmark` against the same cells run one by one through `densekit eval`
(and the same comparisons through `densekit compare`), in the same run, as whole processes.

    python bench/benchmark_overhead.py --repeats 3 >> bench/results/benchmark_overhead.jsonl

Cells: BM25 and all-MiniLM-L6-v2 on scifact, nfcorpus and cisi (first 100 test queries), their dense indexes
already built in ``--indexes`` (both sides reuse them: the cost measured is the harness, not encoding). Each repeat
runs both sides in alternating order into fresh folders; prints one JSON line with every wall time and the ratio
of the medians (benchmark / one by one). Also checks that the benchmark encoded no corpus (its indexes are reused).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = ("scifact", "nfcorpus", "cisi")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
QUERIES = 100


def suite_text() -> str:
    parts = ['name = "overhead"\nbaseline = "bm25"\n']
    for name in DATASETS:
        parts.append(f'[[dataset]]\nname = "{name}"\nmax_queries = {QUERIES}\n')
    parts.append('[[system]]\nname = "bm25"\n')
    parts.append(f'[[system]]\nname = "dense"\nfirst_stage = "dense:{MODEL}"\n')
    return "\n".join(parts)


def timed(commands: list[list[str]]) -> float:
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def index_of(indexes: Path, name: str) -> Path:
    """The folder `densekit benchmark` keeps ``name``'s all-MiniLM-L6-v2 index in."""
    from densekit.eval.benchmark import _index_dir
    from densekit.eval.data import resolve_dataset

    return _index_dir(indexes, resolve_dataset(name), MODEL)


def one_by_one(work: Path, indexes: Path) -> list[list[str]]:
    commands = []
    for name in DATASETS:
        index = index_of(indexes, name)
        runs = {"bm25": work / f"{name}-bm25.trec", "dense": work / f"{name}-dense.trec"}
        commands.append(["densekit", "eval", "--data", name, "--max-queries", str(QUERIES), "--save-run", str(runs["bm25"])])
        commands.append(["densekit", "eval", "--data", name, "--max-queries", str(QUERIES), "--retriever", "dense",
                         "--model", MODEL, "--index", str(index), "--save-run", str(runs["dense"])])
        commands.append(["densekit", "compare", f"bm25={runs['bm25']}", f"dense={runs['dense']}", "--data", name,
                         "--max-queries", str(QUERIES), "--metrics", "ndcg@10"])
    return commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--indexes", default="runs/indexes", help="folder of the prebuilt dense indexes")
    args = parser.parse_args()
    indexes = Path(args.indexes).resolve()
    for name in DATASETS:
        if not index_of(indexes, name).is_dir():
            raise SystemExit(f"build the indexes first: densekit benchmark bench/beir.toml --out ... --indexes {indexes}")
    times = {"benchmark": [], "one_by_one": []}
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "suite.toml"
        suite.write_text(suite_text())
        before = sorted(p.name for p in indexes.iterdir())
        for repeat in range(args.repeats):
            sides = [("benchmark", [["densekit", "benchmark", str(suite), "--out", str(Path(tmp) / f"b{repeat}"),
                                     "--indexes", str(indexes)]]),
                     ("one_by_one", None)]
            for name, commands in (sides if repeat % 2 == 0 else sides[::-1]):
                if commands is None:
                    work = Path(tmp) / f"e{repeat}"
                    work.mkdir()
                    commands = one_by_one(work, indexes)
                times[name].append(round(timed(commands), 2))
        assert sorted(p.name for p in indexes.iterdir()) == before, "the benchmark built an index it should reuse"
    ratio = statistics.median(times["benchmark"]) / statistics.median(times["one_by_one"])
    print(json.dumps({"bench": "benchmark_overhead", "cells": len(DATASETS) * 2, "queries_per_dataset": QUERIES,
                      "seconds": times, "ratio_benchmark_over_one_by_one": round(ratio, 3),
                      "encoded_corpora": 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
