"""Fine-tune all-MiniLM-L6-v2 on scifact train with InfoNCE and with MW, evaluate on scifact test.

Same steps, batch, hard negatives, seed and learning rate for both losses; only the objective differs.
Prints JSON lines: zero-shot, infonce, mw (nDCG@10, Recall@100, global AUC@100 of the test run),
and a training-throughput line: densekit's loop vs sentence-transformers' MultipleNegativesRankingLoss
on the same model, batch and texts, timed in the same run.

    python bench/train_scifact.py --epochs 2 --batch-size 16 --out runs/train_scifact
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from densekit.eval.data import load_dataset, resolve_dataset
from densekit.eval.metrics import evaluate
from densekit.retriever import examples as ex
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import Index
from densekit.core.models import cache_dir
from densekit.retriever.mining import dense_positive_scores, select_negatives
from densekit.retriever.search import build_index
from densekit.retriever.config import TrainConfig
from densekit.retriever.train import RetrieverStep, train

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
METRICS = ["ndcg@10", "recall@100"]


def test_metrics(encoder: DualEncoder, test) -> tuple[dict, object]:
    index = build_index(test.corpus, encoder, None, show_progress=False)
    qids = list(test.queries)
    run = index.search_run(qids, encoder.encode([test.queries[q] for q in qids], is_query=True), 100)
    _, means = evaluate(run, test.qrels, METRICS, auc_k=100)
    return {k: round(v, 4) for k, v in means.items()}, index


def throughput(batch_size: int, examples: list[dict], steps: int) -> dict:
    """samples/s of one optimizer step on identical batches: densekit InfoNCE loop vs ST MNRL.

    Both models take one untimed warm-up step, then the timed steps alternate (densekit, ST, densekit,
    ...) so that background load and thermal drift hit both sides alike.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from densekit.core.models import resolve

    data = ex.batches(examples, batch_size, 1, seed=0, epoch=0)[:steps + 1]
    enc = DualEncoder.from_pretrained(MODEL)
    enc.model.train()
    opt = torch.optim.AdamW(enc.parameters(), lr=2e-5)
    step = RetrieverStep(enc, TrainConfig(loss="infonce"))  # the engine's forward: embeddings + loss

    def densekit_step(b) -> None:
        step(b)[0].backward()
        opt.step()
        opt.zero_grad()

    # sentence-transformers: its MNRL forward on the same (query, positive, negative) texts
    st = SentenceTransformer(resolve(MODEL), device="cpu")
    st.train()
    mnrl = MultipleNegativesRankingLoss(st)
    st_opt = torch.optim.AdamW(st.parameters(), lr=2e-5)

    def st_step(b) -> None:
        features = [st.tokenize(b.queries), st.tokenize(b.positives), st.tokenize([n[0] for n in b.negatives])]
        mnrl(features, None).backward()
        st_opt.step()
        st_opt.zero_grad()

    densekit_step(data[0])
    st_step(data[0])
    ours = theirs = 0.0
    for b in data[1:]:
        start = time.perf_counter()
        densekit_step(b)
        ours += time.perf_counter() - start
        start = time.perf_counter()
        st_step(b)
        theirs += time.perf_counter() - start
    n = batch_size * (len(data) - 1)
    return {"bench": "train_throughput", "batch_size": batch_size, "steps": len(data) - 1,
            "densekit_samples_per_s": round(n / ours, 3), "st_mnrl_samples_per_s": round(n / theirs, 3),
            "ratio_densekit_over_st": round(theirs / ours, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/train_scifact")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--throughput-steps", type=int, default=8)
    parser.add_argument("--throughput-only", action="store_true", help="only the samples/s comparison")
    parser.add_argument("--losses", nargs="+", default=["infonce", "mw"])
    args = parser.parse_args()
    out = Path(args.out)

    folder = resolve_dataset("scifact")
    train_ds, test_ds = load_dataset(folder, "train"), load_dataset(folder, "test")
    zero = DualEncoder.from_pretrained(MODEL)
    cached = cache_dir() / "bench-scifact-minilm.npy"  # bench/encode.py's zero-shot corpus vectors
    if args.throughput_only and cached.exists():
        index = Index.build(np.load(cached), list(test_ds.corpus))
    else:
        start = time.perf_counter()
        metrics, index = test_metrics(zero, test_ds)  # the test corpus is the whole scifact corpus
        print(json.dumps({"bench": "train_scifact", "model": "zero-shot", **metrics, "seconds": round(time.perf_counter() - start, 1)}), flush=True)

    # hard negatives for the train queries from the zero-shot index: ranks 0..30, positives and
    # candidates scoring above 0.95 x the lowest positive dropped
    qids = list(train_ds.queries)
    qvec = zero.encode([train_ds.queries[q] for q in qids], is_query=True)
    run = index.search_run(qids, qvec, 30)
    negatives = select_negatives(run, train_ds.qrels, 0, 30, 20, dense_positive_scores(index, qids, qvec, train_ds.qrels), 0.95)
    examples = ex.from_qrels(train_ds.corpus, train_ds.queries, train_ds.qrels, negatives, n_negatives=1)

    print(json.dumps(throughput(args.batch_size, examples, args.throughput_steps)), flush=True)
    if args.throughput_only:
        return

    for loss in args.losses:
        config = TrainConfig(loss=loss, temperature=args.temperature, batch_size=args.batch_size, n_negatives=1,
                             lr=args.lr, epochs=args.epochs, seed=args.seed, checkpoint_every=25)
        start = time.perf_counter()
        model = train(DualEncoder.from_pretrained(MODEL), examples, out / loss, config, resume=True)
        train_s = time.perf_counter() - start
        metrics, _ = test_metrics(model, test_ds)
        steps = sum(1 for _ in open(out / loss / "train_log.jsonl"))
        print(json.dumps({"bench": "train_scifact", "model": loss, **metrics, "train_seconds": round(train_s, 1),
                          "steps": steps, "examples": len(examples), **{k: v for k, v in vars(args).items() if k in ("epochs", "batch_size", "lr", "temperature", "seed")}}), flush=True)


if __name__ == "__main__":
    main()
