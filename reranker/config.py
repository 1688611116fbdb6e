"""The reranker layer's configuration dataclasses, importable without torch (the CLI builds its flags from them).

Fields carry their help text and value constraints as metadata (``densekit.retriever.config.setting``).
"""
from __future__ import annotations

from dataclasses import dataclass

from densekit.core.settings import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, check_fields, setting

@dataclass
class RerankTrainConfig:
    """Reranker training (``densekit.reranker.train.train_reranker``), what every kind shares: one objective, LoRA (or
    full) tuning, the engine's loop. A kind's own training settings are its ``train_options`` (``reranker/kinds.py``)."""

    objective: str | None = setting(None, "training objective, one the kind trains with (default: its first; "
                                    "pointwise, qlm, cross: sft | cl | unified; blockrank: blockrank)")
    weight: str = setting("sft", "unified: where the per-example gradient weight comes from", choices=("sft", "cl"))
    direction: str = setting("sft", "unified: where the gradient direction comes from", choices=("sft", "cl"))
    temperature: float = setting(1.0, "CL softmax temperature on the yes logit", **POSITIVE)
    group_size: int = setting(8, "documents per training group: 1 positive + (group size - 1) negatives", min=2,
                              what="a group size (1 positive + at least 1 negative)")
    batch_size: int = setting(2, "groups per optimizer step, all processes together (N processes take batch/N each)",
                              **AT_LEAST_ONE)
    lr: float = setting(1e-4, "peak learning rate (AdamW)", **POSITIVE)
    bf16: bool = setting(False, "bfloat16 mixed precision (autocast; the weights and optimizer state stay float32)")
    epochs: int = setting(1, "passes over the training groups", **AT_LEAST_ONE)
    max_steps: int | None = setting(None, "stop after this many optimizer steps (default: all epochs)", **AT_LEAST_ONE)
    warmup_ratio: float = setting(0.1, "fraction of the steps with a linear warm-up", **FRACTION)
    seed: int = setting(42, "seed of the group order and sampling", **NON_NEGATIVE)
    lora: bool = setting(True, "train LoRA adapters (off: full fine-tuning)", aliases=("--full",))
    lora_r: int = setting(8, "LoRA rank", **AT_LEAST_ONE)
    lora_alpha: int = setting(16, "LoRA alpha (the adapters' scale is alpha / r)", **AT_LEAST_ONE)
    lora_dropout: float = setting(0.05, "LoRA dropout", **FRACTION)
    lora_targets: list[str] | None = setting(None, "module names LoRA adapts (default: q_proj k_proj v_proj o_proj)")
    checkpoint_every: int = setting(50, "optimizer steps between checkpoints", **AT_LEAST_ONE)
    train_layers: int | None = setting(None, "train only the top L decoder layers (lower ones get no gradient)",
                                       **AT_LEAST_ONE)
    micro_batch: int | None = setting(None, "groups per forward; gradients accumulate up to the batch size (default: "
                                      "the batch size)", **AT_LEAST_ONE)
    cache_lower_layers: bool = setting(False, "with --train-layers: keep each prompt's frozen lower-layer output, so a "
                                       "prompt seen in an earlier epoch runs the top layers only (reranker/layer_cache.py)")
    train_doc_tokens: int | None = setting(None, "cut training documents to this many tokens (cheaper steps); scoring keeps "
                                           "the reranker's own --doc-max-tokens", **AT_LEAST_ONE)
    lower_cache_dir: str | None = setting(None, "with --cache-lower-layers: keep the frozen layers' output on disk here "
                                          "too, shared by every run over the same lower layers (e.g. SFT and CL runs)")
    fixed_negatives: bool = setting(False, "draw each query's negatives once instead of every epoch (the same prompts "
                                    "recur, which --cache-lower-layers needs to pay off)")

    def __post_init__(self):
        check_fields(self)
        if self.cache_lower_layers and not self.train_layers:
            raise ValueError("--cache-lower-layers needs --train-layers L: only layers below the trained ones can be cached")
        if self.lower_cache_dir and not self.cache_lower_layers:
            raise ValueError("--lower-cache-dir needs --cache-lower-layers")


@dataclass
class BlockRankTrainOptions:
    """BlockRank's own training settings (``BlockRanker.train_step``): the attention loss beside the LM loss."""

    aux_weight: float = setting(0.1, "blockrank: total loss = LM loss + aux weight * attention InfoNCE", **NON_NEGATIVE)
    aux_temperature: float = setting(0.05, "blockrank: tau of the attention InfoNCE", **POSITIVE)
    aux_only: bool = setting(False, "blockrank: train the attention InfoNCE alone (no LM loss): LoRA and every forward "
                             "stop at the scoring layer")

    def __post_init__(self):
        check_fields(self)


@dataclass
class RerankerConfig:
    """The pointwise yes/no prompt (``densekit.reranker.pointwise.LLMReranker``)."""

    instruction: str = setting("Judge whether the document is relevant to the search query.",
                               "pointwise: the task text of the prompt")
    yes: str = setting("yes", "pointwise: the answer word for relevant (a single token)")
    no: str = setting("no", "pointwise: the answer word for not relevant (a single token)")
    query_max_tokens: int = setting(64, "query tokens kept", **AT_LEAST_ONE)
    doc_max_tokens: int = setting(192, "document tokens kept", **AT_LEAST_ONE)
    use_chat_template: bool = setting(True, "pointwise: wrap the prompt in the tokenizer's chat template when it has one")


DEFAULT_TEMPLATE = "Passage: {document}\nPlease write a question or claim that this passage answers.\nQuestion: {query}"


@dataclass
class QLMConfig:
    """The query-likelihood prompt and score (``densekit.reranker.qlm.QLMReranker``)."""

    template: str = setting(DEFAULT_TEMPLATE, "qlm: prompt with a {document} slot, then a {query} slot that ends it")
    reduce: str = setting("mean", "qlm: mean or sum of the query tokens' log-probabilities", choices=("mean", "sum"))
    doc_max_tokens: int = setting(160, "document tokens kept", **AT_LEAST_ONE)
    query_max_tokens: int = setting(64, "query tokens kept", **AT_LEAST_ONE)

    def __post_init__(self):
        head, sep, rest = self.template.partition("{document}")
        if not sep or "{query}" not in rest or "{query}" in head:
            raise ValueError(f"QLM template needs a {{document}} slot followed by a {{query}} slot, got {self.template!r}")
        if not rest.endswith("{query}"):
            raise ValueError(f"QLM template must end with its {{query}} slot (text after it is never scored), got {self.template!r}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"QLM reduce must be mean or sum, got {self.reduce!r}")
        if self.doc_max_tokens < 1 or self.query_max_tokens < 1:
            raise ValueError("QLM doc_max_tokens and query_max_tokens must be >= 1")


@dataclass
class BlockRankConfig:
    """The BlockRank prompt and attention scoring (``densekit.reranker.blockrank.BlockRanker``)."""

    instruction: str = setting("You are given a search query and a list of documents, each shown as "
                               "'ID: [i] | CONTENT: ... | END ID: [i]'. Find the document that best answers the query "
                               "and reply with its ID.\nQuery: {query}\n", "the task text before the documents")
    query_template: str = setting("Query: {query}\nFinal Answer: [", "the query block after the documents")
    answer_template: str = setting("{id}]", "the answer (training target), {id} the relevant document's number")
    doc_max_tokens: int = setting(128, "document tokens kept per block", **AT_LEAST_ONE)
    query_max_tokens: int = setting(64, "query tokens kept", **AT_LEAST_ONE)
    score_layer: int | None = setting(None, "0-based layer read for attention scores (default: the probed layer of a "
                                      "packaged model, else 60% depth)", **NON_NEGATIVE)
    signal_tokens: int | None = setting(None, "the last tokens of the query block whose attention scores the documents; "
                                        "0 = every query-block token (default: probed, else 2)", **NON_NEGATIVE)
    doc_mass: str | None = setting(None, "a document's score: its attention mass summed over its tokens, or their mean "
                                   "(no length bias) (default: probed, else sum)", choices=("sum", "mean"))
    score_heads: list[int] | None = setting(None, "attention heads averaged for the score (default: probed, else all)")
    doc_batch: int = setting(32, "doc blocks per forward of the efficient path (bounds activation memory)",
                             **AT_LEAST_ONE)


@dataclass
class CrossEncoderConfig:
    """The cross-encoder's input (``densekit.reranker.cross.CrossEncoderRanker``): ``[CLS] query [SEP] document [SEP]``."""

    query_max_tokens: int = setting(64, "query tokens kept", **AT_LEAST_ONE)
    max_length: int = setting(256, "cross: tokens of the whole (query, document) input; the document is cut to fit",
                              min=8, what="a length of at least 8 tokens")
