"""The retriever layer's configuration dataclasses, importable without torch (the CLI builds its flags from them);
each field's help and constraints are data (``densekit.core.settings``)."""
from __future__ import annotations

from dataclasses import dataclass

from densekit.core.settings import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, check_fields, setting


DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"   # the dense first stage when no model is named
DISTILL_LOSSES = ("margin-mse", "kl")  # train on the teacher scores the training examples carry


@dataclass
class TrainConfig:
    """Dual-encoder training (``densekit.retriever.train.train``)."""

    loss: str = setting("infonce", "training loss: InfoNCE, MW (Mann-Whitney U, AUC), or distillation of the training "
                        "file's teacher scores: margin-mse (Margin-MSE) or kl (listwise KL)",
                        choices=("infonce", "mw") + DISTILL_LOSSES)
    temperature: float = setting(0.05, "score temperature tau (scores = q.d / tau; InfoNCE, MW, and the student's "
                                 "in margin-mse and kl)", **POSITIVE)
    teacher_temperature: float = setting(1.0, "kl: the teacher's score temperature (its softmax of t / tau_t)", **POSITIVE)
    symmetric: bool = setting(False, "InfoNCE: add the doc->query term")
    decoupled: bool = setting(False, "InfoNCE: DEXML decoupled softmax")
    per_query: bool = setting(False, "MW: pair positives only within their query")
    batch_size: int = setting(16, "queries per micro-batch, all processes together (N processes take batch/N each)",
                              **AT_LEAST_ONE)
    grad_accum: int = setting(1, "micro-batches per optimizer step", **AT_LEAST_ONE)
    n_negatives: int = setting(1, "hard negatives per query", **NON_NEGATIVE)
    lr: float = setting(2e-5, "peak learning rate (AdamW)", **POSITIVE)
    weight_decay: float = setting(0.01, "AdamW weight decay", **NON_NEGATIVE)
    warmup_ratio: float = setting(0.1, "fraction of the steps with a linear warm-up", **FRACTION)
    epochs: int = setting(1, "passes over the training examples", **AT_LEAST_ONE)
    max_steps: int | None = setting(None, "stop after this many optimizer steps (default: all epochs)", **AT_LEAST_ONE)
    seed: int = setting(42, "seed of the data order and of the model's random layers", **NON_NEGATIVE)
    bf16: bool = setting(False, "bfloat16 mixed precision")
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this value", **NON_NEGATIVE)
    lora: bool = setting(False, "train LoRA adapters instead of the whole model")
    lora_r: int = setting(16, "LoRA rank", **AT_LEAST_ONE)
    lora_alpha: int = setting(32, "LoRA alpha (the adapters' scale is alpha / r)", **AT_LEAST_ONE)
    lora_dropout: float = setting(0.05, "LoRA dropout", **FRACTION)
    lora_targets: list[str] | None = setting(None, "module names LoRA adapts (default: all linear layers)")
    grad_cache_chunk: int | None = setting(None, "GradCache: encode in chunks of this many texts", **AT_LEAST_ONE)
    embed_chunk: int | None = setting(None, "documents per forward, sorted by length (default 8 on CPU, the batch on GPU)",
                                      **AT_LEAST_ONE)
    checkpoint_every: int = setting(50, "optimizer steps between checkpoints", **AT_LEAST_ONE)
    keep_checkpoints: int = setting(2, "checkpoints kept (older ones are deleted)", **AT_LEAST_ONE)
    query_max_length: int | None = setting(None, "query tokens kept (default: the encoder's)", **AT_LEAST_ONE)
    doc_max_length: int | None = setting(None, "document tokens kept (default: the encoder's)", **AT_LEAST_ONE)
    gather_negatives: bool = setting(True, "several processes: every process's documents are negatives for all queries, "
                                     "as one process with the same batch size (off: each process's queries see only "
                                     "its own documents)")

    def __post_init__(self):
        check_fields(self)
        if self.loss in DISTILL_LOSSES and self.n_negatives < 1:
            raise ValueError(f"--loss {self.loss} compares each positive with its hard negatives: needs --n-negatives >= 1")

    def make_loss(self):
        """The loss module (``densekit.retriever.losses``; imports torch)."""
        from .losses import InfoNCELoss, ListwiseKLLoss, MarginMSELoss, MWLoss

        if self.loss == "infonce":
            return InfoNCELoss(self.temperature, symmetric=self.symmetric, decoupled=self.decoupled, gather=self.gather_negatives)
        if self.loss == "margin-mse":
            return MarginMSELoss(self.temperature, gather=self.gather_negatives)
        if self.loss == "kl":
            return ListwiseKLLoss(self.temperature, self.teacher_temperature, gather=self.gather_negatives)
        return MWLoss(self.temperature, per_query=self.per_query, gather=self.gather_negatives)


POOLINGS = ("mean", "cls", "last")


@dataclass
class EncoderConfig:
    """How a ``DualEncoder`` turns token states into an embedding."""

    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int = 256
    doc_max_length: int = 256
    query_prefix: str = ""
    doc_prefix: str = ""

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


@dataclass
class BM25Config:
    """bm25s settings (``densekit.retriever.bm25``)."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"
    stemmer: str | None = "english"


@dataclass
class MineConfig:
    """Which first-stage ranks become negatives (see ``densekit.retriever.mining.select_negatives``)."""

    rank_from: int = setting(10, "first rank kept (0-based); skipping the top avoids false negatives", **NON_NEGATIVE)
    rank_to: int = setting(50, "end of the kept ranks (exclusive)", **AT_LEAST_ONE)
    max_negatives: int | None = setting(20, "negatives kept per query", **AT_LEAST_ONE)
    max_ratio: float | None = setting(None, "drop candidates scoring above this x the lowest positive score (dense only)",
                                      **POSITIVE)
    relevance_level: int = setting(1, "min grade of a judged document that is never a negative", **AT_LEAST_ONE)
