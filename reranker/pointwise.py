"""Pointwise LLM reranker: one causal LM reads (instruction, query, document) and answers yes or no.

``score(q, d) = logit("yes") - logit("no")`` at the answer position (the next token after the
prompt), so ``P(yes | {yes, no}) = sigmoid(score)``. Only the last position's logits are computed
(``logits_to_keep=1``) and only two of them are read. The same model and prompt serve the SFT and CL
objectives (``reranker/train.py``).

Prompt: the tokenizer's chat template when it has one (user turn + generation prompt), else a
plain text prompt ending in ``"Answer:"``. The document is tokenized on its own and cut to
``doc_max_tokens``; the query and the answer slot are never truncated. Prompts are built as token
ids ``prefix + doc[:budget] + suffix`` so training and inference see identical inputs.

Training (``LLMReranker.train_step``; a group is ``(query, [positive, negatives...])``), with ``s = logit(yes) -
logit(no)`` and ``y = logit(yes)`` at the answer position:

- ``sft``: binary cross-entropy over the two-way {yes, no} distribution of every pair,
  ``L = mean_pairs BCE(sigmoid(s), label)`` (label 1 for the positive, 0 for negatives);
- ``cl``: InfoNCE over each group on the yes logit, ``L = mean_groups -log softmax(y / tau)[positive]``;
- ``unified`` (after "Supervised Fine-Tuning or Contrastive Learning?", arXiv 2510.14824) splits each
  gradient into a per-example weight and a direction and recombines them: ``weight`` in {sft, cl}
  (``|sigmoid(s) - label|`` or ``|softmax(y / tau) - onehot| / tau``) and ``direction`` in {sft, cl}
  (``grad s`` or ``grad y``); the surrogate ``sum_i sign_i * stopgrad(w_i) * d_i`` (sign -1 for the
  positive, +1 for negatives) has exactly that gradient. ``gradient_weights`` returns the weights for
  the paper's probes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import objectives
from .base import CausalLMRanker, leading_special_tokens, register
from .config import RerankerConfig, RerankTrainConfig

DOC_SLOT = "\x00DOC\x00"


def group_losses(logits: torch.Tensor, group_size: int, config: RerankTrainConfig) -> torch.Tensor:
    """Loss of ``[groups * group_size, 2]`` (yes, no) logits, each group's first row the positive."""
    s = (logits[:, 0] - logits[:, 1]).view(-1, group_size)
    y = logits[:, 0].view(-1, group_size)
    if config.objective == "sft":
        return objectives.bce(s)
    if config.objective == "cl":
        return objectives.infonce(y, config.temperature)
    if config.objective == "unified":
        w = gradient_weights(logits.detach(), group_size, config.weight, config.temperature)
        return objectives.surrogate(w, s if config.direction == "sft" else y)
    raise ValueError(f"unknown objective {config.objective!r}: use sft, cl or unified")


def gradient_weights(logits: torch.Tensor, group_size: int, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Per-example gradient magnitudes ``[groups, group_size]``: SFT ``|sigmoid(s) - label|`` or
    CL ``|softmax(y / tau) - onehot| / tau`` (the factor multiplying the direction's gradient)."""
    s = (logits[:, 0] - logits[:, 1]).view(-1, group_size)
    y = logits[:, 0].view(-1, group_size)
    if kind == "sft":
        return objectives.sft_weights(s)
    if kind == "cl":
        return objectives.cl_weights(y, temperature)
    raise ValueError(f"unknown weight kind {kind!r}: use sft or cl")


class TokenError(ValueError):
    """The tokenizer cannot express the answer tokens as single tokens."""


def _single_token(tokenizer, word: str) -> int:
    for candidate in (word, " " + word):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    found = tokenizer.convert_ids_to_tokens(tokenizer.encode(word, add_special_tokens=False))
    raise TokenError(f"answer word {word!r} is not a single token for this tokenizer (it splits into {found}); "
                     f"choose other answer words in RerankerConfig(yes=..., no=...)")


@register
class LLMReranker(CausalLMRanker):
    kind = "pointwise"

    def __init__(self, model, tokenizer, config: RerankerConfig | None = None, name: str = ""):
        super().__init__(model, tokenizer, config or RerankerConfig(), name)
        self.yes_id = _single_token(tokenizer, self.config.yes)
        self.no_id = _single_token(tokenizer, self.config.no)
        self._prefix_suffix = self._template_parts()
        chat = self.config.use_chat_template and getattr(tokenizer, "chat_template", None)
        self._bos = [] if chat else leading_special_tokens(tokenizer)

    # ------------------------------------------------------------ prompts
    def _template_parts(self) -> tuple[str, str]:
        """Prompt text before and after the document, with ``{query}`` still to fill in."""
        user = f"{self.config.instruction}\nQuery: {{query}}\nDocument: {DOC_SLOT}\nIs the document relevant to the query? Answer {self.config.yes} or {self.config.no}."
        if self.config.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                      add_generation_prompt=True)
        else:
            text = user + "\nAnswer:"
        prefix, suffix = text.split(DOC_SLOT)
        return prefix, suffix

    def encode_pair(self, query: str, document: str) -> list[int]:
        """Token ids of one prompt; the document (only) is cut to ``doc_max_tokens``."""
        prefix, suffix = self._prefix_suffix
        q_ids = self.tokenizer.encode(query, add_special_tokens=False)[: self.config.query_max_tokens]
        query = self.tokenizer.decode(q_ids)
        head = self.tokenizer.encode(prefix.replace("{query}", query), add_special_tokens=False)
        doc = self.tokenizer.encode(document, add_special_tokens=False)[: self.config.doc_max_tokens]
        tail = self.tokenizer.encode(suffix, add_special_tokens=False)
        return self._bos + head + doc + tail

    def answer_logits(self, ids: Sequence[list[int]]) -> torch.Tensor:
        """``[batch, 2]`` logits of (yes, no) at the answer position (with gradients when training)."""
        out = self.forward_lm(self.left_padded(ids), logits_to_keep=1)
        return out.logits[:, -1, [self.yes_id, self.no_id]].float()

    def batch_scores(self, ids: Sequence[list[int]]) -> torch.Tensor:
        """``logit(yes) - logit(no)`` of each prompt."""
        logits = self.answer_logits(ids)
        return logits[:, 0] - logits[:, 1]

    def train_step(self, groups: list[tuple[str, list[str]]], config, options=None, step: int = 0):
        """Loss of one step of pointwise groups, and the mean SFT and CL gradient weights of positives/negatives."""
        ids = [self.encode_pair(q, d) for q, docs in groups for d in docs]
        logits = self.answer_logits(ids)
        record = {}
        for kind in ("sft", "cl"):
            w = gradient_weights(logits.detach(), config.group_size, kind, config.temperature)
            record[f"w_{kind}_pos"] = w[:, 0].mean().item()
            record[f"w_{kind}_neg"] = w[:, 1:].mean().item()
        return group_losses(logits, config.group_size, config), record
