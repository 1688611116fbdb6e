"""Query-likelihood reranker: how likely is the query, given the document?

After UPR (Sachan et al. 2022, "Improving Passage Retrieval with Zero-Shot Question Generation") and
Zhuang et al. 2023 ("Open-source LLMs are zero-shot query likelihood models"). A causal LM reads a
document-first prompt and the query after it:

    [BOS] template_head + document[:doc_max_tokens] + template_middle + query[:query_max_tokens]

where ``template = head + "{document}" + middle + "{query}"`` (the query slot ends the template). With
``q_1..q_m`` the query tokens and ``c`` everything before them,

    score(q, d) = (1 / m) * sum_t log P(q_t | c, q_<t)      (``reduce="mean"``; ``"sum"`` drops the 1/m)

Only the query positions' logits are computed: rows are left-padded so that every query ends in the
last column, and the LM head runs on the last ``max m + 1`` positions alone. Works for any causal LM.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from . import objectives
from .base import CausalLMRanker, leading_special_tokens, register
from .config import QLMConfig, RerankTrainConfig

log = logging.getLogger(__name__)


def qlm_losses(scores: torch.Tensor, config: RerankTrainConfig) -> torch.Tensor:
    """Loss of ``[groups, group_size]`` query-likelihood scores ``s`` (column 0 the positive):

    - ``sft``: the generative loss, ``-mean_groups s_pos`` (with ``reduce="mean"``, the positive query's
      mean token NLL given its document; the negatives play no part);
    - ``cl``: InfoNCE over the group, ``mean_groups -log softmax(s / tau)[positive]``;
    - ``unified``: ``sum sign_i * stopgrad(w_i) * s_i / groups`` with ``w`` from ``qlm_gradient_weights``
      (``weight="sft"`` reproduces SFT's gradient, ``"cl"`` CL's). Both objectives move the same score
      ``s``, so for this scorer there is one direction and ``direction`` is not used."""
    if config.objective == "sft":
        return -scores[:, 0].mean()
    if config.objective == "cl":
        return objectives.infonce(scores, config.temperature)
    if config.objective == "unified":
        return objectives.surrogate(qlm_gradient_weights(scores.detach(), config.weight, config.temperature), scores)
    raise ValueError(f"objective {config.objective!r} does not apply to the qlm reranker: use sft, cl or unified")


def qlm_gradient_weights(scores: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """``|dL/ds|`` per example ``[groups, group_size]``: SFT 1 for the positive and 0 for negatives;
    CL ``|softmax(s / tau) - onehot| / tau``."""
    if kind == "sft":
        return objectives.positive_labels(scores)
    if kind == "cl":
        return objectives.cl_weights(scores, temperature)
    raise ValueError(f"unknown weight kind {kind!r}: use sft or cl")


@register
class QLMReranker(CausalLMRanker):
    kind = "qlm"

    def __init__(self, model, tokenizer, config: QLMConfig | None = None, name: str = ""):
        super().__init__(model, tokenizer, config or QLMConfig(), name)
        head, rest = self.config.template.split("{document}", 1)
        middle = rest[: -len("{query}")]
        stripped = middle.rstrip(" ")
        self._query_prefix = middle[len(stripped):]  # a space before the slot belongs to the query's first token
        self._head = leading_special_tokens(tokenizer) + self._encode(head)
        self._middle = self._encode(stripped)
        self.cut_queries = 0

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def query_ids(self, query: str) -> list[int]:
        """The query's tokens as they follow the template (the spaces before the slot lead its first
        token), cut to ``query_max_tokens`` (counted in ``cut_queries``)."""
        ids = self._encode(self._query_prefix + query) if query else []
        if not ids:
            end = self.tokenizer.eos_token_id
            ids = [end if end is not None else self.tokenizer.pad_token_id]  # an empty query: score the end of text
        if len(ids) > self.config.query_max_tokens:
            self.cut_queries += 1
            ids = ids[: self.config.query_max_tokens]
        return ids

    def encode_pair(self, query: str, document: str) -> tuple[list[int], int]:
        """``(token ids, query length)``: the prompt with the document cut to its budget, then the query."""
        q = self.query_ids(query)
        doc = self._encode(document)[: self.config.doc_max_tokens]
        return self._head + doc + self._middle + q, len(q)

    @staticmethod
    def prompt_length(encoded: tuple[list[int], int]) -> int:
        return len(encoded[0])

    def token_logprobs(self, encoded: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp, mask)``, both ``[batch, max m]``: log P of each query token (right-aligned) and which
        entries are real query tokens. Differentiable when training."""
        ids = [x for x, _ in encoded]
        m = max(n for _, n in encoded)
        batch = self.left_padded(ids)
        logits = self.forward_lm(batch, logits_to_keep=m + 1).logits[:, :-1].float()   # predicts the last m tokens
        targets = batch["input_ids"][:, -m:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
        lengths = torch.tensor([n for _, n in encoded], device=logp.device)
        mask = torch.arange(m, device=logp.device)[None] >= (m - lengths)[:, None]
        return logp * mask, mask

    def reduce(self, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = logp.sum(1)
        return total / mask.sum(1) if self.config.reduce == "mean" else total

    def batch_scores(self, encoded: Sequence[tuple[list[int], int]]) -> torch.Tensor:
        return self.reduce(*self.token_logprobs(encoded))

    def score_pairs(self, pairs, batch_size: int = 8, show_progress: bool = False) -> list[float]:
        before = self.cut_queries
        scores = super().score_pairs(pairs, batch_size, show_progress)
        if self.cut_queries > before:
            log.warning("qlm: %d query(ies) cut to query_max_tokens=%d", self.cut_queries - before, self.config.query_max_tokens)
        return scores

    def train_step(self, groups: list[tuple[str, list[str]]], config, options=None, step: int = 0):
        """Loss of one step of query-likelihood groups. SFT forwards the positives only (its loss ignores
        the negatives); CL and unified forward every (query, document) pair of the group."""
        docs_used = 1 if config.objective == "sft" else config.group_size
        encoded = [self.encode_pair(q, d) for q, docs in groups for d in docs[:docs_used]]
        scores = self.batch_scores(encoded).view(len(groups), docs_used)
        record = {"s_pos": scores[:, 0].mean().item()}
        if docs_used > 1:
            record["s_neg"] = scores[:, 1:].mean().item()
            record["hit"] = (scores.argmax(1) == 0).float().mean().item()
        return qlm_losses(scores, config), record
