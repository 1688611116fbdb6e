"""Pointwise LLM reranker: one causal LM reads (instruction, query, document) and answers yes or no.

``score(q, d) = logit("yes") - logit("no")`` at the answer position (the next token after the
prompt), so ``P(yes | {yes, no}) = sigmoid(score)``. Only the last position's logits are computed
(``logits_to_keep=1``) and only two of them are read. The same model and prompt serve the SFT and CL
objectives (``reranker/train.py``).

Prompt: the tokenizer's chat template when it has one (user turn + generation prompt), else a
plain text prompt ending in ``"Answer:"``. The document is tokenized on its own and cut to
``doc_max_tokens``; the query and the answer slot are never truncated. Prompts are built as token
ids ``prefix + doc[:budget] + suffix`` so training and inference see identical inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import CausalLMRanker, leading_special_tokens, register
from .config import RerankerConfig

DOC_SLOT = "\x00DOC\x00"


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
    config_class = RerankerConfig

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
