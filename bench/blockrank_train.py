"""BlockRank training step cost through the engine ``densekit train reranker --kind blockrank`` runs
(``train_reranker``): LM loss + attention InfoNCE (LoRA on every layer, all layers run) vs aux-only (the InfoNCE
alone, LoRA on layers up to the scoring layer, no layer above it runs). Same model, same groups (scifact train
queries, 1 qrels positive + 19 dense negatives, shuffled), one run each; median of the engine's logged seconds per
step after a warm-up step.

    python bench/blockrank_train.py --steps 4 >> bench/results/blockrank_train_speed.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

from densekit.eval.data import load_dataset, resolve_dataset
from densekit.reranker.blockrank import BlockRanker
from densekit.reranker.config import BlockRankConfig, BlockRankTrainOptions, RerankTrainConfig
from densekit.retriever.examples import training_groups
from densekit.retriever.first_stage import first_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--group-size", type=int, default=20)
    p.add_argument("--doc-max-tokens", type=int, default=128)
    p.add_argument("--index", default="runs/bench-rerank/index-scifact-minilm")
    args = p.parse_args()
    from rerank_train import step_seconds  # bench/rerank_train.py: a run through the engine, its steps' seconds

    torch.manual_seed(0)
    ds = load_dataset(resolve_dataset("scifact"), "train")
    queries = dict(list(sorted((q, t) for q, t in ds.queries.items() if q in ds.qrels))[:args.steps + 1])
    run = first_stage("dense", ds.corpus, queries, 30, index_dir=args.index)
    examples = training_groups(ds.corpus, queries, ds.qrels, run, 30)
    config = RerankTrainConfig(objective="blockrank", group_size=args.group_size, batch_size=1, lr=1e-4,
                               max_steps=args.steps + 1, warmup_ratio=0.0, checkpoint_every=10 ** 6)
    seconds, layer = {}, None
    for name, aux_only in (("LM + aux, all layers", False), ("aux-only, layers <= scoring layer", True)):
        ranker = BlockRanker.from_pretrained(args.model, BlockRankConfig(doc_max_tokens=args.doc_max_tokens))
        layer = ranker.score_layer
        times = step_seconds(ranker, examples, config, BlockRankTrainOptions(aux_only=aux_only))
        print(f"{name}: {[round(x, 1) for x in times]} s a step", flush=True)
        seconds[name] = statistics.median(times[1:])  # step 1: warm-up
    today, aux = seconds.values()
    print(json.dumps({"bench": "blockrank_train_speed", "through": "engine (train_reranker)", "model": args.model,
                      "group_size": args.group_size, "doc_max_tokens": args.doc_max_tokens, "score_layer": layer,
                      "steps": args.steps, **{f"s_per_step {k}": round(v, 2) for k, v in seconds.items()},
                      "speed-up": round(today / aux, 2)}))


if __name__ == "__main__":
    main()
