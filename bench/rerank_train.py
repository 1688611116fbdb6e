"""Reranker training on scifact train: the top-L-layer path vs full-depth LoRA, and the training runs
whose models ``bench/rerank.py`` scores.

Groups: scifact train queries (809) minus the 40 that ``bench/rerank.py`` tunes fusion weights on
(``TUNING_QUERIES``: the first 40 judged train ids, sorted), so a trained model's fusion weight is chosen
on queries it never saw; 1 qrels positive + 7 negatives drawn from the dense (all-MiniLM-L6-v2) top 30
minus positives; documents cut to ``--doc-max-tokens``.

``speed``: the same model and the same groups, three runs through the engine (``train_reranker``): (a) LoRA on
every layer (gradients flow through the whole depth), (b) LoRA on the top ``--train-layers``
layers only (the lower layers run without autograd) and (c) as (b) for groups seen in an earlier epoch,
whose lower layers' output is kept (``densekit.reranker.layer_cache``); prints pairs/s of each and the ratios to (a).

``train``: one run (scorer x objective) under a budget of ``--groups`` training groups, checkpointed
and resumable (``--resume``); the model lands in ``<out>/model`` and can be scored with
``python bench/rerank.py score --reranker <out>/model``.

    python bench/rerank_train.py speed --scorer qlm --steps 6
    python bench/rerank_train.py train --scorer qlm --objective sft --groups 2000 --out runs/rr/qlm-sft
    python bench/rerank_train.py train --scorer blockrank --aux-only --group-size 10 --train-doc-tokens 64 \
        --batch-size 1 --lr 1e-4 --groups 500 --eval-every 100 --out runs/rr/blockrank-aux

``--eval-every N`` logs the nDCG@10 of the 40 held-out tuning queries (dense top 20) every N steps as
``eval_ndcg@10`` in ``<out>/train_log.jsonl``; ``curve --out <run>`` prints those values as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from densekit.eval.data import load_dataset, resolve_dataset, select_queries
from densekit.retriever.examples import training_groups
from densekit.reranker.base import load_reranker
from densekit.reranker.config import BlockRankTrainOptions, RerankTrainConfig
from densekit.reranker.train import train_reranker

LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


def scifact_groups(out: Path, depth: int = 30) -> list[dict]:
    """Training examples of every scifact train query, negatives from the dense top ``depth`` (cached)."""
    cached = out / "scifact-train-groups.json"
    if cached.exists():
        return held_out(json.loads(cached.read_text()))
    from densekit.retriever.search import dense_search

    ds = load_dataset(resolve_dataset("scifact"), "train")
    queries = {q: t for q, t in ds.queries.items() if q in ds.qrels}
    run = dense_search(ds.corpus, queries, depth, index_dir=str(out / "index-scifact-minilm"))
    examples = training_groups(ds.corpus, queries, ds.qrels, run, depth)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(examples))
    return held_out(examples)


TUNING_QUERIES = 40


def held_out(examples: list[dict]) -> list[dict]:
    """``examples`` without the scifact train queries the rerank bench tunes fusion on."""
    ds = load_dataset(resolve_dataset("scifact"), "train")
    tuning = set(select_queries({q: t for q, t in ds.queries.items() if q in ds.qrels}, TUNING_QUERIES).values())
    return [e for e in examples if e["query"] not in tuning]


def tuning_metric(out: Path, k: int = 20):
    """``evaluate(reranker)``: nDCG@10 of the reranked dense top ``k`` of the held-out tuning queries (the
    ones ``bench/rerank.py``'s scifact-train-dense task scores), for the training curve."""
    from densekit.eval.reranking import rerank_metric
    from densekit.retriever.search import dense_search

    ds = load_dataset(resolve_dataset("scifact"), "train")
    queries = select_queries({q: t for q, t in ds.queries.items() if q in ds.qrels}, TUNING_QUERIES)
    run = dense_search(ds.corpus, queries, k, index_dir=str(out / "index-scifact-minilm"))
    return rerank_metric(run, ds.corpus, queries, {q: ds.qrels[q] for q in queries}, k)


def make_reranker(scorer: str, doc_max_tokens: int):
    reranker = load_reranker(f"{scorer}:{LLM}")
    reranker.config.doc_max_tokens = doc_max_tokens
    return reranker


def step_seconds(reranker, examples: list[dict], config: RerankTrainConfig, options=None) -> list[float]:
    """Seconds of each optimizer step of a run of ``densekit.reranker.train.train_reranker`` (the engine ``densekit
    train reranker`` runs) on ``examples``, read from the run's own ``train_log.jsonl``."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="rerank-speed-"))
    try:
        train_reranker(reranker, examples, work / "run", config, show_progress=False, options=options)
        return [json.loads(line)["seconds"] for line in (work / "run" / "train_log.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(work)


def speed(args) -> None:
    """Three runs through the engine, the same groups and steps: LoRA on every layer; LoRA on the top
    ``--train-layers`` (the lower layers run without autograd); and as the second with the lower-layer cache over
    two epochs of fixed groups, timed on the second epoch (every prompt seen before). ``--rounds`` repeats them."""
    torch.manual_seed(0)
    examples = scifact_groups(Path(args.out))[: args.steps * args.batch_size]
    base = dict(objective="cl", group_size=8, batch_size=args.batch_size, warmup_ratio=0.0, checkpoint_every=10 ** 6,
                fixed_negatives=True)
    top = f"top-{args.train_layers} LoRA"
    cached = f"{top}, lower layers cached (a group seen before)"
    sides = {"full-depth LoRA": RerankTrainConfig(**base, epochs=1),
             top: RerankTrainConfig(**base, epochs=1, train_layers=args.train_layers),
             cached: RerankTrainConfig(**base, epochs=2, train_layers=args.train_layers, cache_lower_layers=True)}
    times = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, config in sides.items():
            seconds = step_seconds(make_reranker(args.scorer, args.doc_max_tokens), examples, config)
            times[name] += seconds[args.steps + 1:] if config.epochs == 2 else seconds[1:]  # drop warm-up / first epoch
            print(f"{name}: {[round(x, 1) for x in seconds]} s a step", flush=True)
    pairs = args.batch_size * 8
    rows = {name: pairs / statistics.median(t) for name, t in times.items()}
    full = rows["full-depth LoRA"]
    print(json.dumps({"bench": "rerank_train_speed", "through": "engine (train_reranker)", "scorer": args.scorer,
                      "objective": "cl", "model": LLM, "doc_max_tokens": args.doc_max_tokens, "pairs_per_step": pairs,
                      "steps": args.steps, "rounds": args.rounds, **{f"pairs_per_s {k}": round(v, 3) for k, v in rows.items()},
                      "ratio": round(rows[top] / full, 3), "ratio cached": round(rows[cached] / full, 3)}))


def train(args) -> None:
    examples = scifact_groups(Path(args.bench_out))
    rr = make_reranker(args.scorer, args.doc_max_tokens)
    steps = args.groups // args.batch_size
    epochs = -(-args.groups // len(examples))
    objective = "blockrank" if args.scorer == "blockrank" else args.objective
    config = RerankTrainConfig(objective=objective, group_size=args.group_size, batch_size=args.batch_size,
                               micro_batch=args.micro_batch, lr=args.lr, epochs=epochs, max_steps=steps,
                               temperature=args.temperature, seed=42, train_layers=args.train_layers, checkpoint_every=25,
                               cache_lower_layers=args.cache_lower_layers, fixed_negatives=args.fixed_negatives,
                               train_doc_tokens=args.train_doc_tokens, lower_cache_dir=args.lower_cache_dir)
    options = BlockRankTrainOptions(aux_only=args.aux_only) if args.scorer == "blockrank" else None
    evaluate = tuning_metric(Path(args.bench_out)) if args.eval_every else None
    t0 = time.perf_counter()
    train_reranker(rr, examples, args.out, config, resume=args.resume, evaluate=evaluate, evaluate_every=args.eval_every,
                   options=options)
    print(json.dumps({"bench": "rerank_train", "scorer": args.scorer, "objective": objective, "groups": steps * args.batch_size,
                      "train_layers": args.train_layers, "seconds_this_session": round(time.perf_counter() - t0, 1),
                      "model": str(Path(args.out) / "model")}))


def curve(args) -> None:
    """The tuning-split values a run logged while training (``--eval-every``), one JSON line each."""
    from densekit.core.checkpoints import read_train_log

    run = read_train_log(args.out)
    per_step = run["config"]["batch_size"]
    for row in run["log"]:
        values = {k: round(v, 4) for k, v in row.items() if k.startswith("eval_")}
        if values:
            print(json.dumps({"bench": "rerank_train_curve", "run": args.out, "step": row["step"],
                              "groups_seen": row["step"] * per_step, **values}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("speed", "train"):
        s = sub.add_parser(name)
        s.add_argument("--scorer", choices=["qlm", "pointwise"] + (["blockrank"] if name == "train" else []), default="qlm")
        s.add_argument("--doc-max-tokens", type=int, default=128)
        s.add_argument("--train-layers", type=int, default=4)
        s.add_argument("--batch-size", type=int, default=4, help="groups per optimizer step")
    speed_p, train_p = sub.choices["speed"], sub.choices["train"]
    speed_p.add_argument("--steps", type=int, default=6)
    speed_p.add_argument("--rounds", type=int, default=1, help="repeat the three runs, interleaved")
    speed_p.add_argument("--out", default="runs/bench-rerank")
    train_p.add_argument("--objective", choices=["sft", "cl", "unified"], help="(blockrank: its own objective)")
    train_p.add_argument("--group-size", type=int, default=8, help="documents per group: 1 positive + negatives")
    train_p.add_argument("--aux-only", action="store_true", help="blockrank: the attention InfoNCE alone")
    train_p.add_argument("--train-doc-tokens", type=int, help="cut training documents to this many tokens")
    train_p.add_argument("--eval-every", type=int, help="log the tuning queries' nDCG@10 every this many steps")
    train_p.add_argument("--groups", type=int, default=2000)
    train_p.add_argument("--micro-batch", type=int, default=1)
    train_p.add_argument("--lr", type=float, default=2e-4)
    train_p.add_argument("--temperature", type=float, default=0.1)
    train_p.add_argument("--out", required=True)
    train_p.add_argument("--bench-out", default="runs/bench-rerank")
    train_p.add_argument("--resume", action="store_true")
    train_p.add_argument("--cache-lower-layers", action="store_true", help="keep the frozen layers' output across epochs")
    train_p.add_argument("--lower-cache-dir", help="with --cache-lower-layers: keep the lower layers' output on disk, "
                         "shared with other runs over the same base model and prompts")
    train_p.add_argument("--fixed-negatives", action="store_true", help="each query's negatives drawn once (prompts recur)")
    curve_p = sub.add_parser("curve", help="print the tuning-split values a run logged (--eval-every)")
    curve_p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.command == "curve":
        return curve(args)
    if args.command == "train" and args.scorer != "blockrank" and not args.objective:
        p.error("train --scorer qlm|pointwise needs --objective")
    (speed if args.command == "speed" else train)(args)


if __name__ == "__main__":
    main()
