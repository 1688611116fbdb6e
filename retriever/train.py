"""Dual-encoder training loop on ``accelerate``: InfoNCE or MW loss, checkpoints, exact resume.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` queries, each with one positive
and ``n_negatives`` hard negatives (plus everything else in the batch as in-batch negatives).
The data order is a pure function of ``seed`` (see ``examples.batches``), and checkpoints hold the
model, optimizer, scheduler and RNG states (``accelerator.save_state``), so ``resume=True``
continues exactly where the last checkpoint left off. ``grad_cache_chunk`` enables GradCache
(Gao et al. 2021): embeddings are first computed without graph, the loss gradient w.r.t. them is
taken, then each chunk is re-encoded with graph and back-propagated, so the batch size is no longer
bounded by activation memory. Multi-process runs (``accelerate launch``) give each process its own
slice of the steps' micro-batches and average gradients.

Output folder: ``model/`` (sentence-transformers folder), ``checkpoints/step-NNNNNN/``,
``train_log.jsonl`` (one JSON line per optimizer step), ``train_config.json`` and ``densekit.json``
(the run identity). The rules for reusing a folder and for ``resume`` are in ``checkpoints``: a resume
continues only the same run (same config, data and base model; raising ``max_steps`` is refused), and
a fresh run refuses a folder holding a run unless ``overwrite=True``. A NaN/inf loss or gradient stops
training (``NonFiniteError`` naming the step and the config) before the optimizer step, so no
checkpoint or model with non-finite weights is ever written.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoints import (check_finite_loss, check_finite_params, resume_step, run_id, run_identity, save_checkpoint,
                          start_run, truncate_log)
from .encoder import DualEncoder
from .examples import Batch, batches
from .losses import InfoNCELoss, MWLoss


@dataclass
class TrainConfig:
    loss: str = "infonce"                 # infonce | mw
    temperature: float = 0.05
    symmetric: bool = False               # InfoNCE: add the doc -> query term
    decoupled: bool = False               # InfoNCE: DEXML decoupled softmax
    per_query: bool = False               # MW: pair positives only with their own row
    batch_size: int = 16
    grad_accum: int = 1
    n_negatives: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 42
    bf16: bool = False
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None
    grad_cache_chunk: int | None = None
    embed_chunk: int | None = None        # documents per forward, in token-length order; None: 8 on CPU, the batch on GPU
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    query_max_length: int | None = None
    doc_max_length: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_config(self, positive=("temperature", "lr"), at_least_one=("batch_size", "grad_accum", "epochs", "lora_r",
                     "lora_alpha", "checkpoint_every", "keep_checkpoints"),
                     optional_at_least_one=("max_steps", "grad_cache_chunk", "embed_chunk", "query_max_length", "doc_max_length"),
                     non_negative=("n_negatives", "weight_decay", "max_grad_norm"), fractions=("warmup_ratio", "lora_dropout"))
        if self.loss not in ("infonce", "mw"):
            raise ValueError(f"unknown loss {self.loss!r}: use infonce or mw")

    def make_loss(self) -> torch.nn.Module:
        if self.loss == "infonce":
            return InfoNCELoss(self.temperature, symmetric=self.symmetric, decoupled=self.decoupled)
        if self.loss == "mw":
            return MWLoss(self.temperature, per_query=self.per_query)
        raise ValueError(f"unknown loss {self.loss!r}: use infonce or mw")


def check_config(config, positive=(), at_least_one=(), optional_at_least_one=(), non_negative=(), fractions=()) -> None:
    """Range checks shared by the training configs: ValueError naming the field (as its CLI flag) and value."""
    def bad(name, need):
        raise ValueError(f"--{name.replace('_', '-')} must be {need}, got {getattr(config, name)!r}")

    for name in positive:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            bad(name, "a finite number > 0")
    for name in at_least_one:
        if not (isinstance(getattr(config, name), int) and getattr(config, name) >= 1):
            bad(name, "an integer >= 1")
    for name in optional_at_least_one:
        value = getattr(config, name)
        if value is not None and not (isinstance(value, int) and value >= 1):
            bad(name, "an integer >= 1 (or unset)")
    for name in non_negative:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            bad(name, "a finite number >= 0")
    for name in fractions:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            bad(name, "between 0 and 1")


def _exclude_duplicates(batch: Batch, device) -> torch.Tensor:
    """Cells whose document text equals the row's positive (a duplicate, not a negative)."""
    docs = batch.positives + [d for negs in batch.negatives for d in negs]
    return torch.tensor([[d == pos for d in docs] for pos in batch.positives], device=device)


def _embed_batch(encoder: DualEncoder, batch: Batch, chunk: int | None = None):
    """Queries, positives and negatives; documents go through the encoder ``chunk`` texts at a time
    in token-length order (default the batch size). On CPU small sorted chunks are fastest: less
    padding, smaller activations."""
    q = encoder.embed(batch.queries, is_query=True)
    B = len(batch.queries)
    texts = batch.positives + [d for negs in batch.negatives for d in negs]
    docs = encoder.embed(texts, is_query=False, chunk=chunk or B)
    d_neg = docs[B:].reshape(B, -1, docs.shape[-1]) if docs.shape[0] > B else None
    return q, docs[:B], d_neg


def _loss_and_backward(encoder, loss_fn, batch: Batch, accelerator, config: TrainConfig, scale: float) -> float:
    device = accelerator.device
    exclude = _exclude_duplicates(batch, device)
    chunk = config.grad_cache_chunk
    if not chunk:
        embed_chunk = config.embed_chunk or (8 if device.type == "cpu" else None)
        q, d_pos, d_neg = _embed_batch(encoder, batch, embed_chunk)
        loss = loss_fn(q, d_pos, d_neg, exclude=exclude)
        accelerator.backward(loss * scale)
        return loss.item()
    # GradCache: 1) embeddings without graph, remembering each chunk's RNG state (dropout)
    docs = batch.positives + [d for negs in batch.negatives for d in negs]
    pieces = [(batch.queries[i:i + chunk], True) for i in range(0, len(batch.queries), chunk)]
    pieces += [(docs[i:i + chunk], False) for i in range(0, len(docs), chunk)]
    states, reps = [], []
    for texts, is_query in pieces:
        states.append(torch.get_rng_state())
        with torch.no_grad():
            reps.append(encoder.embed(texts, is_query).detach())
    # 2) loss on leaf copies, gradient w.r.t. the embeddings
    leaves = [r.requires_grad_() for r in reps]
    n_q = sum(1 for _, is_query in pieces if is_query)
    q, all_docs = torch.cat(leaves[:n_q]), torch.cat(leaves[n_q:])
    B = len(batch.queries)
    d_neg = all_docs[B:].reshape(B, -1, all_docs.shape[-1]) if all_docs.shape[0] > B else None
    loss = loss_fn(q, all_docs[:B], d_neg, exclude=exclude)
    grads = torch.autograd.grad(loss * scale, leaves)
    # 3) re-encode each chunk with graph under the same RNG state and push the cached gradient through
    for (texts, is_query), state, grad in zip(pieces, states, grads):
        torch.set_rng_state(state)
        accelerator.backward((encoder.embed(texts, is_query) * grad).sum())
    return loss.item()


def train(encoder: DualEncoder, examples: list[dict], out: str | os.PathLike, config: TrainConfig,
          resume: bool = False, show_progress: bool = True, stop_after: int | None = None,
          overwrite: bool = False) -> DualEncoder:
    """Train ``encoder`` in place on ``examples`` and save it to ``out/model``; returns the encoder.

    ``resume`` continues the same run from its newest checkpoint (refused for another run or a changed
    config, e.g. a raised ``max_steps``); ``overwrite`` lets a fresh run replace a run in ``out`` (see
    ``checkpoints``). ``stop_after`` ends the run after that many optimizer steps without saving the
    final model (used to simulate an interruption; the checkpoints stay).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    out = Path(out)
    epochs = [batches(examples, config.batch_size, config.n_negatives, config.seed, e) for e in range(config.epochs)]
    micro = [b for epoch in epochs for b in epoch]
    steps_total = len(micro) // config.grad_accum
    if config.max_steps is not None:
        steps_total = min(steps_total, config.max_steps)
    if steps_total == 0:
        raise ValueError(f"{len(examples)} examples make no full step of batch {config.batch_size} x accumulation {config.grad_accum}")
    identity = run_identity("retriever", asdict(config), examples, {"content_hash": encoder.content_hash()})
    accelerator = Accelerator(mixed_precision="bf16" if config.bf16 else "no")
    if accelerator.is_main_process:
        start_run(out, identity, asdict(config), resume, overwrite)
    accelerator.wait_for_everyone()
    rid = run_id(identity)
    set_seed(config.seed)
    if config.query_max_length:
        encoder.config.query_max_length = config.query_max_length
    if config.doc_max_length:
        encoder.config.doc_max_length = config.doc_max_length
    if config.lora:
        from peft import LoraConfig, get_peft_model

        encoder.model = get_peft_model(encoder.model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets or "all-linear"))

    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * steps_total), steps_total)
    encoder, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    model = accelerator.unwrap_model(encoder)
    loss_fn = config.make_loss()

    step = resume_step(accelerator, out, rid) if resume else 0
    log_path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        truncate_log(log_path, step)  # a resumed log never repeats a step
    settings = asdict(config)
    watched = ("loss", "temperature", "lr", "batch_size", "grad_accum", "bf16", "max_grad_norm")

    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    bar = tqdm(total=steps_total, initial=step, desc=f"train {config.loss}", disable=not show_progress or not accelerator.is_main_process)
    done_here = 0
    while step < steps_total:
        start = time.perf_counter()
        step_micro = micro[step * config.grad_accum:(step + 1) * config.grad_accum][rank::world]
        losses = []
        for b in step_micro:
            losses.append(_loss_and_backward(model, loss_fn, b, accelerator, config, 1.0 / len(step_micro)))
            check_finite_loss(losses[-1], step + 1, settings, watched)
        if config.max_grad_norm:
            norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            check_finite_loss(float(norm), step + 1, settings, watched, what="gradient norm")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        seconds = time.perf_counter() - start
        record = {"step": step, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0],
                  "samples_per_s": round(config.batch_size * config.grad_accum / seconds, 3)}
        if accelerator.is_main_process:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if step % config.checkpoint_every == 0 or step == steps_total:
            check_finite_params(params, step)
            save_checkpoint(accelerator, out, step, config.keep_checkpoints, rid)
        if stop_after is not None and done_here >= stop_after:
            bar.close()
            return model
    bar.close()
    accelerator.wait_for_everyone()
    if config.lora:
        model.model = model.model.merge_and_unload()
    model.eval()
    if accelerator.is_main_process:
        model.save(out / "model", overwrite=True)  # the run's own model/ (the folder was claimed by start_run)
    return model
