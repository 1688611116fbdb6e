"""Reranker training, the part every kind shares: groups, micro-batches, the engine's loop, the run folder.

A training group is ``(query, positive, [negative_1 .. negative_n])``; each optimizer step takes ``batch_size``
groups. What a step computes is the kind's own (``reranker.train_step(groups, config, options, step) -> (loss,
record)``, in the kind's module: pointwise yes/no, query likelihood, BlockRank, cross-encoder, or any kind in
``reranker/kinds.py``), and so is how its model is made trainable (``reranker.prepare_training``: LoRA through peft
by default). Nothing here names a kind.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from densekit.core.checkpoints import run_identity
from densekit.core.engine import Optimization, TrainStep, check_divisible, fit, process_count
from densekit.core.models import weights_hash

from .config import RerankTrainConfig


def make_groups(examples: list[dict], group_size: int, seed: int, epoch: int,
                resample: bool = True) -> list[tuple[str, list[str]]]:
    """One epoch of groups ``(query, [positive, negatives...])``, shuffled by (seed, epoch); examples with
    fewer negatives than needed are filled by sampling their negatives with replacement. ``resample``:
    draw each example's positive and negatives anew every epoch (else once, by (seed, example), so every
    epoch sees the same groups in another order)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    groups = []
    for i in order:
        e = examples[i]
        if not resample:
            rng = random.Random(f"{seed}:{i}")
        need = group_size - 1
        negs = rng.sample(e["negatives"], need) if len(e["negatives"]) >= need else [rng.choice(e["negatives"]) for _ in range(need)]
        groups.append((e["query"], [rng.choice(e["positives"])] + negs))
    return groups


def cut_documents(examples: list[dict], tokenizer, max_tokens: int) -> list[dict]:
    """``examples`` with every positive and negative text cut to its first ``max_tokens`` tokens (decoded
    back to text, so the step functions see ordinary documents); queries are kept whole."""
    def cut(text: str) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])

    return [{**e, "positives": [cut(t) for t in e["positives"]], "negatives": [cut(t) for t in e["negatives"]]}
            for e in examples]


class RerankerStep(TrainStep):
    """A reranker's step for the engine: ``forward(groups, step)`` = the kind's ``train_step``."""

    def __init__(self, reranker, config: RerankTrainConfig, options=None):
        super().__init__()
        self.reranker = reranker
        self.config = config
        self.options = options

    def forward(self, groups, step: int = 0):
        return self.reranker.train_step(groups, self.config, self.options, step)


def step_micro_batches(groups: list, batch_size: int, micro_batch: int | None, world: int) -> list[list[list]]:
    """Per optimizer step, its global micro-batches: ``batch_size`` groups a step, split so that each of
    ``world`` processes forwards ``micro_batch`` groups at a time (its contiguous share of each
    micro-batch; the last one may be smaller)."""
    size = (micro_batch or batch_size // world) * world
    steps = [groups[i:i + batch_size] for i in range(0, len(groups) - batch_size + 1, batch_size)]
    return [[chunk[k:k + size] for k in range(0, len(chunk), size)] for chunk in steps]


def training_options(reranker, config: RerankTrainConfig, options=None):
    """``(config, options)`` checked for ``reranker``'s kind (a reranker or its class): the objective one it trains with (default its first), the
    kind's own options an instance of its ``train_options`` (default: their defaults)."""
    objectives = tuple(getattr(reranker, "objectives", ()))
    if not objectives:
        raise ValueError(f"the {reranker.kind} reranker does not train (its kind declares no objective)")
    config = replace(config, objective=config.objective or objectives[0])
    if config.objective not in objectives:
        raise ValueError(f"objective {config.objective!r} does not fit the {reranker.kind} reranker: use {' or '.join(objectives)}")
    option_class = getattr(reranker, "train_options", None)
    if option_class is None:
        if options is not None:
            raise ValueError(f"the {reranker.kind} reranker takes no training options, got {type(options).__name__}")
    elif options is None:
        options = option_class()
    elif not isinstance(options, option_class):
        raise ValueError(f"the {reranker.kind} reranker's training options are a {option_class.__name__}, got {type(options).__name__}")
    if config.cache_lower_layers and not getattr(reranker, "supports_layer_cache", False):
        raise ValueError(f"--cache-lower-layers does not apply to the {reranker.kind} reranker")
    return config, options


def train_reranker(reranker, examples: list[dict], out: str | os.PathLike, config: RerankTrainConfig,
                   resume: bool = False, show_progress: bool = True, overwrite: bool = False, stop_after: int | None = None,
                   evaluate: Callable[[object], dict] | None = None, evaluate_every: int | None = None, options=None):
    """Train in place (LoRA through peft by default) and save to ``out/model``; ``out/train_log.jsonl``
    holds the loss per step plus what the kind's ``train_step`` records (pointwise: the mean SFT and CL gradient
    weights of positives and negatives; BlockRank: the LM and auxiliary parts). ``options``: the kind's own training
    settings (its ``train_options`` dataclass; ``training_options`` checks them and the objective first).

    The loop is the engine's (``densekit.core.engine.fit``: DDP, accumulation over ``micro_batch``, schedule,
    checkpoints, logs). With N processes ``batch_size`` is the global number of groups a step (each
    process takes ``batch_size / N``; it must divide, checked before any work), so N processes train the
    same model as one. The folder rules are ``densekit.core.checkpoints``'s: ``resume`` continues only the
    same run (same config, data, base model, reranker config and process count; a raised ``max_steps``
    is refused) and truncates the log to the resumed step; a fresh run replaces a run in ``out`` only with
    ``overwrite``. A NaN/inf loss or gradient stops training (naming the step and the config) before the
    optimizer step. ``stop_after``: end after that many steps without saving the model (an interruption).
    ``evaluate(reranker) -> {name: value}`` (e.g. ``densekit.eval.reranking.rerank_metric`` on a tuning split)
    runs every ``evaluate_every`` steps and after the last; its values land in the log as ``eval_<name>``.
    ``config.train_doc_tokens`` cuts the training documents (``cut_documents``); scoring is unchanged."""
    config, options = training_options(reranker, config, options)
    from accelerate.utils import set_seed

    world = process_count()
    check_divisible([config.batch_size], world, "--batch-size")  # before any work
    examples = [e for e in examples if e["positives"] and e["negatives"]]
    if not examples:
        raise ValueError("no training group has both a positive and a negative")
    if config.train_doc_tokens:
        examples = cut_documents(examples, reranker.tokenizer, config.train_doc_tokens)
    out = Path(out)
    groups = [g for epoch in range(config.epochs)
              for g in make_groups(examples, config.group_size, config.seed, epoch, not config.fixed_negatives)]
    steps = step_micro_batches(groups, config.batch_size, config.micro_batch, world)
    if config.max_steps is not None:
        steps = steps[:config.max_steps]
    if not steps:
        raise ValueError(f"{len(examples)} groups make no full step of {config.batch_size}")
    base = {"kind": reranker.kind, "config": asdict(reranker.config),
            "content_hash": weights_hash(reranker.model, asdict(reranker.config))}
    identity = run_identity("reranker", {**asdict(config), **(asdict(options) if options is not None else {})}, examples, base)
    set_seed(config.seed)
    reranker.prepare_training(config, options)

    if config.cache_lower_layers:
        from .layer_cache import LowerLayerCache

        reranker.lower_cache = LowerLayerCache(reranker.model, config.train_layers, store=config.lower_cache_dir)

    def finish(main: bool) -> None:
        reranker.model.eval()
        if main:
            reranker.save(out / "model", overwrite=True)  # the run's own model/ (the folder was claimed by start_run)

    try:
        fit(RerankerStep(reranker, config, options), steps, out, identity=identity, config={**asdict(config), **(asdict(options) if options is not None else {})},
            optim=Optimization(lr=config.lr, weight_decay=0.01, warmup_ratio=config.warmup_ratio, max_grad_norm=1.0,
                               bf16=config.bf16),
            checkpoint_every=config.checkpoint_every, resume=resume, overwrite=overwrite, stop_after=stop_after,
            show_progress=show_progress, desc=f"train reranker {config.objective}",
            watched=("objective", "temperature", "aux_temperature", "aux_weight", "lr", "batch_size", "bf16"), finish=finish,
            evaluate=None if evaluate is None else (lambda: evaluate(reranker)), evaluate_every=evaluate_every)
    finally:
        reranker.lower_cache = None
    return reranker
