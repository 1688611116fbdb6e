"""Where densekit runs a model it loads for inference (encoding, scoring): the GPU when there is one.

``inference_device(requested)``: ``requested`` (a command's ``--device``) when given, else ``$DENSEKIT_DEVICE`` when
set, else this process's GPU when torch sees one (``cuda:$LOCAL_RANK`` under torchrun/accelerate, so N processes of
a sharded job use N GPUs), else the CPU. A device torch cannot use here is refused (ValueError naming where it
came from) before any model loads. Training moves the model itself (accelerate's device), whatever this says.
"""
from __future__ import annotations

import os

VARIABLE = "DENSEKIT_DEVICE"


def parse_device(value: str, source: str):
    """``value`` as a ``torch.device`` this machine has; ValueError naming ``source`` (a flag or the variable) else."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{source} {value!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"{source} {value!r}: this machine has no CUDA device torch can use (torch {torch.__version__}); "
                             "use cpu, or leave it unset (the GPU when there is one)")
        if (device.index or 0) >= count:
            raise ValueError(f"{source} {value!r}: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{source} {value!r}: MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{source} {value!r}: densekit runs models on cpu, cuda or mps")
    return device


def inference_device(requested: str | None = None):
    import torch

    if requested:
        return parse_device(requested, "--device")
    wanted = os.environ.get(VARIABLE, "").strip()
    if wanted:
        return parse_device(wanted, VARIABLE)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0) or 0) % torch.cuda.device_count())
    return torch.device("cpu")
