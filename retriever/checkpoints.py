"""Training checkpoints shared by every training loop: complete-or-absent folders, newest kept.

A checkpoint is ``<out>/checkpoints/step-NNNNNN/`` holding ``accelerator.save_state`` (model,
optimizer, scheduler, RNG states) and ``trainer_state.json``; it is written under a temporary name
and renamed, so a crash mid-save never leaves a checkpoint that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").exists()) if root.is_dir() else []


def save_checkpoint(accelerator, out: Path, step: int, keep: int = 2) -> Path:
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step:06d}", root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def resume_step(accelerator, out: Path) -> int:
    """Load the newest checkpoint into ``accelerator``'s objects; returns its step (0 when none)."""
    found = list_checkpoints(out)
    if not found:
        return 0
    accelerator.load_state(str(found[-1]))
    return json.loads((found[-1] / "trainer_state.json").read_text())["step"]
