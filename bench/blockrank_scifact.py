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

from eval.data import load_dataset, resolve_dataset, select_queries
from eval.pipeline import evaluate, training_groups
from rerank_scifact import LLM, RETRIEVER, dense_index
from reranker.blockrank import BlockRankConfig, BlockRanker
from reranker.train import RerankTrainConfig, train_reranker
from retriever.encoder import DualEncoder


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

    folder = resolve_dataset("scifact")
    test, train = load_dataset(folder, "test"), load_dataset(folder, "train")
    queries = select_queries(test.queries, args.max_queries)
    encoder = DualEncoder.from_pretrained(RETRIEVER)
    index = dense_index(test.corpus, encoder)
    qids = list(queries)
    first = index.search_run(qids, encoder.encode([queries[q] for q in qids], is_query=True), 100)
    metrics = ["ndcg@10", f"recall@{k}"]

    def report(system: str, run: dict, **extra) -> None:
        _, means = evaluate(run, test.qrels, metrics)
        print(json.dumps({"bench": "blockrank_scifact", "system": system, "queries": len(qids), "rerank_top_k": k,
                          **{m: round(v, 4) for m, v in means.items()}, **extra}), flush=True)

    report("dense (no rerank)", first)
    tq = list(train.queries)
    groups = training_groups(train.corpus, train.queries, train.qrels,
                             index.search_run(tq, encoder.encode([train.queries[q] for q in tq], is_query=True), 30), depth=30)
    config = RerankTrainConfig(objective="blockrank", group_size=args.group_size, batch_size=1, lr=args.lr,
                               max_steps=args.steps, seed=args.seed, checkpoint_every=10, aux_weight=args.aux_weight)
    start = time.perf_counter()
    model = train_reranker(BlockRanker.from_pretrained(LLM, BlockRankConfig(doc_max_tokens=args.doc_max_tokens)),
                           groups, out / "train", config, resume=True)
    train_s = round(time.perf_counter() - start, 1)
    for mode in args.modes:
        start = time.perf_counter()
        run = model.rerank(first, test.corpus, queries, top_k=k, mode=mode, show_progress=False)
        seconds = time.perf_counter() - start
        report(f"SmolLM2 BlockRank {mode} (LoRA r={config.lora_r}, {args.steps} steps x {args.group_size} docs)", run,
               train_seconds=train_s, score_layer=model.score_layer, queries_per_s=round(len(qids) / seconds, 3))


if __name__ == "__main__":
    main()
