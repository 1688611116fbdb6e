"""Dual-encoder training = data + step for the engine (``engine.fit``): InfoNCE or MW loss, or distillation of
teacher scores (Margin-MSE, listwise KL; the examples must carry them: ``examples.read_jsonl_examples``).

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` queries, each with one positive
and ``n_negatives`` hard negatives (plus everything else in the batch as in-batch negatives).
The data order is a pure function of ``seed`` (see ``examples.batches``), and checkpoints hold the
model, optimizer, scheduler and RNG states (``accelerator.save_state``), so ``resume=True``
continues exactly where the last checkpoint left off. ``grad_cache_chunk`` enables GradCache
(Gao et al. 2021): embeddings are first computed without graph, the loss gradient w.r.t. them is
taken, then each chunk is re-encoded with graph and back-propagated, so the batch size is no longer
bounded by activation memory.

Multi-process runs (``accelerate launch`` / ``torchrun``, see README "Scaling out"): ``batch_size`` is
the *global* micro-batch (all processes together); each of N processes encodes a contiguous
``batch_size / N`` of it (``batch_size`` must divide by N, checked before any work) and, with
``gather_negatives`` (the default), its queries are scored against the documents of every process
(``losses``: all-gather with gradient), so N processes train the same model as one process with the same
``batch_size`` (tested to 1e-5), only faster. Without it each process's queries see only its own share
of documents as negatives; GradCache works with both (its loss gradient w.r.t. the embeddings is taken
across processes). BERT's pooler, which the embeddings never use, is frozen (``freeze_unused``) so DDP
needs no unused-parameter search. DDP, accumulation, the schedule, checkpoints and logs are the engine's.

Output folder: ``model/`` (sentence-transformers folder), ``checkpoints/step-NNNNNN/``,
``train_log.jsonl`` (one JSON line per optimizer step), ``train_config.json`` and ``densekit.json``
(the run identity). The rules for reusing a folder and for ``resume`` are in ``checkpoints``: a resume
continues only the same run (same config, data and base model; raising ``max_steps`` is refused), and
a fresh run refuses a folder holding a run unless ``overwrite=True``. A NaN/inf loss or gradient stops
training (``NonFiniteError`` naming the step and the config) before the optimizer step, so no
checkpoint or model with non-finite weights is ever written.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from densekit.core.checkpoints import run_identity
from .config import DISTILL_LOSSES, TrainConfig
from .encoder import DualEncoder
from densekit.core.engine import Optimization, TrainStep, check_divisible, fit, process_count
from .examples import Batch, batches, require_teacher_scores
from .losses import text_keys


def _doc_keys(batch: Batch, device) -> torch.Tensor:
    """Keys of the batch's document columns (positives, then negatives): a cell whose document equals the
    row's positive is a duplicate, not a negative (``losses``; also across processes)."""
    return text_keys(batch.positives + [d for negs in batch.negatives for d in negs], device)


def _loss_inputs(loss_fn, batch: Batch, device) -> dict:
    """The keyword inputs of the loss besides the embeddings: the document keys and, for a distillation loss, the
    teacher scores ``[B, 1 + n]`` of each query's group (positive first, then its negatives)."""
    inputs = {"keys": _doc_keys(batch, device)}
    if getattr(loss_fn, "uses_teacher", False):
        inputs["teacher"] = torch.tensor([[p, *negs] for p, negs in zip(batch.positive_scores, batch.negative_scores)],
                                         dtype=torch.float32, device=device)
    return inputs


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


class _Piece:
    """GradCache: one chunk of texts to re-encode with graph, its RNG state and the cached loss gradient
    (a plain object, so that DDP does not move it between devices)."""
    __slots__ = ("texts", "is_query", "states", "grad")

    def __init__(self, texts, is_query, states, grad):
        self.texts, self.is_query, self.states, self.grad = texts, is_query, states, grad


def _rng_states():
    return torch.get_rng_state(), (torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None)


def _set_rng_states(states) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1])


class RetrieverStep(TrainStep):
    """The dual encoder's step for the engine: ``forward(batch)`` embeds the (process's share of the)
    batch and returns its loss (with ``gather_negatives``, against every process's documents).
    With ``grad_cache_chunk``, ``passes`` runs GradCache (module doc)."""

    def __init__(self, encoder: DualEncoder, config: TrainConfig):
        super().__init__()
        self.encoder = encoder
        self.loss_fn = config.make_loss()
        self.config = config

    def _device(self):
        return next(self.encoder.model.parameters()).device

    def forward(self, x, step: int = 0):
        if isinstance(x, _Piece):  # GradCache pass 3: re-encode with graph, push the cached gradient through
            _set_rng_states(x.states)
            return (self.encoder.embed(x.texts, x.is_query) * x.grad).sum(), {}
        device = self._device()
        chunk = self.config.embed_chunk or (8 if device.type == "cpu" else None)
        q, d_pos, d_neg = _embed_batch(self.encoder, x, chunk)
        return self.loss(q, d_pos, d_neg, x), {}

    def loss(self, q, d_pos, d_neg, batch: Batch) -> torch.Tensor:
        """The loss of the embeddings, in float32 with autocast off: under bf16 the encoder's output is bf16, and a
        bf16 score matrix at temperature 0.05 would round every logit by up to ~0.08."""
        with torch.autocast(q.device.type, enabled=False):
            return self.loss_fn(q.float(), d_pos.float(), None if d_neg is None else d_neg.float(),
                                **_loss_inputs(self.loss_fn, batch, q.device))

    def passes(self, batch: Batch, step: int):
        chunk = self.config.grad_cache_chunk
        if not chunk:
            return None
        # GradCache: 1) embeddings without graph, remembering each chunk's RNG state (dropout)
        docs = batch.positives + [d for negs in batch.negatives for d in negs]
        pieces = [(batch.queries[i:i + chunk], True) for i in range(0, len(batch.queries), chunk)]
        pieces += [(docs[i:i + chunk], False) for i in range(0, len(docs), chunk)]
        states, reps = [], []
        for texts, is_query in pieces:
            states.append(_rng_states())
            with torch.no_grad():
                reps.append(self.encoder.embed(texts, is_query).detach())
        # 2) loss on leaf copies, gradient w.r.t. the embeddings (across processes when gathering)
        leaves = [r.requires_grad_() for r in reps]
        n_q = sum(1 for _, is_query in pieces if is_query)
        q, all_docs = torch.cat(leaves[:n_q]), torch.cat(leaves[n_q:])
        B = len(batch.queries)
        d_neg = all_docs[B:].reshape(B, -1, all_docs.shape[-1]) if all_docs.shape[0] > B else None
        loss = self.loss(q, all_docs[:B], d_neg, batch)
        grads = torch.autograd.grad(loss, leaves)
        # 3) the engine re-encodes each chunk with graph under the same RNG state (forward above)
        return [_Piece(texts, is_query, state, grad) for (texts, is_query), state, grad in zip(pieces, states, grads)], \
            {"loss": loss.item()}


def freeze_unused(encoder: DualEncoder) -> None:
    """Freeze what the embeddings never use (BERT's pooler: densekit pools the hidden states itself), so
    DDP needs no unused-parameter search and every trainable parameter gets a gradient each step."""
    for name, param in encoder.model.named_parameters():
        if "pooler." in name:
            param.requires_grad_(False)


def train(encoder: DualEncoder, examples: list[dict], out: str | os.PathLike, config: TrainConfig,
          resume: bool = False, show_progress: bool = True, stop_after: int | None = None,
          overwrite: bool = False) -> DualEncoder:
    """Train ``encoder`` in place on ``examples`` and save it to ``out/model``; returns the encoder.

    ``resume`` continues the same run from its newest checkpoint (refused for another run or a changed
    config, e.g. a raised ``max_steps``, or another process count); ``overwrite`` lets a fresh run replace
    a run in ``out`` (see ``checkpoints``). ``stop_after`` ends the run after that many optimizer steps
    without saving the final model (used to simulate an interruption; the checkpoints stay). A distillation
    loss (``margin-mse``, ``kl``) on examples without teacher scores is refused before any work.
    """
    from accelerate.utils import set_seed

    out = Path(out)
    check_divisible([config.batch_size], process_count(), "--batch-size")  # before any work
    if config.loss in DISTILL_LOSSES:
        require_teacher_scores(examples, config.loss)
    epochs = [batches(examples, config.batch_size, config.n_negatives, config.seed, e) for e in range(config.epochs)]
    micro = [b for epoch in epochs for b in epoch]
    steps_total = len(micro) // config.grad_accum
    if config.max_steps is not None:
        steps_total = min(steps_total, config.max_steps)
    if steps_total == 0:
        raise ValueError(f"{len(examples)} examples make no full step of batch {config.batch_size} x accumulation {config.grad_accum}")
    identity = run_identity("retriever", asdict(config), examples, {"content_hash": encoder.content_hash()})
    set_seed(config.seed)
    encoder.check_max_lengths(config.query_max_length, config.doc_max_length)
    if config.query_max_length:
        encoder.config.query_max_length = config.query_max_length
    if config.doc_max_length:
        encoder.config.doc_max_length = config.doc_max_length
    if config.lora:
        from peft import LoraConfig, get_peft_model

        encoder.model = get_peft_model(encoder.model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets or "all-linear"))
    freeze_unused(encoder)

    def finish(main: bool) -> None:
        if config.lora:
            encoder.model = encoder.model.merge_and_unload()
        encoder.eval()
        if main:
            encoder.save(out / "model", overwrite=True)  # the run's own model/ (the folder was claimed by start_run)

    steps = [micro[i * config.grad_accum:(i + 1) * config.grad_accum] for i in range(steps_total)]
    optim = Optimization(lr=config.lr, weight_decay=config.weight_decay, warmup_ratio=config.warmup_ratio,
                         max_grad_norm=config.max_grad_norm, bf16=config.bf16)
    fit(RetrieverStep(encoder, config), steps, out, identity=identity, config=asdict(config), optim=optim,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints, resume=resume,
        overwrite=overwrite, stop_after=stop_after, show_progress=show_progress, desc=f"train {config.loss}",
        watched=("loss", "temperature", "lr", "batch_size", "grad_accum", "bf16", "max_grad_norm"), finish=finish)
    return encoder
