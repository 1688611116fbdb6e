"""SmolLM2-135M pointwise reranker on scifact: no rerank vs zero-shot prompt vs SFT vs CL.

First stage: densekit dense retrieval with all-MiniLM-L6-v2 (Flat index). The reranker reranks the
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
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densekit.eval.data import load_dataset, resolve_dataset, select_queries
from densekit.eval.pipeline import evaluate
from densekit.retriever.examples import training_groups
from densekit.reranker.config import RerankerConfig, RerankTrainConfig
from densekit.reranker.pointwise import LLMReranker
from densekit.reranker.train import train_reranker
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import Index
from densekit.retriever.models import cache_dir
from densekit.retriever.runs import rank
from densekit.retriever.text import doc_text

LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
RETRIEVER = "sentence-transformers/all-MiniLM-L6-v2"


def dense_index(corpus: dict, encoder: DualEncoder) -> Index:
    cached = cache_dir() / "bench-scifact-minilm.npy"  # written by bench/encode.py (same model, same texts)
    vectors = np.load(cached) if cached.exists() else encoder.encode([doc_text(d) for d in corpus.values()], show_progress=True)
    return Index.build(vectors, list(corpus))


@dataclass
class Setup:
    """What the scifact reranking benches share: data, the first ``max_queries`` test queries (sorted
    ids), the dense first stage (all-MiniLM-L6-v2, Flat) and its top-100 run, and a JSON-line reporter."""

    test: object
    train: object
    queries: dict
    encoder: DualEncoder
    index: Index
    first: dict
    k: int

    @classmethod
    def make(cls, max_queries: int, k: int) -> "Setup":
        folder = resolve_dataset("scifact")
        test, train = load_dataset(folder, "test"), load_dataset(folder, "train")
        queries = select_queries(test.queries, max_queries)
        encoder = DualEncoder.from_pretrained(RETRIEVER)
        index = dense_index(test.corpus, encoder)
        qids = list(queries)
        first = index.search_run(qids, encoder.encode([queries[q] for q in qids], is_query=True), 100)
        return cls(test, train, queries, encoder, index, first, k)

    def train_groups(self, depth: int = 30) -> list[dict]:
        """scifact train queries: qrels positives + the dense top-``depth`` minus positives as negatives."""
        tq = list(self.train.queries)
        run = self.index.search_run(tq, self.encoder.encode([self.train.queries[q] for q in tq], is_query=True), depth)
        return training_groups(self.train.corpus, self.train.queries, self.train.qrels, run, depth=depth)

    def shuffled(self, seed: int) -> dict:
        """The first stage with each query's top ``k`` in a random order (the chance level of a reranker)."""
        rng = random.Random(seed)
        out = {}
        for qid, docs in self.first.items():
            ranking = rank(docs)
            head = rng.sample(ranking[:self.k], min(self.k, len(ranking)))
            out[qid] = {d: float(len(ranking) - i) for i, d in enumerate(head + ranking[self.k:])}
        return out

    def reporter(self, bench: str):
        metrics = ["ndcg@10", f"recall@{self.k}"]

        def report(system: str, run: dict, **extra) -> None:
            _, means = evaluate(run, self.test.qrels, metrics)
            print(json.dumps({"bench": bench, "system": system, "queries": len(self.queries), "rerank_top_k": self.k,
                              **{m: round(v, 4) for m, v in means.items()}, **extra}), flush=True)

        return report


def train_seconds(log: Path) -> float:
    """Training time summed over the steps of a run's log, so a resumed run reports its full cost."""
    return round(sum(json.loads(line)["seconds"] for line in log.read_text().splitlines()), 1)


def plot_weights(logs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, kind in zip(axes, ("sft", "cl")):
        for run, log in logs.items():
            rows = [json.loads(l) for l in log.read_text().splitlines()]
            steps = [r["step"] for r in rows]
            ax.plot(steps, [r[f"w_{kind}_pos"] for r in rows], label=f"{run} run: positive")
            ax.plot(steps, [r[f"w_{kind}_neg"] for r in rows], linestyle="--", label=f"{run} run: negatives")
        ax.set_title(f"{kind.upper()} gradient weight per example")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


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
    p.add_argument("--objectives", nargs="+", default=["sft", "cl"])
    p.add_argument("--baselines-only", action="store_true", help="only the dense and random-order rows")
    args = p.parse_args()
    out = Path(args.out)
    k = args.rerank_top_k

    setup = Setup.make(args.max_queries, k)
    report = setup.reporter("rerank_scifact")
    report("dense (no rerank)", setup.first)
    chance = [evaluate(setup.shuffled(seed), setup.test.qrels, ["ndcg@10"])[1]["ndcg@10"] for seed in range(20)]
    print(json.dumps({"bench": "rerank_scifact", "system": f"random order of the top {k} (20 shuffles)",
                      "queries": len(setup.queries), "rerank_top_k": k, "ndcg@10": round(float(np.mean(chance)), 4),
                      "ndcg@10_min": round(min(chance), 4), "ndcg@10_max": round(max(chance), 4)}), flush=True)
    if args.baselines_only:
        return

    def rerank_with(reranker: LLMReranker, system: str, **extra) -> None:
        start = time.perf_counter()
        run = reranker.rerank(setup.first, setup.test.corpus, setup.queries, top_k=k, batch_size=8, show_progress=False)
        seconds = time.perf_counter() - start
        report(system, run, docs_per_s=round(len(setup.queries) * k / seconds, 2), **extra)

    config = RerankerConfig(doc_max_tokens=args.doc_max_tokens)
    rerank_with(LLMReranker.from_pretrained(LLM, config), "SmolLM2 zero-shot")

    groups = setup.train_groups()
    logs = {}
    for objective in args.objectives:
        tconf = RerankTrainConfig(objective=objective, group_size=args.group_size, batch_size=args.batch_size,
                                  lr=args.lr, max_steps=args.steps, seed=args.seed, checkpoint_every=20,
                                  temperature=1.0)
        model = train_reranker(LLMReranker.from_pretrained(LLM, config), groups, out / objective, tconf, resume=True)
        logs[objective.upper()] = out / objective / "train_log.jsonl"
        rerank_with(model, f"SmolLM2 {objective.upper()} (LoRA r={tconf.lora_r}, {args.steps} steps)",
                    train_seconds=train_seconds(logs[objective.upper()]), groups_seen=args.steps * args.batch_size)
    plot_weights(logs, Path("bench/results/rerank_gradient_weights.png"))


if __name__ == "__main__":
    main()
