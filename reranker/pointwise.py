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

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from retriever.runs import rank
from retriever.text import doc_text

from .base import CausalLMRanker, leading_special_tokens

DOC_SLOT = "\x00DOC\x00"


@dataclass
class RerankerConfig:
    instruction: str = "Judge whether the document is relevant to the search query."
    yes: str = "yes"
    no: str = "no"
    query_max_tokens: int = 64
    doc_max_tokens: int = 192
    use_chat_template: bool = True


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

    def _batch(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad so that the answer position is the last column of every row."""
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        device = next(self.model.parameters()).device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}

    def answer_logits(self, ids: Sequence[list[int]]) -> torch.Tensor:
        """``[batch, 2]`` logits of (yes, no) at the answer position (with gradients when training)."""
        batch = self._batch(ids)
        positions = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
        out = self.model(**batch, position_ids=positions, logits_to_keep=1)
        last = out.logits[:, -1, :]
        return last[:, [self.yes_id, self.no_id]].float()

    # ------------------------------------------------------------ inference
    @torch.inference_mode()
    def score_pairs(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8, show_progress: bool = False) -> list[float]:
        """``logit(yes) - logit(no)`` for each (query, document text), batched by prompt length."""
        from tqdm.auto import tqdm

        ids = [self.encode_pair(q, d) for q, d in pairs]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        scores = [0.0] * len(ids)
        was = self.model.training
        self.model.eval()
        for start in tqdm(range(0, len(order), batch_size), desc="rerank", disable=not show_progress):
            rows = order[start:start + batch_size]
            logits = self.answer_logits([ids[i] for i in rows])
            for i, value in zip(rows, (logits[:, 0] - logits[:, 1]).tolist()):
                scores[i] = value
        self.model.train(was)
        return scores

    def score(self, query: str, docs: Sequence[str | dict], batch_size: int = 8) -> list[float]:
        return self.score_pairs([(query, doc_text(d)) for d in docs], batch_size)

    def rerank(self, run: dict, corpus: dict, queries: dict[str, str], top_k: int = 20, batch_size: int = 8,
               show_progress: bool = True) -> dict[str, dict[str, float]]:
        """Re-score each query's top ``top_k``; documents below keep their order under the reranked ones.

        Doc ids absent from the corpus are dropped (one warning with the count).
        """
        pairs, keys, missing = [], [], 0
        tails = {}
        for qid, docs in run.items():
            ranking = rank(docs)
            head = [d for d in ranking[:top_k] if d in corpus]
            missing += sum(1 for d in ranking[:top_k] if d not in corpus)
            tails[qid] = [d for d in ranking[top_k:]]
            pairs += [(queries[qid], doc_text(corpus[d])) for d in head]
            keys += [(qid, d) for d in head]
        if missing:
            warnings.warn(f"rerank: skipped {missing} doc id(s) absent from the corpus", stacklevel=2)
        scores = self.score_pairs(pairs, batch_size, show_progress)
        out: dict[str, dict[str, float]] = {qid: {} for qid in run}
        for (qid, doc), s in zip(keys, scores):
            out[qid][doc] = s
        for qid, tail in tails.items():
            floor = min(out[qid].values(), default=0.0)
            for position, doc in enumerate(tail, start=1):
                out[qid][doc] = floor - position
        return out
