"""The retriever layer's configuration dataclasses, importable without torch (the CLI builds its flags from them).

Each field that a user may set carries its documentation and its value constraints as data in the field's
metadata (``setting``): ``help``; ``min`` (with ``min_open`` for a strict bound) and ``max`` for numbers;
``choices`` for strings; ``what`` naming the kind of value in messages; ``aliases``, extra command-line
flags. ``check_fields`` enforces the constraints when a config is built; ``eval/args.py`` turns the same
metadata into argparse flags that refuse a bad value at parse time.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields


def setting(default=None, help: str = "", *, default_factory=None, **constraints):
    """A dataclass field whose metadata holds its help text and constraints (see the module doc)."""
    metadata = {"help": help, **constraints}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"   # the dense first stage when no model is named

def field_type(cls, name: str) -> tuple[type, bool]:
    """``(base type, optional)`` of a field: ``int | None`` gives ``(int, True)``, ``list[str]`` gives ``(list, False)``."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{cls.__name__}.{name}: unsupported type {hint}")
        hint = rest[0]
    return (typing.get_origin(hint) or hint), optional


def requirement(cls, name: str) -> str | None:
    """What a field's constraints ask for, in words (``"an integer >= 1"``), or None without constraints."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    base, optional = field_type(cls, name)
    if meta.get("choices"):
        need = "one of " + ", ".join(map(str, meta["choices"]))
    elif "max" in meta:
        need = f"between {meta.get('min', '-inf')} and {meta['max']}"
    elif "min" in meta:
        need = f"an integer >= {meta['min']}" if base is int else \
            f"a finite number {'>' if meta.get('min_open') else '>='} {meta['min']}"
    else:
        return None
    return need + (" (or unset)" if optional else "")


def satisfies(cls, name: str, value) -> bool:
    """Whether ``value`` meets the type and the constraints of field ``name`` (None passes for ``X | None``)."""
    meta = next(f.metadata for f in fields(cls) if f.name == name)
    base, optional = field_type(cls, name)
    if value is None:
        return optional
    if meta.get("choices"):
        return value in meta["choices"]
    if "min" not in meta and "max" not in meta:
        return True
    if isinstance(value, bool) or not isinstance(value, int if base is int else (int, float)) or not math.isfinite(value):
        return False
    low = meta.get("min", -math.inf)
    return (value > low if meta.get("min_open") else value >= low) and value <= meta.get("max", math.inf)


def check_fields(config) -> None:
    """ValueError naming the first field (as its CLI flag) whose value breaks its metadata constraints."""
    cls = type(config)
    for f in fields(cls):
        value = getattr(config, f.name)
        if not satisfies(cls, f.name, value):
            raise ValueError(f"--{f.name.replace('_', '-')} must be {requirement(cls, f.name)}, got {value!r}")


POSITIVE = {"min": 0, "min_open": True}
AT_LEAST_ONE = {"min": 1}
NON_NEGATIVE = {"min": 0}
FRACTION = {"min": 0, "max": 1}
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
