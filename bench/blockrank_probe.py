"""Zero-shot BlockRank probe (``densekit.eval.probe``): which layer, signal tokens, per-document reduction and
heads of a causal LM's attention rank documents, measured on tuning splits, never on test or held-out data.

Tuning splits (``--tune``, default: scifact train, nfcorpus dev, TREC DL20), the first 40 judged queries of each in
sorted id order (less those with no first-stage candidate, named in the log), each with its first-stage top 20 (BM25, as the BEIR table's rerankers) in a seeded random order;
documents cut to 128 tokens. One forward per query through every layer; per-query masses are cached in ``--out``
(an interrupted run resumes). Every (layer, choice) is scored on each dataset; the pooled figure is their mean, each
dataset weighted equally (``probe.pooled_rows``), and the pooled best row gives the shipped default
(``reranker/blockrank.py: PROBED``, held to this file by tests/test_blockrank.py).

    python bench/blockrank_probe.py --model HuggingFaceTB/SmolLM2-135M-Instruct

Appends to ``bench/results/blockrank_probe.jsonl``: per dataset its rows and a summary line (best row and setting,
the paper's choice, random order), then one pooled summary (``"pooled": true``: the pooled best row, its setting,
each dataset's own best beside it); writes the heat map ``bench/results/blockrank_probe-<model>.png`` (pooled).
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
from densekit.eval.probe import (METRIC, REDUCES, SIGNALS, best_pooled_setting, best_setting, pooled_rows, probe,
                                 random_order_ndcg)
from densekit.eval.report import shuffled
from densekit.retriever.first_stage import first_stage

TUNE = ["scifact:train", "nfcorpus:dev", "msmarco-trecdl-rerank:dl20"]


def dataset_masses(ranker, name: str, split: str, args) -> tuple[dict, dict, dict]:
    """``(masses, docs, qrels)`` of one tuning split (masses cached per query under ``--out``)."""
    ds = load_dataset(resolve_dataset(name), split)
    queries = select_queries({q: t for q, t in ds.queries.items() if q in ds.qrels}, args.queries)
    index = None if args.first_stage == "bm25" else str(Path(args.out) / f"index-{name}")
    run = first_stage(args.first_stage, ds.corpus, queries, args.depth, index_dir=index)
    empty = sorted(q for q in queries if not run.get(q))  # no first-stage candidate: nothing to rank by attention
    if empty:
        print(f"{name} {split}: {len(empty)} of {len(queries)} queries have no first-stage candidate and are left out: "
              f"{', '.join(empty)}", flush=True)
    queries = {q: t for q, t in queries.items() if q not in empty}
    docs = {q: shuffled(sorted(run[q], key=lambda d: -run[q][d]), q) for q in queries}
    cache = Path(args.out) / args.model.replace("/", "--") / f"{name}-{split}-{args.first_stage}"
    cache.mkdir(parents=True, exist_ok=True)
    masses, start = {}, time.perf_counter()
    for i, q in enumerate(sorted(queries)):
        path = cache / f"{q}.npy"
        if not path.exists():
            m = ranker.layer_masses(queries[q], [ds.corpus[d] for d in docs[q]]).numpy()
            np.save(cache / f".{q}.npy", m)
            os.replace(cache / f".{q}.npy", path)
            print(f"{name} {split}: {i + 1}/{len(queries)} queries ({time.perf_counter() - start:.0f} s)", flush=True)
        masses[q] = np.load(path)
    return masses, docs, ds.qrels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--tune", nargs="+", default=TUNE, help="tuning splits as dataset:split (never a held-out dataset)")
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--first-stage", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--best-k", type=int, default=4, help="heads kept by the best-heads choice")
    p.add_argument("--out", default="runs/blockrank-probe")
    p.add_argument("--results", default="bench/results")
    args = p.parse_args()

    from densekit.reranker.blockrank import BlockRanker

    ranker = BlockRanker.from_pretrained(args.model)
    results, slug = Path(args.results), args.model.replace("/", "--")
    data, rows_by, lines, best_by = {}, {}, [], {}
    for source in args.tune:
        name, split = source.split(":")
        masses, docs, qrels = data[source] = dataset_masses(ranker, name, split, args)
        rows = rows_by[source] = probe(masses, docs, qrels, args.best_k)
        paper = next(r for r in rows if r["layer"] == round(0.6 * ranker.n_layers) and r["signal"] == "last 2"
                     and r["doc_mass"] == "sum" and r["heads"] == "all")
        best = best_by[source] = max(rows, key=lambda r: r[METRIC])
        lines += [{"bench": "blockrank_probe", "model": args.model, "split": source, **r} for r in rows]
        lines.append({"bench": "blockrank_probe", "summary": True, "model": args.model, "split": source,
                      "queries": len(masses), "depth": args.depth, "first_stage": args.first_stage, "best": best,
                      "setting": best_setting(rows, masses, docs, qrels, args.best_k), "paper_choice": paper,
                      "random_order": random_order_ndcg(docs, qrels)})
    rows = pooled_rows(rows_by)
    summary = {"bench": "blockrank_probe", "summary": True, "pooled": True, "model": args.model, "tune": args.tune,
               "queries": {s: len(d[0]) for s, d in data.items()}, "depth": args.depth, "first_stage": args.first_stage,
               "best": max(rows, key=lambda r: r[METRIC]), "setting": best_pooled_setting(rows, data, args.best_k),
               "best_by_dataset": best_by,
               "random_order": float(np.mean([random_order_ndcg(d[1], d[2]) for d in data.values()]))}
    with open(results / "blockrank_probe.jsonl", "a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines + [summary])
    print(json.dumps(summary))
    columns = [(s, r, h) for s in SIGNALS for r in REDUCES for h in ("all", f"best {args.best_k}")]
    layers = sorted({r["layer"] for r in rows})
    table = {(r["layer"], r["signal"], r["doc_mass"], r["heads"]): r[METRIC] for r in rows}
    print(plot_heatmap([[table[(l, *c)] for c in columns] for l in layers], [f"layer {l}" for l in layers],
                       [f"{s} / {r} / {h} heads" for s, r, h in columns], results / f"blockrank_probe-{slug}.png",
                       f"{args.model}: attention nDCG@10, mean of {len(data)} tuning splits "
                       f"(random order {summary['random_order']:.3f})", overwrite=True))


if __name__ == "__main__":
    main()
