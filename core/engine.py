"""The one training engine (on ``accelerate``), shared by retriever and reranker training.

A trainer supplies only its **step** and its **data**:

- the step is a ``TrainStep`` module holding the model; ``forward(micro, step)`` computes the loss of
  a micro-batch *inside* the forward and returns ``(loss, record)`` (``record``: floats to log). The
  engine wraps this module with ``accelerator.prepare`` (DistributedDataParallel when several processes
  run) and calls the wrapped module, so DDP sees the whole loss computation. A step that back-propagates
  in several passes (GradCache) also implements ``passes`` (see ``TrainStep``);
- the data is one list per optimizer step of *global* micro-batches (each a sequence of items; all
  processes together). Every process takes the contiguous ``1/world`` share of every micro-batch
  (``share``), so the data of a step does not depend on the process count: 2 processes x B items of
  each micro-batch train the same model as 1 process x 2B (for the retriever with gathered negatives:
  the same in-batch negatives too). A micro-batch whose size does not divide by the process count is
  refused before any work (``ValueError`` naming the flag to change).

What the engine does, the same for every trainer: gradient accumulation over the step's micro-batches,
each loss weighted by its share of the step's items and every backward but the last under
``accelerator.no_sync`` (DDP all-reduces once per optimizer step); gradient clipping; one optimizer and
one scheduler step per optimizer step whatever the process count (the scheduler is created for the
run's optimizer steps and prepared with ``step_scheduler_with_optimizer=False``: accelerate would
otherwise step it once per process); NaN/inf checks of the (process-averaged) loss and of the gradient
norm before the optimizer step, and of the weights before a checkpoint (``checkpoints.check_finite_*``);
logs averaged over processes (``all_reduce``) and written once, by the main process; checkpoints with
every process's RNG state (``accelerator.save_state``) written between barriers, the run folder claimed
and the model saved by the main process only, an error there raised on every process (no hang).

**Resume** is exact, in multi-process too (data order is a function of the seed; model, optimizer,
scheduler and each process's RNG come from the checkpoint). A checkpoint records its process count and a
resume with another count is refused: each process's RNG stream (dropout) is tied to its rank.

**Unused parameters.** DDP (``find_unused_parameters=False``, no extra graph walk) needs every trainable
parameter to receive a gradient in each step: a step module freezes what its loss never uses (the
dual encoder freezes BERT's pooler) or passes ``find_unused_parameters=True`` to ``fit``.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .checkpoints import check_finite_loss, check_finite_params, resume_step, save_checkpoint, start_run, truncate_log


@dataclass
class Optimization:
    """AdamW + linear warm-up/decay schedule over ``steps_total`` optimizer steps."""
    lr: float
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0      # 0: no clipping
    bf16: bool = False


class TrainStep(torch.nn.Module):
    """What a trainer gives the engine: ``forward(micro, step) -> (loss, record)``.

    ``passes(micro, step)``: None (the default) for one forward/backward per micro-batch. A step that
    needs several backward passes (GradCache) returns ``(inputs, record)``: the engine then calls
    ``forward(x, step)`` for each ``x`` of ``inputs`` (through the DDP-wrapped module) and back-propagates
    each returned tensor; ``record`` (with ``"loss"``) is what is logged for the micro-batch."""

    def passes(self, micro, step: int):
        return None


def share(micro: Sequence, rank: int, world: int) -> Sequence:
    """This process's contiguous ``1/world`` of a global micro-batch (works on lists and on objects with ``__getitem__`` slices)."""
    n = len(micro) // world
    return micro[rank * n:(rank + 1) * n]


def _launched_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _cpu_only() -> bool:
    """Several processes and no GPU: accelerate must be told (``cpu=True``) to use torch.distributed with
    gloo; without it, under ``torchrun``, every process would silently train alone."""
    return _launched_processes() > 1 and not torch.cuda.is_available()


def process_count() -> int:
    """Processes of this run (``accelerate launch`` / ``torchrun``; 1 otherwise)."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_only()).num_processes


def check_divisible(sizes: Sequence[int], world: int, flag: str) -> None:
    """``ValueError`` before any work when a global micro-batch does not split evenly over the processes."""
    bad = sorted({n for n in sizes if n % world})
    if bad:
        raise ValueError(f"a micro-batch of {bad[0]} does not split over {world} processes: every process takes an equal "
                         f"share of each step's data; use a {flag} divisible by {world} (the number of processes)")


def on_main(accelerator, fn: Callable[[], object]):
    """Run ``fn`` on the main process only, between barriers; an exception there is raised on every
    process (so none waits forever at the next collective). Returns ``fn``'s result (broadcast)."""
    from accelerate.utils import broadcast_object_list

    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome[0] = fn()
        except Exception as err:  # noqa: BLE001 -- re-raised below on every process
            outcome[1] = err
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome, from_process=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def _evaluated(module: torch.nn.Module, evaluate: Callable[[], dict]) -> dict:
    """``evaluate()`` with ``module`` in eval mode and autograd off; the training mode is restored."""
    module.eval()
    try:
        with torch.no_grad():
            return dict(evaluate())
    finally:
        module.train()


def _mean_over_processes(accelerator, record: dict) -> dict:
    if accelerator.num_processes == 1:
        return record
    keys = sorted(record)
    values = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


def fit(module: TrainStep, steps: Sequence[Sequence[Sequence]], out: str | os.PathLike, *, identity: dict, config: dict,
        optim: Optimization, checkpoint_every: int, keep_checkpoints: int = 2, resume: bool = False,
        overwrite: bool = False, stop_after: int | None = None, show_progress: bool = True, desc: str = "train",
        watched: tuple[str, ...] = (), batch_flag: str = "--batch-size", find_unused_parameters: bool = False,
        shard: Callable[[Sequence, int, int], Sequence] = share,
        finish: Callable[[bool], None] | None = None,
        evaluate: Callable[[], dict] | None = None, evaluate_every: int | None = None) -> TrainStep:
    """Train ``module`` on ``steps`` (one list of global micro-batches per optimizer step) into the run
    folder ``out`` (claimed with ``checkpoints.start_run(out, identity, config, resume, overwrite)``).

    ``stop_after`` ends after that many optimizer steps of this call (an interruption, for tests: the
    checkpoints stay, ``finish`` is not called). ``finish(is_main)`` runs on every process after the
    last step, between barriers (the trainer saves its model there when ``is_main``; an error on the
    main process is raised everywhere). ``evaluate()`` runs on the main process after every
    ``evaluate_every``-th step and after the last one, with the module in eval mode and no gradients; its
    ``{name: value}`` lands in that step's log line as ``eval_<name>`` (e.g. a tuning split's nDCG@10).
    Returns ``module`` (unwrapped)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    out = Path(out)
    steps_total = len(steps)
    precision = "bf16" if optim.bf16 else "no"
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()  # a later run in this process with another precision (the process group stays)
    accelerator = Accelerator(mixed_precision=precision, step_scheduler_with_optimizer=False,
                              cpu=_cpu_only(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])
    rank, world = accelerator.process_index, accelerator.num_processes
    if world != _launched_processes():
        raise RuntimeError(f"launched as {_launched_processes()} processes (WORLD_SIZE) but accelerate set up {world}: "
                           "the processes would train separately; check the launcher and the device setup")
    check_divisible([len(m) for s in steps for m in s], world, batch_flag)
    rid = on_main(accelerator, lambda: start_run(out, identity, config, resume, overwrite))

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(optim.warmup_ratio * steps_total), steps_total)
    module.train()
    wrapped, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    step = resume_step(accelerator, out, rid, processes=world) if resume else 0
    log_path = out / "train_log.jsonl"
    on_main(accelerator, lambda: truncate_log(log_path, step))  # a resumed log never repeats a step
    bar = tqdm(total=steps_total, initial=step, desc=desc, disable=not show_progress or not accelerator.is_main_process)
    done_here = 0
    while step < steps_total:
        start = time.perf_counter()
        micros = [shard(m, rank, world) for m in steps[step]]
        items = sum(len(m) for m in micros)
        record: dict = {}
        for k, micro in enumerate(micros):
            weight = len(micro) / items
            with accelerator.autocast():
                plan = module.passes(micro, step)
            inputs = [micro] if plan is None else plan[0]
            for j, x in enumerate(inputs):
                last = k == len(micros) - 1 and j == len(inputs) - 1
                with nullcontext() if last else accelerator.no_sync(wrapped):
                    loss, rec = wrapped(x, step)
                    accelerator.backward(loss * weight)
                if plan is None:
                    rec = {"loss": loss.item(), **rec}
            if plan is not None:
                rec = plan[1]
            for key, value in rec.items():
                record[key] = record.get(key, 0.0) + value * weight
        record = _mean_over_processes(accelerator, record)
        check_finite_loss(record["loss"], step + 1, config, watched)
        if optim.max_grad_norm:
            norm = accelerator.clip_grad_norm_(params, optim.max_grad_norm)
            check_finite_loss(float(norm), step + 1, config, watched, what="gradient norm")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        seconds = time.perf_counter() - start
        line = {"step": step, "loss": record.pop("loss"), **record, "lr": scheduler.get_last_lr()[0],
                "seconds": round(seconds, 3), "samples_per_s": round(items * world / seconds, 3)}
        if evaluate is not None and evaluate_every and (step % evaluate_every == 0 or step == steps_total):
            line.update({f"eval_{k}": v for k, v in on_main(accelerator, lambda: _evaluated(module, evaluate)).items()})
        if accelerator.is_main_process:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{line['loss']:.4f}")
        if step % checkpoint_every == 0 or step == steps_total:
            check_finite_params(params, step)
            save_checkpoint(accelerator, out, step, keep_checkpoints, rid)
        if stop_after is not None and done_here >= stop_after:
            bar.close()
            accelerator.wait_for_everyone()
            return module
    bar.close()
    accelerator.wait_for_everyone()
    if finish is not None:
        main = accelerator.is_main_process
        on_main(accelerator, lambda: finish(True))
        if not main:
            finish(False)
        accelerator.wait_for_everyone()
    return module
