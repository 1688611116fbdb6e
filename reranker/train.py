"""Reranker training: one pointwise LLM reranker, two objectives, everything else shared.

A training group is ``(query, positive, [negative_1 .. negative_n])``; each step takes ``batch_size``
groups, i.e. ``batch_size * (1 + n)`` (query, document) prompts, through the same model and prompt.
With ``s = logit(yes) - logit(no)`` and ``y = logit(yes)`` at the answer position:

- ``sft``: binary cross-entropy over the two-way {yes, no} distribution of every pair,
  ``L = mean_pairs BCE(sigmoid(s), label)`` (label 1 for the positive, 0 for negatives);
- ``cl``: InfoNCE over each group on the yes logit, ``L = mean_groups -log softmax(y / tau)[positive]``.

``unified`` (after "Supervised Fine-Tuning or Contrastive Learning?", arXiv 2510.14824) splits each
gradient into a per-example weight and a direction and recombines them: ``weight`` in {sft, cl}
(``|sigmoid(s) - label|`` or ``|softmax(y / tau) - onehot| / tau``) and ``direction`` in {sft, cl}
(``grad s`` or ``grad y``); the surrogate ``sum_i sign_i * stopgrad(w_i) * d_i`` (sign -1 for the
positive, +1 for negatives) has exactly that gradient. ``gradient_weights`` returns the weights for
the paper's probes.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from densekit.retriever.checkpoints import run_identity
from densekit.retriever.engine import Optimization, TrainStep, check_divisible, fit, process_count
from densekit.retriever.models import weights_hash

from .blockrank import BlockRanker, blockrank_groups
from .config import RerankTrainConfig
from .pointwise import LLMReranker
from .qlm import QLMReranker


def group_losses(logits: torch.Tensor, group_size: int, config: RerankTrainConfig) -> torch.Tensor:
    """Loss of ``[groups * group_size, 2]`` (yes, no) logits, each group's first row the positive."""
    s = (logits[:, 0] - logits[:, 1]).view(-1, group_size)
    y = logits[:, 0].view(-1, group_size)
    labels = torch.zeros_like(s)
    labels[:, 0] = 1.0
    if config.objective == "sft":
        return F.binary_cross_entropy_with_logits(s, labels)
    if config.objective == "cl":
        return F.cross_entropy(y / config.temperature, torch.zeros(len(y), dtype=torch.long, device=y.device))
    if config.objective == "unified":
        w = gradient_weights(logits.detach(), group_size, config.weight, config.temperature)
        d = s if config.direction == "sft" else y
        sign = 1.0 - 2.0 * labels  # -1 positive, +1 negatives
        return (sign * w * d).sum() / len(s)
    raise ValueError(f"unknown objective {config.objective!r}: use sft, cl or unified")


def gradient_weights(logits: torch.Tensor, group_size: int, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Per-example gradient magnitudes ``[groups, group_size]``: SFT ``|sigmoid(s) - label|`` or
    CL ``|softmax(y / tau) - onehot| / tau`` (the factor multiplying the direction's gradient)."""
    s = (logits[:, 0] - logits[:, 1]).view(-1, group_size)
    y = logits[:, 0].view(-1, group_size)
    labels = torch.zeros_like(s)
    labels[:, 0] = 1.0
    if kind == "sft":
        return (torch.sigmoid(s) - labels).abs()
    if kind == "cl":
        return (torch.softmax(y / temperature, dim=1) - labels).abs() / temperature
    raise ValueError(f"unknown weight kind {kind!r}: use sft or cl")


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


def pointwise_step(model: LLMReranker, chunk: list[tuple[str, list[str]]], config: RerankTrainConfig, step: int):
    """Loss of one step of pointwise groups, and the mean SFT and CL gradient weights of positives/negatives."""
    ids = [model.encode_pair(q, d) for q, docs in chunk for d in docs]
    logits = model.answer_logits(ids)
    record = {}
    for kind in ("sft", "cl"):
        w = gradient_weights(logits.detach(), config.group_size, kind, config.temperature)
        record[f"w_{kind}_pos"] = w[:, 0].mean().item()
        record[f"w_{kind}_neg"] = w[:, 1:].mean().item()
    return group_losses(logits, config.group_size, config), record


def blockrank_step(model: BlockRanker, chunk: list[tuple[str, list[str]]], config: RerankTrainConfig, step: int):
    """Mean BlockRank loss (LM + aux_weight * attention InfoNCE) over the step's groups, each group one
    prompt with its documents shuffled by (seed, step); logs the LM and aux parts and the attention hit rate."""
    losses, parts = [], []
    for query, docs, answer in blockrank_groups(chunk, config.seed, step):
        loss, part = model.loss(model.build_prompt(query, docs, answer), answer, config.aux_weight, config.aux_temperature,
                                config.aux_only)
        losses.append(loss)
        parts.append(part)
    record = {k: sum(p[k] for p in parts) / len(parts) for k in ("lm", "aux", "hit")}
    return torch.stack(losses).mean(), record


def qlm_losses(scores: torch.Tensor, config: RerankTrainConfig) -> torch.Tensor:
    """Loss of ``[groups, group_size]`` query-likelihood scores ``s`` (column 0 the positive):

    - ``sft``: the generative loss, ``-mean_groups s_pos`` (with ``reduce="mean"``, the positive query's
      mean token NLL given its document; the negatives play no part);
    - ``cl``: InfoNCE over the group, ``mean_groups -log softmax(s / tau)[positive]``;
    - ``unified``: ``sum sign_i * stopgrad(w_i) * s_i / groups`` with ``w`` from ``qlm_gradient_weights``
      (``weight="sft"`` reproduces SFT's gradient, ``"cl"`` CL's). Both objectives move the same score
      ``s``, so for this scorer there is one direction and ``direction`` is not used."""
    if config.objective == "sft":
        return -scores[:, 0].mean()
    if config.objective == "cl":
        return F.cross_entropy(scores / config.temperature, torch.zeros(len(scores), dtype=torch.long, device=scores.device))
    if config.objective == "unified":
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        w = qlm_gradient_weights(scores.detach(), config.weight, config.temperature)
        return ((1.0 - 2.0 * labels) * w * scores).sum() / len(scores)
    raise ValueError(f"objective {config.objective!r} does not apply to the qlm reranker: use sft, cl or unified")


def qlm_gradient_weights(scores: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """``|dL/ds|`` per example ``[groups, group_size]``: SFT 1 for the positive and 0 for negatives;
    CL ``|softmax(s / tau) - onehot| / tau``."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    if kind == "sft":
        return labels
    if kind == "cl":
        return (torch.softmax(scores / temperature, dim=1) - labels).abs() / temperature
    raise ValueError(f"unknown weight kind {kind!r}: use sft or cl")


def qlm_step(model: QLMReranker, chunk: list[tuple[str, list[str]]], config: RerankTrainConfig, step: int):
    """Loss of one step of query-likelihood groups. SFT forwards the positives only (its loss ignores
    the negatives); CL and unified forward every (query, document) pair of the group."""
    docs_used = 1 if config.objective == "sft" else config.group_size
    encoded = [model.encode_pair(q, d) for q, docs in chunk for d in docs[:docs_used]]
    scores = model.batch_scores(encoded).view(len(chunk), docs_used)
    record = {"s_pos": scores[:, 0].mean().item()}
    if docs_used > 1:
        record["s_neg"] = scores[:, 1:].mean().item()
        record["hit"] = (scores.argmax(1) == 0).float().mean().item()
    return qlm_losses(scores, config), record


# kind -> (step function, objectives it trains with)
STEPS = {
    "pointwise": (pointwise_step, ("sft", "cl", "unified")),
    "qlm": (qlm_step, ("sft", "cl", "unified")),
    "blockrank": (blockrank_step, ("blockrank",)),
}


def top_layer_names(model, layers: int) -> tuple[list[int], int]:
    """Indices of the top ``layers`` decoder layers and the model's layer count."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = base.config.num_hidden_layers
    if not 1 <= layers <= n:
        raise ValueError(f"train_layers must be between 1 and the model's {n} layers, got {layers}")
    return list(range(n - layers, n)), n


def restrict_to_top_layers(model, layers: int) -> None:
    """Full fine-tuning of the top ``layers`` decoder layers only: every other parameter is frozen
    (embeddings, lower layers, LM head), so no gradient flows below layer ``n - layers``."""
    keep, _ = top_layer_names(model, layers)
    prefixes = tuple(f"layers.{i}." for i in keep)
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in prefixes) or name.endswith("model.norm.weight"))


def accumulate(step_loss, model, chunk, config: RerankTrainConfig, step: int, backward, check) -> tuple[float, dict]:
    """(A single-process helper for benchmarks and tests; training runs through ``densekit.retriever.engine``,
    which accumulates the same way.) Forward/backward ``chunk`` in micro-batches of ``config.micro_batch`` groups, each loss scaled by
    its share of the step (the sum of gradients equals one pass over the whole chunk); returns the
    step's loss and its records averaged the same way."""
    size = config.micro_batch or len(chunk)
    total, record = 0.0, {}
    for start in range(0, len(chunk), size):
        part = chunk[start:start + size]
        loss, rec = step_loss(model, part, config, step)
        check(loss.item())
        share = len(part) / len(chunk)
        backward(loss * share)
        total += loss.item() * share
        for key, value in rec.items():
            record[key] = record.get(key, 0.0) + value * share
    return total, record


class RerankerStep(TrainStep):
    """A reranker's step for the engine: ``forward(groups, step)`` = the kind's step function (``STEPS``)."""

    def __init__(self, reranker, step_loss, config: RerankTrainConfig):
        super().__init__()
        self.reranker = reranker
        self.step_loss = step_loss
        self.config = config

    def forward(self, groups, step: int = 0):
        return self.step_loss(self.reranker, groups, self.config, step)


def step_micro_batches(groups: list, batch_size: int, micro_batch: int | None, world: int) -> list[list[list]]:
    """Per optimizer step, its global micro-batches: ``batch_size`` groups a step, split so that each of
    ``world`` processes forwards ``micro_batch`` groups at a time (its contiguous share of each
    micro-batch; the last one may be smaller)."""
    size = (micro_batch or batch_size // world) * world
    steps = [groups[i:i + batch_size] for i in range(0, len(groups) - batch_size + 1, batch_size)]
    return [[chunk[k:k + size] for k in range(0, len(chunk), size)] for chunk in steps]


def train_reranker(reranker: LLMReranker | BlockRanker, examples: list[dict], out: str | os.PathLike,
                   config: RerankTrainConfig, resume: bool = False, show_progress: bool = True,
                   overwrite: bool = False, stop_after: int | None = None,
                   evaluate: Callable[[object], dict] | None = None,
                   evaluate_every: int | None = None) -> LLMReranker | BlockRanker:
    """Train in place (LoRA through peft by default) and save to ``out/model``; ``out/train_log.jsonl``
    holds the loss per step plus, for the pointwise objectives, the mean SFT and CL gradient weights of
    positives and negatives, and for BlockRank the LM and auxiliary parts.

    The loop is the engine's (``densekit.retriever.engine.fit``: DDP, accumulation over ``micro_batch``, schedule,
    checkpoints, logs). With N processes ``batch_size`` is the global number of groups a step (each
    process takes ``batch_size / N``; it must divide, checked before any work), so N processes train the
    same model as one. The folder rules are ``densekit.retriever.checkpoints``'s: ``resume`` continues only the
    same run (same config, data, base model, reranker config and process count; a raised ``max_steps``
    is refused) and truncates the log to the resumed step; a fresh run replaces a run in ``out`` only with
    ``overwrite``. A NaN/inf loss or gradient stops training (naming the step and the config) before the
    optimizer step. ``stop_after``: end after that many steps without saving the model (an interruption).
    ``evaluate(reranker) -> {name: value}`` (e.g. ``densekit.eval.pipeline.rerank_metric`` on a tuning split)
    runs every ``evaluate_every`` steps and after the last; its values land in the log as ``eval_<name>``.
    ``config.train_doc_tokens`` cuts the training documents (``cut_documents``); scoring is unchanged."""
    if reranker.kind not in STEPS:
        raise ValueError(f"no training step for reranker kind {reranker.kind!r}: known {', '.join(STEPS)}")
    step_loss, objectives = STEPS[reranker.kind]
    if config.objective not in objectives:
        raise ValueError(f"objective {config.objective!r} does not fit the {reranker.kind} reranker: use {' or '.join(objectives)}")
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
    identity = run_identity("reranker", asdict(config), examples, base)
    set_seed(config.seed)
    if config.lora and not hasattr(reranker.model, "peft_config"):
        from peft import LoraConfig, get_peft_model

        layers = top_layer_names(reranker.model, config.train_layers)[0] if config.train_layers else None
        if config.aux_only:  # only layers up to the scoring layer ever run: the top L of those
            top = reranker.score_layer
            layers = list(range(max(0, top + 1 - (config.train_layers or top + 1)), top + 1))
        reranker.model = get_peft_model(reranker.model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, task_type="CAUSAL_LM",
            target_modules=config.lora_targets or ["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=layers))
    elif not config.lora and config.train_layers:
        restrict_to_top_layers(reranker.model, config.train_layers)

    if config.cache_lower_layers:
        if reranker.kind not in ("pointwise", "qlm"):
            raise ValueError(f"--cache-lower-layers applies to the pointwise and qlm scorers, not {reranker.kind}")
        from .layer_cache import LowerLayerCache

        reranker.lower_cache = LowerLayerCache(reranker.model, config.train_layers, store=config.lower_cache_dir)

    def finish(main: bool) -> None:
        reranker.model.eval()
        if main:
            reranker.save(out / "model", overwrite=True)  # the run's own model/ (the folder was claimed by start_run)

    try:
        fit(RerankerStep(reranker, step_loss, config), steps, out, identity=identity, config=asdict(config),
            optim=Optimization(lr=config.lr, weight_decay=0.01, warmup_ratio=config.warmup_ratio, max_grad_norm=1.0),
            checkpoint_every=config.checkpoint_every, resume=resume, overwrite=overwrite, stop_after=stop_after,
            show_progress=show_progress, desc=f"train reranker {config.objective}",
            watched=("objective", "temperature", "aux_temperature", "aux_weight", "lr", "batch_size"), finish=finish,
            evaluate=None if evaluate is None else (lambda: evaluate(reranker)), evaluate_every=evaluate_every)
    finally:
        reranker.lower_cache = None
    return reranker
