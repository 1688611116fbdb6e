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
import json
import time
from pathlib import Path

from densekit.eval.reranking import RerankTask, first_stage_groups
from densekit.reranker.blockrank import BlockRanker
from densekit.reranker.config import BlockRankConfig, BlockRankTrainOptions, RerankTrainConfig
from densekit.reranker.train import train_reranker
from densekit.core.checkpoints import read_train_log

LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
INDEX = "runs/bench-rerank/index-scifact-minilm"  # the dense index bench/rerank_scifact.py and bench/rerank.py use


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
    p.add_argument("--paper-defaults", action="store_true",
                   help="score as the paper (layer 60%% depth, last 2 query tokens, summed mass, all heads) instead of "
                   "the probed defaults of reranker/blockrank.py (the README's table used the paper's)")
    p.add_argument("--index", default=INDEX, help="dense index of the scifact corpus (built there when absent)")
    args = p.parse_args()
    k, out = args.rerank_top_k, Path(args.out)

    task = RerankTask.load("scifact", "test", k, args.max_queries, index_dir=args.index)

    def report(system: str, run: dict, **extra) -> None:
        print(json.dumps({"bench": "blockrank_scifact", **task.row(system, run, **extra)}), flush=True)

    report("dense (no rerank)", task.first)
    groups = first_stage_groups("scifact", "train", depth=30, index_dir=args.index)
    config = RerankTrainConfig(objective="blockrank", group_size=args.group_size, batch_size=1, lr=args.lr,
                               max_steps=args.steps, seed=args.seed, checkpoint_every=10)
    ranker = BlockRanker.from_pretrained(LLM, BlockRankConfig(doc_max_tokens=args.doc_max_tokens))
    if args.paper_defaults:
        heads = ranker.model.config.num_attention_heads
        ranker.config = BlockRankConfig(doc_max_tokens=args.doc_max_tokens, score_layer=round(0.6 * ranker.n_layers),
                                        signal_tokens=2, doc_mass="sum", score_heads=list(range(heads)))
    model = train_reranker(ranker,
                           groups, out / "train", config, resume=True,
                           options=BlockRankTrainOptions(aux_weight=args.aux_weight))
    train_s = round(read_train_log(out / "train")["seconds"], 1)
    for mode in args.modes:
        start = time.perf_counter()
        run = model.rerank(task.first, task.dataset.corpus, task.queries, top_k=k, mode=mode, show_progress=False)
        seconds = time.perf_counter() - start
        report(f"SmolLM2 BlockRank {mode} (LoRA r={config.lora_r}, {args.steps} steps x {args.group_size} docs)", run,
               train_seconds=train_s, score_layer=model.score_layer, queries_per_s=round(len(task.queries) / seconds, 3))


if __name__ == "__main__":
    main()
