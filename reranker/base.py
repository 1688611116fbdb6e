"""What every causal-LM reranker shares: loading (packaged name, folder, hub id; optional LoRA
adapter), saving (adapter or full model + ``reranker.json`` naming the kind, base model and config,
written atomically), and the tokenizer's leading special tokens."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from retriever import models
from retriever.io import atomic_dir


def leading_special_tokens(tokenizer) -> list[int]:
    """Ids the tokenizer puts in front of a text by itself (e.g. BOS), ``[]`` when none."""
    with_special = tokenizer.encode("x", add_special_tokens=True)
    plain = tokenizer.encode("x", add_special_tokens=False)
    if plain and plain[0] in with_special:
        return with_special[: with_special.index(plain[0])]
    return []


class CausalLMRanker(torch.nn.Module):
    """Base class: ``model`` (a causal LM, possibly a peft model), ``tokenizer``, ``config`` (a
    dataclass of class ``config_class``) and ``name`` (the base model's canonical name)."""

    kind = "base"
    config_class: type = object

    def __init__(self, model, tokenizer, config, name: str = ""):
        super().__init__()
        self.model, self.tokenizer, self.config, self.name = model, tokenizer, config, name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str, config=None, adapter: str | None = None, dtype=torch.float32):
        """A base causal LM (packaged name, folder or hub id), optionally with a saved LoRA adapter folder."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = models.resolve(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
            saved = Path(adapter) / "reranker.json"
            if config is None and saved.exists():
                config = cls.config_class(**json.loads(saved.read_text())["config"])
        model.eval()
        return cls(model, tokenizer, config, name=models.canonical_name(str(name_or_path)))

    @classmethod
    def load(cls, folder: str | os.PathLike):
        """Load a folder written by ``save`` (adapter + ``reranker.json`` naming the base model)."""
        meta = json.loads((Path(folder) / "reranker.json").read_text())
        if meta.get("kind", "pointwise") != cls.kind:
            raise ValueError(f"{folder} holds a {meta.get('kind')!r} reranker, not {cls.kind!r}")
        config = cls.config_class(**meta["config"])
        if meta.get("full_model"):
            return cls.from_pretrained(str(folder), config)
        return cls.from_pretrained(meta["base_model"], config, adapter=str(folder))

    def save(self, folder: str | os.PathLike) -> Path:
        """Save the LoRA adapter (or the full model) plus ``reranker.json`` (kind, base model, config)."""
        with atomic_dir(folder) as tmp:
            full = not hasattr(self.model, "peft_config")
            self.model.save_pretrained(tmp)
            if full:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "reranker.json").write_text(json.dumps({"kind": self.kind, "base_model": self.name, "full_model": full,
                                                           "config": asdict(self.config)}, indent=2))
        return Path(folder)
