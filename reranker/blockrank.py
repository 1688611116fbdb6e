"""BlockRank: blockwise in-context ranking ("Scalable In-context Ranking with Generative Models").

Prompt (token ids, each block tokenized on its own)::

    [instruction][doc 0][doc 1] ... [doc N-1][query block][answer]
    instruction = leading special tokens + task text (with the query)
    doc i       = "ID: [i] | CONTENT: <title + text cut to doc_max_tokens> | END ID: [i]\\n"
    query block = "Query: <query>\\nFinal Answer: ["      (its last ``signal_tokens`` tokens are the signal tokens)
    answer      = "<i>]"                                   (training target: the relevant document's id)

Attention is block-sparse: the instruction is causal in itself; doc block i sees the instruction and,
causally, itself; the query block (and answer) sees everything before it and, causally, itself.
Position ids: the instruction takes 0..L0-1; every doc block restarts at L0 (``L0 .. L0+len_i-1``);
the query block starts at ``L0 + max_i len_i``. So no block ever sees positions beyond
instruction + one document + query, whatever N is.

Two paths compute the same thing:

- ``reference_forward``: the whole sequence in one standard forward with the pattern as an explicit
  4-D mask (``dense_mask``) and eager attention; O((N*L)^2). For tests.
- ``forward_blocks`` (efficient): the instruction is prefilled once; the N doc blocks run in batches
  of ``doc_batch`` against the instruction's keys/values (cost N * L * (L0 + L), linear in N); the query block
  then attends to the concatenated keys/values. Our own layer loop runs the model's decoder layers, so
  scoring stops at the scoring layer: layers above it never run.

Scores: at layer ``l`` (default ``round(0.6 * n_layers)``, 0-based), the attention logits from each
signal token (each head) to the document tokens, softmaxed over document tokens only; a document's
mass ``m_i`` is the sum over its tokens, averaged over heads and signal tokens (``sum_i m_i = 1``).
Auxiliary loss: ``-log softmax(m / tau)[positive]`` (InfoNCE, tau ~ 0.05); training loss =
LM cross-entropy on the answer tokens + ``lambda * aux`` (lambda ~ 0.1).
"""
from __future__ import annotations

import inspect
import random
import re
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from densekit.core.text import doc_text

from .base import CausalLMRanker, leading_special_tokens, register
from .config import BlockRankConfig, BlockRankTrainOptions

ATTENTION_NAME = "densekit_blockrank"


@dataclass
class BlockPrompt:
    """Token ids of one prompt, block by block."""

    instruction: list[int]
    docs: list[list[int]]
    query: list[int]
    answer: list[int] = field(default_factory=list)

    @property
    def tail(self) -> list[int]:
        return self.query + self.answer

    def ids(self) -> list[int]:
        return self.instruction + [t for d in self.docs for t in d] + self.tail

    def block_ids(self) -> list[int]:
        """Per token, in sequence order: 0 instruction, i + 1 doc i, N + 1 query block and answer."""
        out = [0] * len(self.instruction)
        for i, d in enumerate(self.docs):
            out += [i + 1] * len(d)
        return out + [len(self.docs) + 1] * len(self.tail)

    def positions(self) -> list[int]:
        """Position ids: docs restart after the instruction; the query block follows the longest doc."""
        start = len(self.instruction)
        longest = max((len(d) for d in self.docs), default=0)
        out = list(range(start))
        for d in self.docs:
            out += list(range(start, start + len(d)))
        return out + list(range(start + longest, start + longest + len(self.tail)))

    def signal_rows(self, n: int) -> list[int]:
        """Indices within ``tail`` of the last ``n`` query-block tokens (before the answer); 0: every one."""
        return list(range(len(self.query) - n if n else 0, len(self.query)))


def dense_mask(prompt: BlockPrompt) -> torch.Tensor:
    """``[T, T]`` bool, True where token i may attend token j (the reference pattern)."""
    b = torch.tensor(prompt.block_ids())
    i = torch.arange(len(b))
    causal = i[:, None] >= i[None, :]
    same = b[:, None] == b[None, :]
    to_instruction = b[None, :] == 0
    from_query = b[:, None] == len(prompt.docs) + 1
    return causal & (same | to_instruction | from_query)


def doc_masks(prompt: BlockPrompt) -> torch.Tensor:
    """``[N, Ld, L0 + Ld]`` bool for the batched doc blocks (right-padded to ``Ld``): every row sees the
    instruction and, causally, the real tokens of its own doc."""
    L0, lens = len(prompt.instruction), [len(d) for d in prompt.docs]
    Ld = max(lens)
    r = torch.arange(Ld)
    own = (r[None, :, None] >= r[None, None, :]) & (r[None, None, :] < torch.tensor(lens)[:, None, None])
    return torch.cat([torch.ones(len(lens), Ld, L0, dtype=torch.bool), own], dim=2)


class _PrefixCache:
    """Stands in for a transformers Cache inside our layer loop: layer i attends to ``prefix[i]`` (keys and
    values already rotated; broadcast over the batch) followed by the new keys/values, which are kept in
    ``new`` (the prefix is not copied into it, so memory holds each block's keys/values once)."""

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.prefix, self.new = prefix, {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key, value)
        if self.prefix is not None:
            pk, pv = self.prefix[layer_idx]
            key = torch.cat([pk.expand(key.shape[0], -1, -1, -1), key], dim=2)
            value = torch.cat([pv.expand(value.shape[0], -1, -1, -1), value], dim=2)
        return key, value

    def joined(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix + new keys/values of one layer (batch 1)."""
        k, v = self.new[layer_idx]
        if self.prefix is None:
            return k, v
        pk, pv = self.prefix[layer_idx]
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA attention that also hands the scoring layer's (rotated) queries and keys to the caller."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    capture = kwargs.pop("blockrank_capture", None)
    if capture is not None:
        entry = dict(query=query, key=key, scaling=module.scaling, groups=module.num_key_value_groups,
                     window=getattr(module, "sliding_window", None))
        if module.layer_idx == capture["layer"]:
            capture.update(entry)
        if capture.get("every") is not None:  # the probe: every layer's
            capture["every"][module.layer_idx] = entry
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


# Decoder stacks whose layers the efficient path runs (embed_tokens, rotary_emb, layers(h, attention_mask,
# position_ids, cache, position_embeddings)); Gemma-3 adds per-layer-type rotary and sliding windows.
SUPPORTED_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text"}
# transformers 5.24 renamed the decoder layers' ``past_key_values`` argument to ``cache`` (the old name warns until
# its removal in 5.40). Before 5.24 a ``cache=`` keyword would fall into the layers' ``**kwargs`` and be ignored,
# so the doc and query blocks would silently lose the keys/values before them: hence the floor in pyproject.
CACHE_ARG = "cache"


def layer_masks(allowed: torch.Tensor, positions: torch.Tensor, key_positions: torch.Tensor,
                windows: dict[str, int | None]) -> dict[str, torch.Tensor]:
    """Per layer type, the boolean mask ``[batch, rows, keys]``: ``allowed`` for full attention; for a
    sliding-window type of window ``w``, also ``position(row) - position(key) < w``. The window is measured in
    BlockRank's position ids (documents restart after the instruction), the distances the model's rotary
    embeddings see, so a sliding layer of the query block reaches every document within ``w`` positions."""
    out = {}
    for layer_type, window in windows.items():
        if window is None:
            out[layer_type] = allowed
        else:
            near = (positions[:, :, None] - key_positions[:, None, :]) < window
            out[layer_type] = allowed & near
    return out


def _additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def _head_mass(probs: torch.Tensor, lens: Sequence[int], reduce: str = "sum") -> torch.Tensor:
    """``[heads, signals, doc tokens]`` probabilities -> ``[heads, N]``: each document's mass summed over its
    tokens (``reduce="mean"``: divided by its token count, so length earns nothing), averaged over signals."""
    lengths = torch.tensor(lens, device=probs.device)
    owner = torch.repeat_interleave(torch.arange(len(lens), device=probs.device), lengths)
    per_doc = torch.zeros(*probs.shape[:2], len(lens), dtype=probs.dtype, device=probs.device).index_add(2, owner, probs)
    if reduce == "mean":
        per_doc = per_doc / lengths.to(per_doc.dtype)
    return per_doc.mean(dim=1)


def _doc_mass(probs: torch.Tensor, lens: Sequence[int], reduce: str = "sum", heads: Sequence[int] | None = None) -> torch.Tensor:
    """``[N]`` per-document mass (``_head_mass``) averaged over ``heads`` (default: every head)."""
    per_head = _head_mass(probs, lens, reduce)
    return (per_head if heads is None else per_head[list(heads)]).mean(dim=0)


def _signal_probs(entry: dict, prompt: BlockPrompt, signal_tokens: int) -> torch.Tensor:
    """``[heads, signals, doc tokens]``: softmax over document tokens only of the signal rows' attention
    logits, from one layer's captured (rotated) queries of the tail and keys of the whole sequence."""
    L0, n_docs = len(prompt.instruction), sum(len(d) for d in prompt.docs)
    rows = prompt.signal_rows(signal_tokens)
    q = entry["query"][0, :, rows]
    k = entry["key"][0, :, L0:L0 + n_docs].repeat_interleave(entry["groups"], dim=0)
    logits = (q @ k.transpose(-1, -2)).float() * entry["scaling"]
    if entry.get("window"):  # a sliding-window layer: the documents its window reaches (``layer_masks``)
        positions = prompt.positions()
        tail = positions[len(positions) - len(prompt.tail):]
        near = (torch.tensor([tail[r] for r in rows])[:, None] - torch.tensor(positions[L0:L0 + n_docs])[None]) < entry["window"]
        if not near.any(dim=1).all():
            raise ValueError(f"the scoring layer's sliding window ({entry['window']} positions) does not reach the documents "
                             "from the query block: score at a full-attention layer or cut the documents shorter")
        logits = logits.masked_fill(~near.to(logits.device), float("-inf"))
    return torch.softmax(logits, dim=-1)


# Scoring defaults per packaged model, chosen by the zero-shot probe (bench/blockrank_probe.py) on tuning splits only,
# never a test or held-out figure; tests/test_blockrank.py holds each entry to the probe's last pooled summary in
# bench/results/blockrank_probe.jsonl. Models not listed get the paper's choices: layer round(0.6 * layers), the last
# 2 query-block tokens, summed mass, all heads.
PROBED: dict[str, dict] = {
    # python bench/blockrank_probe.py --model HuggingFaceTB/SmolLM2-135M-Instruct: pooled over scifact train, nfcorpus
    # dev and DL20 (BM25 top 20 in random order, each dataset weighted equally), nDCG@10 0.416 against 0.241 for
    # random order; each dataset's own best (layers 17 / 18 / 7) is beside it in the results file.
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"score_layer": 17, "signal_tokens": 0, "doc_mass": "mean", "score_heads": [0, 3, 4, 5]},
    # python bench/blockrank_probe.py --model google/gemma-3-270m --queries 20: pooled over the first 20 judged queries
    # of the same three splits (nfcorpus: 16 with a BM25 candidate), nDCG@10 0.430 against 0.259 for random order at
    # layer 5, its first full-attention layer (its 4 heads all kept); each split's own best: layers 5 / 1 / 17.
    "google/gemma-3-270m": {"score_layer": 5, "signal_tokens": 0, "doc_mass": "mean", "score_heads": None},
}
PAPER = {"signal_tokens": 2, "doc_mass": "sum", "score_heads": None}


@register
class BlockRanker(CausalLMRanker):
    kind = "blockrank"
    supports_layer_cache = False  # one prompt per group of 20 documents: its prompts rarely recur

    def __init__(self, model, tokenizer, config: BlockRankConfig | None = None, name: str = ""):
        from transformers import AttentionInterface

        super().__init__(model, tokenizer, config or BlockRankConfig(), name)
        family = getattr(self._base().config, "model_type", "?")
        if family not in SUPPORTED_FAMILIES:
            raise ValueError(f"BlockRank's efficient path runs the decoder layers of {', '.join(sorted(SUPPORTED_FAMILIES))} "
                             f"models, not {family!r} ({type(self._base()).__name__}): use the pointwise or qlm reranker")
        inner = self._base().model
        if CACHE_ARG not in inspect.signature(inner.layers[0].forward).parameters:
            import transformers

            raise RuntimeError(f"BlockRank needs transformers>=5.24 (decoder layers taking `{CACHE_ARG}=`); "
                               f"this is transformers {transformers.__version__}")
        n = len(inner.layers)
        self.layer_types = list(getattr(self._base().config, "layer_types", None) or ["full_attention"] * n)
        window = getattr(self._base().config, "sliding_window", None)
        self.windows = {t: (window if t == "sliding_attention" else None) for t in set(self.layer_types)}
        self._typed_rotary = "layer_type" in inspect.signature(inner.rotary_emb.forward).parameters
        AttentionInterface.register(ATTENTION_NAME, _capturing_attention)
        self._base().set_attn_implementation(ATTENTION_NAME)
        self._bos = leading_special_tokens(tokenizer)

    def _base(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def n_layers(self) -> int:
        return len(self._base().model.layers)

    def setting(self, name: str):
        """A scoring choice: the config's, else the probed default of this model (``PROBED``), else the paper's."""
        value = getattr(self.config, name)
        if value is not None:
            return value
        probed = PROBED.get(self.name, {})
        if name in probed:
            return probed[name]
        return round(0.6 * self.n_layers) if name == "score_layer" else PAPER[name]

    @property
    def score_layer(self) -> int:
        layer = self.setting("score_layer")
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"score_layer {layer} is outside the model's layers 0..{self.n_layers - 1}")
        return layer

    # ------------------------------------------------------------ prompts
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def build_prompt(self, query: str, docs: Sequence[str], answer: int | None = None) -> BlockPrompt:
        """Token blocks for ``query`` and document texts; the query is cut to ``query_max_tokens``
        tokens, each document's content to ``doc_max_tokens`` (the id markers are never cut)."""
        if not docs:
            raise ValueError("BlockRank needs at least one document")
        c = self.config
        query = self.tokenizer.decode(self._encode(query)[: c.query_max_tokens])
        blocks = []
        for i, text in enumerate(docs):
            blocks.append(self._encode(f"ID: [{i}] | CONTENT: ") + self._encode(text)[: c.doc_max_tokens]
                          + self._encode(f" | END ID: [{i}]\n"))
        prompt = BlockPrompt(self._bos + self._encode(c.instruction.format(query=query)), blocks,
                             self._encode(c.query_template.format(query=query)))
        if len(prompt.query) < self.setting("signal_tokens"):
            raise ValueError(f"query block has {len(prompt.query)} tokens, fewer than signal_tokens={self.setting('signal_tokens')}")
        if answer is not None:
            prompt.answer = self._encode(c.answer_template.format(id=answer))
        limit = getattr(self._base().config, "max_position_embeddings", None)
        needed = len(prompt.instruction) + max(len(d) for d in prompt.docs) + len(prompt.tail)
        if limit is not None and needed > limit:
            raise ValueError(f"this BlockRank prompt needs {needed} positions (instruction + longest document block + "
                             f"query block), beyond the model's limit of {limit} (max_position_embeddings); the number "
                             "of documents does not count (their positions restart): lower doc_max_tokens or "
                             "query_max_tokens")
        return prompt

    # ------------------------------------------------------------ the two paths
    def _run(self, ids, positions, allowed, cache, n_layers, key_positions, capture=None) -> torch.Tensor:
        """Embed ``ids`` and run decoder layers ``0 .. n_layers-1`` with the boolean mask ``allowed``
        ``[batch, rows, keys]``; keys/values go through ``cache``. ``key_positions`` ``[batch, keys]``: the
        position ids of the keys, for sliding-window layers (``layer_masks``)."""
        inner = self._base().model
        h = inner.embed_tokens(ids)
        types = self.layer_types
        masks = {t: _additive(m, h.dtype).to(h.device)[:, None]
                 for t, m in layer_masks(allowed, positions.cpu(), key_positions.cpu(), self.windows).items()}
        pe = {t: (inner.rotary_emb(h, positions, t) if self._typed_rotary else inner.rotary_emb(h, positions))
              for t in set(types[:n_layers])}
        extra = {"blockrank_capture": capture} if capture is not None else {}
        for i, layer in enumerate(inner.layers[:n_layers]):
            h = layer(h, attention_mask=masks[types[i]], position_ids=positions, cache=cache,
                      position_embeddings=pe[types[i]], **extra)
        return h

    def forward_blocks(self, prompt: BlockPrompt, n_layers: int | None = None, every_layer: bool = False) -> dict:
        """Efficient path. Runs layers ``0 .. n_layers-1`` (default: up to the scoring layer) and returns
        ``hidden`` (the tail's last hidden states ``[1, len(tail), H]``), ``caches`` (per stage) and
        ``capture`` (the scoring layer's queries of the tail and keys of the whole sequence; with ``every_layer``
        also ``capture["every"][layer]``, the same for each layer run)."""
        n_layers = self.score_layer + 1 if n_layers is None else n_layers
        device = next(self.model.parameters()).device
        L0, lens = len(prompt.instruction), [len(d) for d in prompt.docs]
        N, Ld = len(lens), max(lens)
        # 1) instruction, causal
        c1 = _PrefixCache()
        self._run(torch.tensor([prompt.instruction], device=device), torch.arange(L0, device=device)[None],
                  torch.ones(L0, L0, dtype=torch.bool).tril()[None], c1, n_layers, torch.arange(L0)[None])
        # 2) doc blocks, ``doc_batch`` at a time, against the instruction's keys/values; each batch's
        #    new keys/values are kept without their padding, in document order
        pad = self.tokenizer.pad_token_id
        instruction_kv = [c1.new[i] for i in range(n_layers)]
        doc_kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n_layers)]
        for first in range(0, N, self.config.doc_batch):
            part = BlockPrompt(prompt.instruction, prompt.docs[first:first + self.config.doc_batch], [])
            plens = [len(d) for d in part.docs]
            width = max(plens)
            ids = torch.tensor([d + [pad] * (width - len(d)) for d in part.docs], device=device)
            c2 = _PrefixCache(instruction_kv)
            self._run(ids, (L0 + torch.arange(width, device=device)).expand(len(plens), width), doc_masks(part), c2, n_layers,
                      torch.cat([torch.arange(L0), L0 + torch.arange(width)])[None].expand(len(plens), -1))
            valid = (torch.arange(width)[None, :] < torch.tensor(plens)[:, None]).reshape(-1).to(device)
            for i in range(n_layers):  # [n, kv, width, d] -> [1, kv, real tokens, d]
                k, v = c2.new.pop(i)
                doc_kv[i].append(tuple(x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])[valid].transpose(0, 1)[None]
                                       for x in (k, v)))
        # 3) query block (+ answer) against instruction + every doc's real tokens
        prefix = []
        for i in range(n_layers):
            (k1, v1), parts = instruction_kv[i], doc_kv[i]
            prefix.append((torch.cat([k1] + [k for k, _ in parts], dim=2), torch.cat([v1] + [v for _, v in parts], dim=2)))
            doc_kv[i] = None  # drop the per-batch pieces as we go (memory ~ one copy)
        tail = prompt.tail
        n_prefix = L0 + sum(lens)
        allowed = torch.cat([torch.ones(len(tail), n_prefix, dtype=torch.bool),
                             torch.ones(len(tail), len(tail), dtype=torch.bool).tril()], dim=1)[None]
        start = L0 + Ld
        capture = {"layer": self.score_layer, "every": {} if every_layer else None}
        c3 = _PrefixCache(prefix)
        keys = torch.tensor(prompt.positions()[:n_prefix] + list(range(start, start + len(tail))))[None]
        hidden = self._run(torch.tensor([tail], device=device), (start + torch.arange(len(tail), device=device))[None],
                           allowed, c3, n_layers, keys, capture)
        return {"hidden": hidden, "capture": capture, "cache": c3, "n_layers": n_layers}

    def doc_mass(self, prompt: BlockPrompt, capture: dict) -> torch.Tensor:
        """``[N]`` attention mass per document from the captured scoring-layer queries/keys (see module doc),
        with this model's signal tokens, per-document reduction and heads (``setting``)."""
        probs = _signal_probs(capture, prompt, self.setting("signal_tokens"))
        return _doc_mass(probs, [len(d) for d in prompt.docs], self.setting("doc_mass"), self.setting("score_heads"))

    @torch.inference_mode()
    def layer_masses(self, query: str, docs: Sequence[str | dict]) -> torch.Tensor:
        """The probe's raw material: ``[layers, 2, 2, heads, N]`` per-head document mass at every layer, for
        signal tokens (last ``PAPER`` 2, every query-block token) x reduction (sum, mean over the doc's tokens)."""
        prompt = self.build_prompt(query, [doc_text(d) for d in docs])
        was = self.model.training
        self.model.eval()
        try:
            every = self.forward_blocks(prompt, n_layers=self.n_layers, every_layer=True)["capture"]["every"]
        finally:
            self.model.train(was)
        lens = [len(d) for d in prompt.docs]
        return torch.stack([torch.stack([torch.stack([_head_mass(_signal_probs(every[layer], prompt, signals), lens, reduce)
                                                      for reduce in ("sum", "mean")])
                                         for signals in (PAPER["signal_tokens"], 0)])
                            for layer in range(self.n_layers)])

    def reference_forward(self, prompt: BlockPrompt, n_layers: int | None = None) -> dict:
        """Reference path: one standard forward of the whole sequence with ``dense_mask`` and eager
        attention. Returns the tail's hidden states after ``n_layers`` and the per-document mass."""
        base = self._base()
        device = next(self.model.parameters()).device
        ids = torch.tensor([prompt.ids()], device=device)
        positions = torch.tensor([prompt.positions()])
        masks = {t: _additive(m, torch.float32)[:, None].to(device)
                 for t, m in layer_masks(dense_mask(prompt)[None], positions, positions, self.windows).items()}
        mask = masks if set(masks) != {"full_attention"} else masks["full_attention"]
        base.set_attn_implementation("eager")
        try:
            out = base.model(input_ids=ids, attention_mask=mask, position_ids=positions.to(device),
                             output_attentions=True, output_hidden_states=True)
        finally:
            base.set_attn_implementation(ATTENTION_NAME)
        blocks = torch.tensor(prompt.block_ids())
        n_tail = len(prompt.tail)
        rows = [len(blocks) - n_tail + r for r in prompt.signal_rows(self.setting("signal_tokens"))]
        is_doc = ((blocks >= 1) & (blocks <= len(prompt.docs))).to(device)
        probs = out.attentions[self.score_layer][0][:, rows][:, :, is_doc].float()
        probs = probs / probs.sum(-1, keepdim=True)
        lens = [len(d) for d in prompt.docs]
        n_layers = self.score_layer + 1 if n_layers is None else n_layers
        hidden = out.hidden_states[n_layers][:, -n_tail:] if n_layers < self.n_layers else out.last_hidden_state[:, -n_tail:]
        return {"hidden": hidden, "mass": _doc_mass(probs, lens, self.setting("doc_mass"), self.setting("score_heads"))}

    # ------------------------------------------------------------ training
    def loss(self, prompt: BlockPrompt, positive: int, aux_weight: float = 0.1, temperature: float = 0.05,
             aux_only: bool = False) -> tuple[torch.Tensor, dict]:
        """``LM cross-entropy(answer tokens) + aux_weight * InfoNCE(mass / temperature, positive)``; with
        ``aux_only`` the InfoNCE alone, and the layers above the scoring layer never run."""
        if aux_only:
            mass = self.doc_mass(prompt, self.forward_blocks(prompt)["capture"])
            aux = F.cross_entropy((mass / temperature)[None], torch.tensor([positive], device=mass.device))
            return aux, {"lm": 0.0, "aux": aux.item(), "hit": int(mass.argmax().item() == positive)}
        if not prompt.answer:
            raise ValueError("the prompt has no answer tokens (build_prompt(..., answer=i))")
        out = self.forward_blocks(prompt, n_layers=self.n_layers)
        base = self._base()
        n_q, n_a = len(prompt.query), len(prompt.answer)
        h = base.model.norm(out["hidden"][0, n_q - 1:n_q + n_a - 1])
        logits = base.lm_head(h).float()
        target = torch.tensor(prompt.answer, device=logits.device)
        lm = F.cross_entropy(logits, target)
        mass = self.doc_mass(prompt, out["capture"])
        aux = F.cross_entropy((mass / temperature)[None], torch.tensor([positive], device=mass.device))
        total = lm + aux_weight * aux
        return total, {"lm": lm.item(), "aux": aux.item(), "hit": int(mass.argmax().item() == positive)}

    # ------------------------------------------------------------ inference
    @torch.inference_mode()
    def score(self, query: str, docs: Sequence[str | dict]) -> list[float]:
        """Attention mass per document (sums to 1); layers above the scoring layer are not run."""
        prompt = self.build_prompt(query, [doc_text(d) for d in docs])
        was = self.model.training
        self.model.eval()
        try:
            return self.doc_mass(prompt, self.forward_blocks(prompt)["capture"]).tolist()
        finally:
            self.model.train(was)

    @torch.inference_mode()
    def decode(self, query: str, docs: Sequence[str | dict], max_new_tokens: int = 6) -> int | None:
        """Greedy-decode the answer id after "Final Answer: ["; None when it names no listed document."""
        prompt = self.build_prompt(query, [doc_text(d) for d in docs])
        base = self._base()
        out = self.forward_blocks(prompt, n_layers=self.n_layers)
        cache, hidden = out["cache"], out["hidden"]
        device = hidden.device
        position = len(prompt.instruction) + max(len(d) for d in prompt.docs) + len(prompt.tail)
        key_positions = prompt.positions()
        generated: list[int] = []
        for _ in range(max_new_tokens):
            token = int(base.lm_head(base.model.norm(hidden[0, -1:])).argmax(-1).item())
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if "]" in text or token == self.tokenizer.eos_token_id:
                break
            prefix = [cache.joined(i) for i in range(self.n_layers)]
            cache = _PrefixCache(prefix)
            key_positions = key_positions + [position]
            hidden = self._run(torch.tensor([[token]], device=device), torch.tensor([[position]], device=device),
                               torch.ones(1, 1, prefix[0][0].shape[2] + 1, dtype=torch.bool), cache, self.n_layers,
                               torch.tensor([key_positions]))
            position += 1
        match = re.match(r"\s*(\d+)", self.tokenizer.decode(generated))
        found = int(match.group(1)) if match else None
        return found if found is not None and found < len(docs) else None

    def score_groups(self, groups: Sequence[tuple[str, list[str]]], batch_size: int = 8, show_progress: bool = False,
                     mode: str | None = None) -> list[list[float]]:
        """One prompt per group (documents in the given order). ``mode="attention"``: score = attention
        mass; ``mode="decode"``: the given order, with the decoded document moved first.
        ``batch_size`` is unused (the doc blocks are batched by ``config.doc_batch``)."""
        from tqdm.auto import tqdm

        mode = self.check_mode(mode)
        out = []
        for query, docs in tqdm(groups, desc=f"blockrank {mode}", disable=not show_progress):
            if mode == "attention":
                out.append(self.score(query, docs))
                continue
            chosen = self.decode(query, docs)
            scores = [float(len(docs) - i) for i in range(len(docs))]
            if chosen is not None:
                scores[chosen] = float(len(docs) + 1)
            out.append(scores)
        return out

    def train_step(self, groups: list[tuple[str, list[str]]], config, options=None, step: int = 0):
        """Mean BlockRank loss (LM + aux_weight * attention InfoNCE, ``options``: ``BlockRankTrainOptions``) over the
        step's groups, each group one prompt with its documents shuffled by (seed, step); logs the LM and aux parts and
        the attention hit rate."""
        options = options or BlockRankTrainOptions()
        losses, parts = [], []
        for query, docs, answer in blockrank_groups(groups, config.seed, step):
            loss, part = self.loss(self.build_prompt(query, docs, answer), answer, options.aux_weight, options.aux_temperature,
                                   options.aux_only)
            losses.append(loss)
            parts.append(part)
        record = {k: sum(p[k] for p in parts) / len(parts) for k in ("lm", "aux", "hit")}
        return torch.stack(losses).mean(), record

    def lora_layers(self, config, options) -> list[int] | None:
        """With ``aux_only`` only the layers up to the scoring layer ever run: LoRA adapts the top ``train_layers`` of
        those (all of them by default); otherwise the top ``train_layers`` of the model."""
        if options is not None and options.aux_only:
            top = self.score_layer
            return list(range(max(0, top + 1 - (config.train_layers or top + 1)), top + 1))
        return super().lora_layers(config, options)


def blockrank_groups(groups: list[tuple[str, list[str]]], seed: int, step: int) -> list[tuple[str, list[str], int]]:
    """Shuffle each group's documents (positive first on input) with an RNG fixed by (seed, step), so the
    answer position carries no signal and a resumed run sees the same order; returns (query, docs, answer)."""
    out = []
    for i, (query, docs) in enumerate(groups):
        order = list(range(len(docs)))
        random.Random(f"{seed}-{step}-{i}").shuffle(order)
        out.append((query, [docs[j] for j in order], order.index(0)))
    return out
