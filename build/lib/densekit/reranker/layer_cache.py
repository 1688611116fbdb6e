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
"""
from __future__ import annotations

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


class LowerLayerCache:
    """``cache(model, batch, **kwargs)`` = ``model(**batch, **kwargs)`` for a left-padded batch
    (``input_ids``, ``attention_mask``, ``position_ids``), with the layers below ``n - train_layers``
    skipped once every sequence of the batch has been seen (see the module doc)."""

    def __init__(self, model, train_layers: int):
        n = len(decoder_stack(model).layers)
        if not 1 <= train_layers < n:
            raise ValueError(f"the lower-layer cache needs 1 <= train_layers < {n} (the model's layers), got {train_layers}")
        self.split = n - train_layers
        self.states: dict[tuple[int, ...], torch.Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.states)

    def __call__(self, model, batch: dict, **kwargs):
        mask = batch["attention_mask"].bool()
        keys = [tuple(row[m].tolist()) for row, m in zip(batch["input_ids"], mask)]
        unseen = [k for k in dict.fromkeys(keys) if k not in self.states]
        self.misses += len(unseen)
        self.hits += len(keys) - len(unseen)
        if unseen:
            self._run_lower(model, unseen)
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
