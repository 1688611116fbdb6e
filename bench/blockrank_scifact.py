"""BlockRank on scifact: train SmolLM2-135M (LoRA) with LM + attention InfoNCE loss, rerank the dense top-k.

Same first stage, test queries and k as bench/rerank_scifact.py (all-MiniLM-L6-v2 Flat index; the first
``--max-queries`` test queries in sorted id order; top ``--rerank-top-k``), so its pointwise SFT row sits
beside these. Training groups: scifact train queries, 1 positive + (group size - 1) negatives from the
dense top-30, documents shuffled per step. Prints JSON lines: dense alone, BlockRank attention scores,
BlockRank decode (the decoded document first, the rest in first-stage order), with training seconds.

    python bench/blockrank_scifact.py --max-queries 50 --steps 40 --out runs/blockrank_scifact
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from rerank_scifact import LLM, Setup, train_seconds
from densekit.reranker.blockrank import BlockRanker
from densekit.reranker.config import BlockRankConfig, RerankTrainConfig
from densekit.reranker.train import train_reranker


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--max-queries", type=int, default=100)
    p.add_argument("--rerank-top-k", type=int, default=20)
    p.add_argument("--group-size", type=int, default=20)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--doc-max-tokens", type=int, default=128)
    p.add_argument("--aux-weight", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--modes", nargs="+", default=["attention", "decode"])
    p.add_argument("--out", default="runs/blockrank_scifact")
    args = p.parse_args()
    k, out = args.rerank_top_k, Path(args.out)

    setup = Setup.make(args.max_queries, k)
    report = setup.reporter("blockrank_scifact")
    report("dense (no rerank)", setup.first)
    groups = setup.train_groups()
    config = RerankTrainConfig(objective="blockrank", group_size=args.group_size, batch_size=1, lr=args.lr,
                               max_steps=args.steps, seed=args.seed, checkpoint_every=10, aux_weight=args.aux_weight)
    model = train_reranker(BlockRanker.from_pretrained(LLM, BlockRankConfig(doc_max_tokens=args.doc_max_tokens)),
                           groups, out / "train", config, resume=True)
    train_s = train_seconds(out / "train" / "train_log.jsonl")
    for mode in args.modes:
        start = time.perf_counter()
        run = model.rerank(setup.first, setup.test.corpus, setup.queries, top_k=k, mode=mode, show_progress=False)
        seconds = time.perf_counter() - start
        report(f"SmolLM2 BlockRank {mode} (LoRA r={config.lora_r}, {args.steps} steps x {args.group_size} docs)", run,
               train_seconds=train_s, score_layer=model.score_layer, queries_per_s=round(len(setup.queries) / seconds, 3))


if __name__ == "__main__":
    main()
