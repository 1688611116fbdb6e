"""Zero-shot BlockRank probe (``densekit.eval.probe``): which layer, signal tokens, per-document reduction and
heads of a causal LM's attention rank documents, measured on a tuning split, never on test.

Tuning split: scifact train, the first 40 judged queries in sorted id order (the queries ``bench/rerank.py``
tunes fusion on; ``bench/rerank_train.py`` holds them out of training), each with its densekit dense
(all-MiniLM-L6-v2, Flat) top 20 in a seeded random order; documents cut to 128 tokens. One forward per query
through every layer; per-query masses are cached in ``--out`` (an interrupted run resumes).

    python bench/blockrank_probe.py --model HuggingFaceTB/SmolLM2-135M-Instruct

Prints and appends to ``bench/results/blockrank_probe.jsonl``: one line per (layer, choice) and a summary line
(best row, the ``BlockRankConfig`` fields it gives, the paper's choice and random order on the same queries);
writes the heat map ``bench/results/blockrank_probe-<model>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from densekit.eval.data import load_dataset, resolve_dataset, select_queries
from densekit.eval.plots import plot_heatmap
from densekit.eval.probe import METRIC, REDUCES, SIGNALS, best_setting, probe, random_order_ndcg
from densekit.eval.report import shuffled
from densekit.retriever.search import first_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--best-k", type=int, default=4, help="heads kept by the best-heads choice")
    p.add_argument("--index", default="runs/bench-rerank/index-scifact-minilm", help="dense index of the scifact corpus")
    p.add_argument("--out", default="runs/blockrank-probe")
    p.add_argument("--results", default="bench/results")
    args = p.parse_args()

    from densekit.reranker.blockrank import BlockRanker

    ds = load_dataset(resolve_dataset("scifact"), "train")
    queries = select_queries({q: t for q, t in ds.queries.items() if q in ds.qrels}, args.queries)
    run = first_stage("dense", ds.corpus, queries, args.depth, index_dir=args.index)
    docs = {q: shuffled(sorted(run[q], key=lambda d: -run[q][d]), q) for q in queries}
    slug = args.model.replace("/", "--")
    cache = Path(args.out) / slug
    cache.mkdir(parents=True, exist_ok=True)
    ranker = BlockRanker.from_pretrained(args.model)
    masses, start = {}, time.perf_counter()
    for i, q in enumerate(sorted(queries)):
        path = cache / f"{q}.npy"
        if not path.exists():
            m = ranker.layer_masses(queries[q], [ds.corpus[d] for d in docs[q]]).numpy()
            np.save(cache / f".{q}.npy", m)
            os.replace(cache / f".{q}.npy", path)
            print(f"{i + 1}/{len(queries)} queries ({time.perf_counter() - start:.0f} s)", flush=True)
        masses[q] = np.load(path)
    rows = probe(masses, docs, ds.qrels, args.best_k)
    setting = best_setting(rows, masses, docs, ds.qrels, args.best_k)
    paper = next(r for r in rows if r["layer"] == round(0.6 * ranker.n_layers) and r["signal"] == "last 2"
                 and r["doc_mass"] == "sum" and r["heads"] == "all")
    best = max(rows, key=lambda r: r[METRIC])
    summary = {"bench": "blockrank_probe", "summary": True, "model": args.model, "queries": len(queries), "depth": args.depth,
               "best": best, "setting": setting, "paper_choice": paper, "random_order": random_order_ndcg(docs, ds.qrels),
               "split": "scifact train, first 40 judged queries (sorted ids)"}
    lines = [{"bench": "blockrank_probe", "model": args.model, **r} for r in rows] + [summary]
    results = Path(args.results)
    with open(results / "blockrank_probe.jsonl", "a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    print(json.dumps(summary))
    columns = [(s, r, h) for s in SIGNALS for r in REDUCES for h in ("all", f"best {args.best_k}")]
    layers = sorted({r["layer"] for r in rows})
    table = {(r["layer"], r["signal"], r["doc_mass"], r["heads"]): r[METRIC] for r in rows}
    print(plot_heatmap([[table[(l, *c)] for c in columns] for l in layers], [f"layer {l}" for l in layers],
                       [f"{s} / {r} / {h} heads" for s, r, h in columns], results / f"blockrank_probe-{slug}.png",
                       f"{args.model}: attention nDCG@10 on {len(queries)} scifact train queries "
                       f"(random order {summary['random_order']:.3f})", overwrite=True))


if __name__ == "__main__":
    main()
