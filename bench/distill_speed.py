"""Training throughput of distillation (MarginMSE, listwise KL) against plain InfoNCE, through the engine users run.

The same encoder (all-MiniLM-L6-v2), the same training file with teacher scores (``densekit mine --teacher``), batch,
negatives and steps; each loss trains ``--steps`` optimizer steps through ``retriever.train.train`` (the engine of
``densekit train retriever``), the three runs interleaved ``--rounds`` times so that machine load hits each alike.
A step's time is the engine's own ``seconds`` in ``train_log.jsonl``; the first step of each run (warm-up) is dropped.

    python bench/distill_speed.py --train-file runs/distill/scifact-train-hybrid-teacher.jsonl

Appends one line to ``bench/results/distill_speed.jsonl``: median seconds a step per loss and the ratios to InfoNCE.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from densekit.eval.data import load_dataset, resolve_dataset
from densekit.retriever import examples as ex
from densekit.retriever.config import TrainConfig
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.train import train

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LOSSES = ("infonce", "margin-mse", "kl")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-file", required=True, help="JSONL with positive_scores / negative_scores")
    p.add_argument("--data", default="scifact")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-negatives", type=int, default=1)
    p.add_argument("--results", default="bench/results/distill_speed.jsonl")
    args = p.parse_args()

    ds = load_dataset(resolve_dataset(args.data), "train")
    examples = ex.read_jsonl_examples(args.train_file, ds.corpus, ds.queries, args.n_negatives)
    seconds = {loss: [] for loss in LOSSES}
    work = Path(tempfile.mkdtemp(prefix="distill-speed-"))
    try:
        for round_ in range(args.rounds):
            for loss in LOSSES:
                out = work / f"{loss}-{round_}"
                config = TrainConfig(loss=loss, batch_size=args.batch_size, n_negatives=args.n_negatives, max_steps=args.steps,
                                     checkpoint_every=10 ** 6, seed=round_)
                train(DualEncoder.from_pretrained(MODEL), examples, out, config, show_progress=False)
                log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
                seconds[loss] += [row["seconds"] for row in log[1:]]
    finally:
        shutil.rmtree(work)
    median = {loss: statistics.median(v) for loss, v in seconds.items()}
    row = {"bench": "distill_speed", "model": MODEL, "batch_size": args.batch_size, "n_negatives": args.n_negatives,
           "steps_per_run": args.steps, "rounds": args.rounds, "median_seconds_per_step": median,
           "ratio_over_infonce": {loss: round(median[loss] / median["infonce"], 3) for loss in LOSSES}}
    with open(args.results, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
