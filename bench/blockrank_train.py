"""BlockRank training step cost: today's loop (LM loss + attention InfoNCE, LoRA on every layer, all layers run)
vs aux-only (the InfoNCE alone, LoRA on layers up to the scoring layer, no layer above it runs). Same model,
same groups (scifact train queries, 1 qrels positive + 19 dense negatives, shuffled), steps alternating between
the two in one run; median seconds per step after a warm-up step.

    python bench/blockrank_train.py --steps 4 >> bench/results/blockrank_train_speed.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from densekit.eval.data import load_dataset, resolve_dataset
from densekit.reranker.blockrank import BlockRanker
from densekit.reranker.config import BlockRankConfig, BlockRankTrainOptions, RerankTrainConfig
from densekit.reranker.train import accumulate, make_groups
from densekit.retriever.examples import training_groups
from densekit.retriever.search import first_stage


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--group-size", type=int, default=20)
    p.add_argument("--doc-max-tokens", type=int, default=128)
    p.add_argument("--index", default="runs/bench-rerank/index-scifact-minilm")
    args = p.parse_args()
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ds = load_dataset(resolve_dataset("scifact"), "train")
    queries = dict(list(sorted((q, t) for q, t in ds.queries.items() if q in ds.qrels))[:args.steps + 1])
    run = first_stage("dense", ds.corpus, queries, 30, index_dir=args.index)
    groups = make_groups(training_groups(ds.corpus, queries, ds.qrels, run, 30), args.group_size, 0, 0)
    sides = {}
    for name, aux_only in (("LM + aux, all layers (today)", False), ("aux-only, layers <= scoring layer", True)):
        ranker = BlockRanker.from_pretrained(args.model, BlockRankConfig(doc_max_tokens=args.doc_max_tokens))
        layers = list(range(ranker.score_layer + 1)) if aux_only else None
        ranker.model = get_peft_model(ranker.model, LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                               layers_to_transform=layers))
        ranker.model.train()
        config = RerankTrainConfig(objective="blockrank", group_size=args.group_size, batch_size=1)
        sides[name] = (ranker, (config, BlockRankTrainOptions(aux_only=aux_only)), torch.optim.AdamW([w for w in ranker.model.parameters() if w.requires_grad], lr=1e-4), [])
    for step, group in enumerate(groups[:args.steps + 1]):
        for name, (ranker, (config, options), opt, times) in sides.items():  # alternate: shared load hits both
            t0 = time.perf_counter()
            accumulate(ranker, [group], config, step, lambda loss: loss.backward(), lambda v: None, options)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            print(f"step {step} {name}: {times[-1]:.1f} s", flush=True)
    seconds = {name: statistics.median(times[1:]) for name, (_, _, _, times) in sides.items()}
    today, aux = seconds.values()
    print(json.dumps({"bench": "blockrank_train_speed", "model": args.model, "group_size": args.group_size,
                      "doc_max_tokens": args.doc_max_tokens, "score_layer": next(iter(sides.values()))[0].score_layer,
                      "steps": args.steps, **{f"s_per_step {k}": round(v, 2) for k, v in seconds.items()},
                      "speed-up": round(today / aux, 2)}))


if __name__ == "__main__":
    main()
