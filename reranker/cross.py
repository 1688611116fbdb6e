"""Cross-encoder reranker: a sequence-classification transformer reads ``[CLS] query [SEP] document [SEP]``.

``score(q, d)`` is the model's own output for the pair: its logit when it has one label (sentence-transformers
``CrossEncoder`` models, ``cross-encoder/*``, ``BAAI/bge-reranker-*``), ``logit(relevant) - logit(not relevant)``
when it has two. Loads any ``AutoModelForSequenceClassification`` folder or name; a folder holding an encoder
without a classification head (e.g. all-MiniLM-L6-v2) gets a new one-label head, to be trained. The query is cut
to ``query_max_tokens``, then the document to what fits in ``max_length``.

Training (``CrossEncoderRanker.train_step``; a group is ``(query, [positive, negatives...])``, ``s`` the scores of
a group, ``y`` its labels, 1 for the positive):

- ``sft``: binary cross-entropy per pair, ``L = mean_pairs BCE(sigmoid(s), y)``;
- ``cl``: InfoNCE over the group, ``L = mean_groups -log softmax(s / tau)[positive]``;
- ``unified`` (arXiv 2510.14824): the per-example gradient weight of one objective (``weight``: SFT
  ``|sigmoid(s) - y|`` or CL ``|softmax(s / tau) - y| / tau``) on the one score both objectives move; the surrogate
  ``sum_i sign_i * stopgrad(w_i) * s_i / groups`` (sign -1 for the positive, +1 for negatives) has that gradient.
  The record logs the mean SFT and CL weights of positives and negatives, the paper's probe.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from densekit.core import models
from densekit.core.io import DataError

from . import objectives
from .base import TransformerRanker, register
from .config import CrossEncoderConfig

log = logging.getLogger(__name__)


def check_cross_target(target: str) -> None:
    """Refuse, before any weights are read, what no cross-encoder can be built from: a file, a folder without a model
    (``config.json``), a densekit reranker adapter given as a base model, a name neither packaged, cached nor
    downloadable (``models.check_available``)."""
    path = Path(target)
    if path.is_dir():
        if (path / "reranker.json").exists() and not (path / "config.json").exists():
            raise DataError(f"{path} holds a densekit reranker (an adapter), not a base model: rerank with it "
                            "(--reranker FOLDER), or train from its base model")
        if not (path / "config.json").exists():
            raise DataError(f"{path} holds no model (no config.json): give a sequence-classification or encoder "
                            "folder saved by `save_pretrained`, or a model name")
        return
    if path.exists():
        raise DataError(f"{path} is a file, not a model folder or name")
    models.check_available(target)


def pair_losses(scores: torch.Tensor, config) -> torch.Tensor:
    """Loss of ``[groups, group_size]`` scores, column 0 the positive (module doc)."""
    if config.objective == "sft":
        return objectives.bce(scores)
    if config.objective == "cl":
        return objectives.infonce(scores, config.temperature)
    if config.objective == "unified":
        return objectives.surrogate(pair_gradient_weights(scores.detach(), config.weight, config.temperature), scores)
    raise ValueError(f"objective {config.objective!r} does not apply to the cross-encoder: use sft, cl or unified")


def pair_gradient_weights(scores: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """``|dL/ds|`` per example up to the loss's constant scale: SFT ``|sigmoid(s) - y|``, CL ``|softmax(s / tau) - y| / tau``."""
    if kind == "sft":
        return objectives.sft_weights(scores)
    if kind == "cl":
        return objectives.cl_weights(scores, temperature)
    raise ValueError(f"unknown weight kind {kind!r}: use sft or cl")


@register
class CrossEncoderRanker(TransformerRanker):
    kind = "cross"
    auto_model = "AutoModelForSequenceClassification"
    lora_task = "SEQ_CLS"  # peft trains the classification head in full beside the adapters
    check_target = staticmethod(check_cross_target)

    def __init__(self, model, tokenizer, config: CrossEncoderConfig | None = None, name: str = ""):
        super().__init__(model, tokenizer, config or CrossEncoderConfig(), name)
        labels = self._base().config.num_labels
        if labels not in (1, 2):
            raise DataError(f"{name or 'the model'} has {labels} labels: a cross-encoder reranker needs 1 (a relevance "
                            "logit) or 2 (not relevant, relevant)")

    def _base(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @classmethod
    def load_model(cls, path: str, dtype):
        """The folder's sequence-classification model; an encoder without a head gets a new one-label head."""
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        arch = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in arch):
            return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        log.info("cross: %s has no classification head (%s): starting from a new one-label head", path, ", ".join(arch))
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new head's "newly initialized" warning is the point here
        try:
            return AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, num_labels=1)
        finally:
            hf_logging.set_verbosity(before)

    def encode_pair(self, query: str, document: str) -> dict[str, list[int]]:
        """The tokenizer's pair encoding: the query cut to ``query_max_tokens``, the document to what fits."""
        q_ids = self.tokenizer.encode(query, add_special_tokens=False)[: self.config.query_max_tokens]
        return self.tokenizer(self.tokenizer.decode(q_ids), document, truncation="only_second",
                              max_length=self.config.max_length)

    @staticmethod
    def prompt_length(encoded) -> int:
        return len(encoded["input_ids"])

    def batch_scores(self, encoded: Sequence[dict]) -> torch.Tensor:
        """Each pair's score (module doc), with gradients when training."""
        batch = self.tokenizer.pad([dict(e) for e in encoded], return_tensors="pt")
        device = next(self.model.parameters()).device
        logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]

    def train_step(self, groups: list[tuple[str, list[str]]], config, options=None, step: int = 0):
        """Loss of one step's groups (``pair_losses``), the SFT and CL gradient weights and the hit rate."""
        scores = self.batch_scores([self.encode_pair(q, d) for q, docs in groups for d in docs]).view(len(groups), -1)
        record = {"hit": (scores.argmax(1) == 0).float().mean().item()}
        for kind in ("sft", "cl"):
            w = pair_gradient_weights(scores.detach(), kind, config.temperature)
            record[f"w_{kind}_pos"] = w[:, 0].mean().item()
            record[f"w_{kind}_neg"] = w[:, 1:].mean().item()
        return pair_losses(scores, config), record
