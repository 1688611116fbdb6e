"""Frozen lower layers computed once: a cache of the input of the first trained layer, across epochs.

With only the top ``L`` decoder layers trained (``RerankTrainConfig.train_layers``) and the layers below
frozen and deterministic (no dropout), the input of layer ``n - L`` for a given token sequence is the
same every time the sequence is seen. ``LowerLayerCache`` runs the whole model the first time a batch
holds an unseen sequence and keeps that input (per sequence, without padding, float32); a batch whose
sequences are all kept runs the top ``L`` layers only, from the kept states. Unseen sequences of a batch run
through the lower layers alone (no gradient), then the whole batch runs the top layers from the kept states. The logits are those of
the full forward (same inputs to the trained layers; float rounding aside), so a second epoch costs
about ``L / n`` of the first.

Memory: ``tokens x hidden_size x 4`` bytes per distinct sequence (SmolLM2-135M, 576 wide: 2.3 kB per
token; 6,000 prompts of 150 tokens about 2 GB). Each process keeps its own cache.

``store``: a folder that keeps the states on disk too, one file per sequence, under a subfolder named by
``lower_fingerprint`` (the lower layers' weights, the embeddings and the model config): a later cache
over the same frozen lower layers, in another process or run, reads them instead of running those
layers. Two runs that train different top layers of one base model (SFT and CL over the same prompts),
or a trained model scored on prompts the base model already saw, share the work. States are written
beside, then renamed; a file that does not load is recomputed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn


def decoder_stack(model) -> nn.Module:
    """The decoder (``.layers``, embeddings, norm) of a causal LM, a peft model or a DDP-free wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = getattr(base, "model", None)
    if stack is None or not hasattr(stack, "layers"):
        raise ValueError(f"{type(base).__name__}: no decoder layers found (model.model.layers); the lower-layer "
                         "cache supports Llama-style causal LMs (Llama, SmolLM2, Gemma, Qwen, Mistral)")
    return stack


def lower_fingerprint(model, split: int) -> str:
    """sha256 (first 16 hex digits) of what the input of layer ``split`` depends on: the model config, the
    embeddings and every parameter of layers ``[0, split)`` (names and bytes; LoRA weights there included)."""
    stack = decoder_stack(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    digest = hashlib.sha256(base.config.to_json_string(use_diff=False).encode())
    digest.update(f"split={split}".encode())
    modules = [("embed_tokens", stack.embed_tokens)] + [(f"layers.{i}", stack.layers[i]) for i in range(split)]
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class LowerLayerCache:
    """``cache(model, batch, **kwargs)`` = ``model(**batch, **kwargs)`` for a left-padded batch
    (``input_ids``, ``attention_mask``, ``position_ids``), with the layers below ``n - train_layers``
    skipped once every sequence of the batch has been seen, here or, with ``store``, by any cache over
    the same lower layers (see the module doc)."""

    def __init__(self, model, train_layers: int, store: str | os.PathLike | None = None):
        n = len(decoder_stack(model).layers)
        if not 1 <= train_layers < n:
            raise ValueError(f"the lower-layer cache needs 1 <= train_layers < {n} (the model's layers), got {train_layers}")
        self.split = n - train_layers
        self.states: dict[tuple[int, ...], torch.Tensor] = {}
        self.hits = self.misses = self.loaded = 0
        self.store = None
        if store is not None:
            self.store = Path(store) / f"{lower_fingerprint(model, self.split)}-below{self.split}"
            self.store.mkdir(parents=True, exist_ok=True)

    def _file(self, sequence: tuple[int, ...]) -> Path:
        key = hashlib.sha256(torch.tensor(sequence, dtype=torch.int64).numpy().tobytes()).hexdigest()
        return self.store / key[:2] / f"{key}.pt"

    def _load(self, sequences: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Read the stored states of ``sequences``; returns those not stored (or unreadable)."""
        missing = []
        for sequence in sequences:
            path = self._file(sequence)
            try:
                state = torch.load(path, weights_only=True) if path.exists() else None
            except Exception:  # noqa: BLE001 -- a torn or foreign file: recompute it
                state = None
            if state is None or state.shape[0] != len(sequence):
                missing.append(sequence)
            else:
                self.states[sequence] = state
                self.loaded += 1
        return missing

    def _save(self, sequence: tuple[int, ...]) -> None:
        path = self._file(sequence)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(self.states[sequence], tmp)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return len(self.states)

    def __call__(self, model, batch: dict, **kwargs):
        mask = batch["attention_mask"].bool()
        keys = [tuple(row[m].tolist()) for row, m in zip(batch["input_ids"], mask)]
        unseen = [k for k in dict.fromkeys(keys) if k not in self.states]
        self.misses += len(unseen)
        self.hits += len(keys) - len(unseen)
        if unseen and self.store is not None:
            unseen = self._load(unseen)
        if unseen:
            self._run_lower(model, unseen)
            if self.store is not None:
                for sequence in unseen:
                    self._save(sequence)
        return self._run_top(model, batch, keys, **kwargs)

    def _run_lower(self, model, sequences: list[tuple[int, ...]]) -> None:
        """Layers ``[0, split)`` on ``sequences`` (left-padded, positions counting real tokens); keep their output."""
        stack = decoder_stack(model)
        width = max(map(len, sequences))
        pad = 0
        ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        device = stack.layers[0].parameters().__next__().device
        seen = {}

        def keep(module, args, output):
            seen["h"] = (output[0] if isinstance(output, tuple) else output).detach()

        layers = stack.layers
        hook = layers[self.split - 1].register_forward_hook(keep)
        stack.layers = nn.ModuleList(list(layers)[:self.split])
        try:
            with torch.no_grad():
                model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                      logits_to_keep=1)
        finally:
            stack.layers = layers
            hook.remove()
        for i, sequence in enumerate(sequences):
            self.states[sequence] = seen["h"][i, width - len(sequence):].float().clone()

    def _run_top(self, model, batch: dict, keys: list[tuple[int, ...]], **kwargs):
        """Layers ``[split, n)`` + norm + head from the kept states of ``keys`` (the batch's rows)."""
        stack = decoder_stack(model)
        first = self.states[keys[0]]
        width = batch["input_ids"].shape[1]
        hidden = first.new_zeros(len(keys), width, first.shape[-1])
        for i, key in enumerate(keys):
            hidden[i, width - len(key):] = self.states[key]
        dtype = stack.layers[self.split].parameters().__next__().dtype
        layers = stack.layers
        stack.layers = nn.ModuleList(list(layers)[self.split:])
        try:
            return model(inputs_embeds=hidden.to(dtype), attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], **kwargs)
        finally:
            stack.layers = layers
