"""SmolLM2-135M pointwise reranker on scifact: no rerank vs zero-shot prompt vs SFT vs CL.

First stage: densekit dense retrieval with all-MiniLM-L6-v2 (Flat index, built in or reused from ``--index``,
by default bench/rerank.py's). The reranker reranks the
top ``--rerank-top-k`` of the first ``--max-queries`` test queries (sorted ids; CPU budget). SFT and
CL share everything but the objective: base model, LoRA, prompt, training groups (scifact train
queries, 1 positive + dense top-30 negatives), steps, batch, learning rate, seed. Prints JSON lines
(nDCG@10, Recall@k -- unchanged by reranking, as a check -- training seconds, scoring docs/s) and
draws the per-step SFT and CL gradient weights of both runs (the paper's analysis, in small).

    python bench/rerank_scifact.py --max-queries 50 --steps 30 --out runs/rerank_scifact
    python bench/rerank_scifact.py --max-queries 50 --baselines-only      # dense and random-order rows
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from densekit.eval.reranking import RerankTask, first_stage_groups
from densekit.eval.plots import plot_gradient_weights
from densekit.eval.report import random_order
from densekit.reranker.config import RerankerConfig, RerankTrainConfig
from densekit.reranker.pointwise import LLMReranker
from densekit.reranker.train import train_reranker
from densekit.core.checkpoints import read_train_log

LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
INDEX = "runs/bench-rerank/index-scifact-minilm"  # all-MiniLM-L6-v2 Flat index of the scifact corpus (bench/rerank.py's)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-queries", type=int, default=100)
    p.add_argument("--rerank-top-k", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--doc-max-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="runs/rerank_scifact")
    p.add_argument("--index", default=INDEX, help="dense index of the scifact corpus (built there when absent)")
    p.add_argument("--objectives", nargs="+", default=["sft", "cl"])
    p.add_argument("--baselines-only", action="store_true", help="only the dense and random-order rows")
    args = p.parse_args()
    out = Path(args.out)
    k = args.rerank_top_k

    task = RerankTask.load("scifact", "test", k, args.max_queries, index_dir=args.index)

    def report(system: str, run: dict, **extra) -> None:
        print(json.dumps({"bench": "rerank_scifact", **task.row(system, run, **extra)}), flush=True)

    report("dense (no rerank)", task.first)
    shuffles = [random_order(task.first, task.dataset.qrels, shuffles=1, seed=seed, top_k=k) for seed in range(20)]
    chance = [float(np.mean(list(per_query.values()))) for per_query in shuffles]
    print(json.dumps({"bench": "rerank_scifact", "system": f"random order of the top {k} (20 shuffles)",
                      "queries": len(task.queries), "rerank_top_k": k, "ndcg@10": round(float(np.mean(chance)), 4),
                      "ndcg@10_min": round(min(chance), 4), "ndcg@10_max": round(max(chance), 4)}), flush=True)
    if args.baselines_only:
        return

    def rerank_with(reranker: LLMReranker, system: str, **extra) -> None:
        start = time.perf_counter()
        run = reranker.rerank(task.first, task.dataset.corpus, task.queries, top_k=k, batch_size=8, show_progress=False)
        seconds = time.perf_counter() - start
        report(system, run, docs_per_s=round(len(task.queries) * k / seconds, 2), **extra)

    config = RerankerConfig(doc_max_tokens=args.doc_max_tokens)
    rerank_with(LLMReranker.from_pretrained(LLM, config), "SmolLM2 zero-shot")

    groups = first_stage_groups("scifact", "train", depth=30, index_dir=args.index)
    logs = {}
    for objective in args.objectives:
        tconf = RerankTrainConfig(objective=objective, group_size=args.group_size, batch_size=args.batch_size,
                                  lr=args.lr, max_steps=args.steps, seed=args.seed, checkpoint_every=20,
                                  temperature=1.0)
        model = train_reranker(LLMReranker.from_pretrained(LLM, config), groups, out / objective, tconf, resume=True)
        trained = read_train_log(out / objective)
        logs[objective.upper()] = trained["log"]
        rerank_with(model, f"SmolLM2 {objective.upper()} (LoRA r={tconf.lora_r}, {args.steps} steps)",
                    train_seconds=round(trained["seconds"], 1), groups_seen=args.steps * args.batch_size)
    plot_gradient_weights(logs, Path("bench/results/rerank_gradient_weights.png"), overwrite=True)


if __name__ == "__main__":
    main()
