"""Training run folders and checkpoints, shared by every training loop (retriever and reranker).

A run folder ``<out>/`` holds ``densekit.json`` (kind ``train-run`` and the run identity),
``train_config.json`` (written once, when the run starts; never rewritten by a resume),
``train_log.jsonl``, ``checkpoints/step-NNNNNN/`` and, when training ends, ``model/``.

**Run identity.** ``run_identity`` = the trainer, the training config minus the fields that do not
change what is trained (``checkpoint_every``, ``keep_checkpoints``), a fingerprint of the training
examples (sha256 of their JSON) and of the starting model (content hash of its weights and config).
``start_run`` stores it in ``densekit.json``; every checkpoint's ``trainer_state.json`` carries its id.

- ``resume=True`` continues only the same run: another run's folder or checkpoints, or a changed
  config, data or base model, are refused naming the differing fields. ``max_steps`` and ``epochs``
  are part of the identity because they fix the learning-rate schedule: raising ``--max-steps`` on
  resume is refused (start a new run). A resume with no checkpoint yet starts at step 0.
- a fresh run (``resume=False``) refuses a folder holding a run's checkpoints or model unless
  ``overwrite=True``, which then removes only densekit's own entries (``densekit.json``,
  ``train_config.json``, ``train_log.jsonl``, ``checkpoints/``, ``model/``); a non-empty folder densekit
  did not write is always refused, and so is a file at ``out``.

A checkpoint holds ``accelerator.save_state`` (model, optimizer, scheduler, RNG states) and
``trainer_state.json``; it is written under a temporary name and renamed, so a crash mid-save never
leaves a checkpoint that looks complete. Pruning keeps the ``keep`` newest and never the one just written.
With several processes (``accelerate launch``/``torchrun``) every process writes its own RNG state into
the checkpoint between barriers and only the main process renames and prunes; the checkpoint records its
process count, and a resume with another count is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from .io import MANIFEST, DataError, OutputExistsError, artefact_kind, atomic_write_text, read_manifest, remove_stale_temps

RUN_KIND = "train-run"
RUN_FILES = (MANIFEST, "train_config.json", "train_log.jsonl", "checkpoints", "model")
RESUME_IRRELEVANT = ("checkpoint_every", "keep_checkpoints")


class NonFiniteError(DataError):
    """Training produced a NaN/inf loss, gradient or weight; nothing was saved from that step on."""


def _sha256_json(rows) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def run_identity(trainer: str, config: dict, examples, base_model: dict) -> dict:
    """What makes two runs the same run (see module doc)."""
    return {"trainer": trainer, "config": {k: v for k, v in config.items() if k not in RESUME_IRRELEVANT},
            "data": _sha256_json(examples), "base_model": base_model}


def run_id(identity: dict) -> str:
    return _sha256_json([identity])[:16]


def identity_differences(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two run identities (config fields by name)."""
    out = []
    if saved.get("trainer") != now.get("trainer"):
        out.append(f"trainer (was {saved.get('trainer')!r}, now {now.get('trainer')!r})")
    a, b = saved.get("config", {}), now.get("config", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            note = " (the learning-rate schedule is fixed for the run's max_steps/epochs: start a new run to train longer)" \
                if key in ("max_steps", "epochs") else ""
            out.append(f"{key} (was {a.get(key, '<absent>')!r}, now {b.get(key, '<absent>')!r}){note}")
    if saved.get("data") != now.get("data"):
        out.append("training data (the examples' fingerprint differs)")
    if saved.get("base_model") != now.get("base_model"):
        out.append("base model (its weights or config differ)")
    return out


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").exists()) if root.is_dir() else []


def _state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{checkpoint / 'trainer_state.json'}: unreadable checkpoint state ({err})") from None


def check_run_folder(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> bool:
    """The checks of ``start_run`` that need no run identity (cheap: the CLI runs them before loading any
    data): a file at ``out``, or a non-empty folder that is not a densekit training run, is refused; so
    is a fresh run over a run's checkpoints or model without ``overwrite``. Returns whether ``out`` is a
    non-empty run folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: a file is in the way of the training output folder; choose another --out")
    for name in (MANIFEST, "train_config.json", "train_log.jsonl", "model"):
        remove_stale_temps(out / name)  # temporaries of a killed process
    busy = out.is_dir() and any(out.iterdir())
    if not busy:
        return False
    kind = artefact_kind(out)
    if kind != RUN_KIND:
        what = f"holds a densekit {kind}" if kind else "is not empty and was not written by densekit training"
        raise OutputExistsError(f"{out}: {what}; choose a new (or empty) --out: densekit never deletes files it did not write")
    checkpoints = list_checkpoints(out)
    if not resume and not overwrite and (checkpoints or (out / "model").exists()):
        what = f"checkpoints up to step {_state(checkpoints[-1]).get('step')}" if checkpoints else "a trained model"
        raise OutputExistsError(f"{out}: already holds a training run ({what}); pass --resume to continue it, "
                                "--overwrite to start over (removes its checkpoints, log and model), or use another --out")
    return True


def start_run(out: str | os.PathLike, identity: dict, config: dict, resume: bool = False, overwrite: bool = False) -> str:
    """Check ``out`` against the run rules (module doc), claim it and return the run id. Raises
    ``OutputExistsError`` (a DataError) with what to do when the folder may not be used."""
    out = Path(out)
    rid = run_id(identity)
    busy = check_run_folder(out, resume, overwrite)
    if busy:
        manifest = read_manifest(out) or {}
        saved = manifest.get("identity")
        checkpoints = list_checkpoints(out)
        if resume:
            if saved is None:
                raise OutputExistsError(f"{out}: its manifest records no run identity, so it cannot be checked against "
                                        "this run; start over with --overwrite or use another --out")
            diff = identity_differences(saved, identity)
            if diff:
                raise OutputExistsError(f"{out}: --resume refused: this is not the run saved there; it differs in "
                                        f"{'; '.join(diff)}. Resume with the run's own settings (see {out / 'train_config.json'}), "
                                        "or start over with --overwrite, or use another --out")
            for checkpoint in checkpoints:
                if _state(checkpoint).get("run_id") != rid:
                    raise OutputExistsError(f"{checkpoint}: checkpoint of another run; remove it or start over with --overwrite")
            _remove_partial_checkpoints(out)
            if not (out / "train_config.json").exists():
                atomic_write_text(out / "train_config.json", json.dumps(config, indent=2, default=str))
            return rid
        for name in RUN_FILES:  # densekit's own entries only
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps({"kind": RUN_KIND, "format": 1, "run_id": rid, "identity": identity},
                                                 indent=2, default=str))
    atomic_write_text(out / "train_config.json", json.dumps(config, indent=2, default=str))
    return rid


def _remove_partial_checkpoints(out: Path) -> None:
    root = out / "checkpoints"
    for tmp in root.glob(".step-*.tmp") if root.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)


def _log_lines(log_path: Path):
    """``(line, row)`` of each whole line of a training log; a line cut short by a kill, or without a step, is passed over."""
    for line in Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            row["step"]
        except (ValueError, KeyError, TypeError):
            continue
        yield line, row


def truncate_log(log_path: Path, step: int) -> None:
    """Keep the log lines of steps ``<= step`` (drops steps past the resumed checkpoint and a line cut
    short by a kill), so a resumed log never repeats a step; ``step == 0`` removes the log."""
    log_path = Path(log_path)
    if step == 0 or not log_path.exists():
        log_path.unlink(missing_ok=True)
        return
    kept = [line for line, row in _log_lines(log_path) if row["step"] <= step]
    atomic_write_text(log_path, "".join(line + "\n" for line in kept))


def read_train_log(run_dir: str | os.PathLike) -> dict:
    """What a training run folder (retriever or reranker) records of its training::

        {"steps": the last logged step (0 when nothing is logged yet),
         "seconds": the logged step times summed: a resumed run's whole training cost, since a resume keeps
                    the log lines of the steps before it,
         "config": train_config.json as a dict,
         "log": the rows of train_log.jsonl (one per optimizer step: "step", "loss", "lr", "seconds", ...)}

    A log line cut short by a kill is passed over; a folder without ``train_config.json`` raises DataError."""
    run_dir = Path(run_dir)
    config_path, log_path = run_dir / "train_config.json", run_dir / "train_log.jsonl"
    if not config_path.is_file():
        raise DataError(f"{run_dir}: no train_config.json, not a densekit training run folder")
    rows = [row for _, row in _log_lines(log_path)] if log_path.exists() else []
    return {"steps": rows[-1]["step"] if rows else 0, "seconds": sum(row.get("seconds", 0.0) for row in rows),
            "config": json.loads(config_path.read_text(encoding="utf-8")), "log": rows}


def check_finite_loss(value: float, step: int, config: dict, keys: tuple[str, ...], what: str = "loss") -> None:
    """Stop training (NonFiniteError naming the step and the config) when ``value`` is NaN or inf."""
    if not math.isfinite(value):
        settings = ", ".join(f"{k}={config.get(k)!r}" for k in keys if k in config)
        raise NonFiniteError(f"training diverged at step {step}: the {what} is {value} ({settings}); stopped before "
                             "the optimizer step, nothing was saved from this step on (the last checkpoint and any "
                             "earlier model are untouched). Use a larger --temperature or a smaller --lr")


def check_finite_params(params, step: int) -> None:
    import torch

    for p in params:
        if not torch.isfinite(p.detach()).all():
            raise NonFiniteError(f"training diverged at step {step}: the model has non-finite weights; nothing was saved "
                                 "from this step on. Use a smaller --lr")


def save_checkpoint(accelerator, out: Path, step: int, keep: int = 2, run_id: str | None = None) -> Path:
    """Write ``checkpoints/step-NNNNNN`` (``accelerator.save_state``: model, optimizer, scheduler and every
    process's RNG state) under a temporary name, then rename. With several processes the main process
    prepares the folder, every process writes its part between barriers, and only the main process
    renames and prunes; ``trainer_state.json`` records the step, the run id and the process count."""
    root = Path(out) / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".step-{step:06d}.tmp"
    main, world = accelerator.is_main_process, accelerator.num_processes
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if main:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "run_id": run_id, "processes": world}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        older = [p for p in list_checkpoints(out) if p.name < final.name]
        for old in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_step(accelerator, out: Path, run_id: str | None = None, processes: int | None = None) -> int:
    """Load the newest checkpoint into ``accelerator``'s objects; returns its step (0 when none). With
    ``run_id``, a checkpoint of another run is refused; with ``processes``, so is a checkpoint written by
    another number of processes (each process's RNG stream is tied to its rank; checkpoints from before
    the count was recorded count as 1 process)."""
    found = list_checkpoints(out)
    if not found:
        return 0
    state = _state(found[-1])
    if run_id is not None and state.get("run_id") != run_id:
        raise OutputExistsError(f"{found[-1]}: checkpoint of another run; start over with --overwrite or use another --out")
    saved = int(state.get("processes", 1))
    if processes is not None and saved != processes:
        raise OutputExistsError(f"{found[-1]}: --resume refused: the run was trained by {saved} process(es), this launch has "
                                f"{processes}; resume with {saved} process(es) (each process's random state is part of the "
                                "checkpoint), or start over with --overwrite, or use another --out")
    accelerator.load_state(str(found[-1]))
    return int(state["step"])
