"""Pairs of rows of the BEIR table compared head to head, on every dataset: trained encoders against zero-shot
all-MiniLM-L6-v2, MW against InfoNCE (trained on scifact, and on the scifact + nfcorpus mixture), the mixture against
scifact alone, CL against SFT (cross-encoders), the mixture-trained reranker against its
scifact-only version, query likelihood with Gemma-3-270M against SmolLM2-135M, and SmolLM2's yes/no prompt against
its query likelihood.

Reads the finished cells of ``densekit benchmark bench/beir.toml`` (their saved runs): per dataset and system the
nDCG@10 and, for the encoders, the global ROC-AUC@100 (all relevant vs all non-relevant (query, document) scores of
the top 100 of every query: one threshold for all queries, the quantity the MW loss targets; ``eval.metrics.roc_auc``);
and, per pair, paired tests (t-test and randomisation, ``eval.report``) over the per-query nDCG@10 (and per-query
AUC@100 for encoders), per dataset and pooled over the held-out datasets (``POOL``: their queries together).

    python bench/paired_table.py > bench/results/paired.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from densekit.eval.benchmark import _cell_dir, load_suite
from densekit.eval.data import load_dataset, resolve_dataset, select_queries
from densekit.eval.metrics import compute, roc_auc, roc_auc_per_query
from densekit.eval.runfile import read_run
from densekit.eval.report import randomisation_test, ttest, win_tie_loss

POOL = ("vaswani", "cranfield", "cisi", "dbpedia-entity-sample", "dl19")
BEIR_POOL = POOL[:4]  # issue 24's pool for the encoders: the BEIR held-out datasets, without TREC DL19
ENCODERS = ("all-MiniLM-L6-v2", "infonce-scifact", "mw-scifact", "margin-mse-scifact", "infonce-mix", "mw-mix")
PAIRS = (("infonce-scifact", "all-MiniLM-L6-v2"), ("mw-scifact", "all-MiniLM-L6-v2"), ("margin-mse-scifact", "all-MiniLM-L6-v2"),
         ("mw-scifact", "infonce-scifact"), ("margin-mse-scifact", "infonce-scifact"),
         ("infonce-mix", "all-MiniLM-L6-v2"), ("mw-mix", "all-MiniLM-L6-v2"), ("mw-mix", "infonce-mix"),
         ("infonce-mix", "infonce-scifact"), ("mw-mix", "mw-scifact"),
         ("cross-cl-scifact", "cross-sft-scifact"), ("cross-cl-scifact+fused", "cross-sft-scifact+fused"),
         ("cross-cl-mix", "cross-cl-scifact"), ("cross-cl-mix+fused", "cross-cl-scifact+fused"),
         ("qlm-gemma3", "qlm-smollm2"), ("qlm-gemma3+fused", "qlm-smollm2+fused"),
         ("yesno-smollm2", "qlm-smollm2"), ("yesno-smollm2+fused", "qlm-smollm2+fused"))


def paired(a: dict[str, float], b: dict[str, float]) -> dict:
    common = sorted(set(a) & set(b))
    x, y = [a[q] for q in common], [b[q] for q in common]
    return {"queries": len(common), "diff": float(np.mean(x) - np.mean(y)), "p_ttest": ttest(x, y)[1],
            "p_random": randomisation_test(x, y), **win_tie_loss(x, y)}


def metrics_of(system: str) -> tuple[str, ...]:
    return ("ndcg@10", "auc@100") if system in ENCODERS else ("ndcg@10",)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="bench/beir.toml")
    p.add_argument("--out", default="bench/results/beir")
    args = p.parse_args()
    suite = load_suite(args.suite)
    systems = {s.name: s for s in suite.systems}
    present = [n for n in dict.fromkeys(n for pair in PAIRS for n in pair) if n in systems]
    pools = {POOL: {n: {"ndcg@10": {}, "auc@100": {}} for n in present},
             BEIR_POOL: {n: {"ndcg@10": {}, "auc@100": {}} for n in present}}
    for d in suite.datasets:
        ds = load_dataset(resolve_dataset(d.data or d.name), d.split, check_ids=False)
        queries = select_queries({q: t for q, t in ds.queries.items() if q in ds.qrels}, d.max_queries)
        qrels = {q: ds.qrels[q] for q in queries}
        per = {}
        for name in present:
            run = read_run(Path(_cell_dir(Path(args.out), d, systems[name])) / "run.trec.gz")
            run = {q: run.get(q, {}) for q in queries}
            ndcg = {q: v["ndcg@10"] for q, v in compute(qrels, run, ["ndcg@10"], relevance_level=d.relevance_level).items()}
            auc = roc_auc_per_query(qrels, run, 100, d.relevance_level) if name in ENCODERS else {}
            per[name] = {"ndcg@10": ndcg, "auc@100": auc}
            row = {"bench": "paired_system", "dataset": d.name, "role": d.role, "system": name, "queries": len(ndcg),
                   "ndcg@10": float(np.mean(list(ndcg.values())))}
            if name in ENCODERS:
                row["global_auc@100"] = roc_auc(qrels, run, 100, d.relevance_level)
            print(json.dumps(row))
            for pool, pooled in pools.items():
                if d.name in pool:
                    for metric in ("ndcg@10", "auc@100"):
                        pooled[name][metric].update({f"{d.name}\0{q}": v for q, v in per[name][metric].items()})
        for a, b in PAIRS:
            if a in per and b in per:
                print(json.dumps({"bench": "paired", "dataset": d.name, "role": d.role, "system": a, "against": b,
                                  **{m: paired(per[a][m], per[b][m]) for m in metrics_of(a)}}))
    for pool, pooled in pools.items():
        for a, b in PAIRS:
            if a in pooled and b in pooled and (pool == POOL or a in ENCODERS):
                print(json.dumps({"bench": "paired", "dataset": "heldout pool (" + ", ".join(pool) + ")", "role": "heldout",
                                  "system": a, "against": b,
                                  **{m: paired(pooled[a][m], pooled[b][m]) for m in metrics_of(a)}}))


if __name__ == "__main__":
    main()
