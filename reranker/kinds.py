"""The registry of reranker kinds: one line per kind, importable without torch.

A kind is one module holding its reranker class: scoring (``score_groups``), and, when it trains, its
training step (``train_step(groups, config, options, step) -> (loss, record)``: its own loss over the step's
groups) and its set-up for training (``prepare_training``). This registry holds what the command line needs
before any of those modules is imported (so ``densekit --help`` stays fast): the kind's name, where its class
lives, its scoring config dataclass, its scoring modes, the objectives it trains with, and its own training
options. ``densekit train reranker --kind K`` and ``eval --reranker K:<model>`` work for every kind here.

Three ways in:

- ``declare(name, "module:Class", ...)``: a built-in kind (the lines at the bottom); its class is imported
  on first use, and its ``@register`` decorator binds it to the line;
- ``@register`` on a class carrying ``kind`` (and optionally ``config_class``, ``modes``, ``objectives``,
  ``train_options``) as class attributes: a kind defined anywhere, e.g. in a test file or a user's script;
- a package's entry point in the group ``densekit.rerankers`` whose object is such a class (or a module that
  registers some): loaded the first time the registry is read.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .config import BlockRankConfig, BlockRankTrainOptions, CrossEncoderConfig, QLMConfig, RerankerConfig

ENTRY_POINTS = "densekit.rerankers"
DEFAULT_KIND = "pointwise"


@dataclass
class Kind:
    """One reranker kind. ``config``: the dataclass of its scoring settings (saved with a trained model);
    ``modes``: its scoring modes, the first the default; ``objectives``: what ``train_step`` trains with, the
    first the default (empty: not trainable); ``train_options``: a dataclass of training settings only this kind
    has (``None``: none); ``train_defaults``: this kind's defaults for shared training settings (e.g. a group
    size); ``where``: ``"module:Class"`` of a declared kind whose class is not imported yet."""

    name: str
    config: type | None = None
    modes: tuple[str, ...] = ("score",)
    objectives: tuple[str, ...] = ()
    train_options: type | None = None
    train_defaults: dict = field(default_factory=dict)
    help: str = ""
    where: str | None = None
    cls: type | None = None

    def load_class(self) -> type:
        """The reranker class (importing its module the first time)."""
        if self.cls is None:
            module, _, name = self.where.partition(":")
            importlib.import_module(module)  # its @register binds the class to this entry
            if self.cls is None:
                raise RuntimeError(f"{self.where} did not register the reranker kind {self.name!r}")
        return self.cls


KINDS: dict[str, Kind] = {}
_plugins_loaded = False


def declare(name: str, where: str, **meta) -> Kind:
    """Add a kind whose class lives at ``where`` (``"module:Class"``), imported on first use."""
    KINDS[name] = Kind(name, where=where, **meta)
    return KINDS[name]


def register(cls: type) -> type:
    """Class decorator: make ``cls`` the reranker kind ``cls.kind``. A declared kind gets its class, and the class
    gets the declared metadata as attributes (``config_class``, ``modes``, ``objectives``, ``train_options``);
    an undeclared kind is made from the class's own attributes."""
    entry = KINDS.get(cls.kind)
    if entry is not None and entry.where is not None:
        entry.cls = cls
    else:
        entry = KINDS[cls.kind] = Kind(cls.kind, config=getattr(cls, "config_class", None),
                                       modes=tuple(getattr(cls, "modes", ("score",))),
                                       objectives=tuple(getattr(cls, "objectives", ())),
                                       train_options=getattr(cls, "train_options", None),
                                       train_defaults=dict(getattr(cls, "train_defaults", {})), cls=cls)
    cls.config_class, cls.modes, cls.objectives = entry.config, entry.modes, entry.objectives
    cls.train_options, cls.train_defaults = entry.train_options, entry.train_defaults
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINTS):
        loaded = point.load()
        if isinstance(loaded, type) and getattr(loaded, "kind", None) and loaded.kind not in KINDS:
            register(loaded)


def kinds() -> dict[str, Kind]:
    """Every kind: the declared ones, those registered so far, and the entry points'."""
    _load_plugins()
    return KINDS


def get(name: str) -> Kind | None:
    """The kind called ``name``, or None."""
    return kinds().get(name)


def by_config(config) -> Kind | None:
    """The kind whose scoring config ``config`` is an instance of."""
    return next((k for k in kinds().values() if k.config is not None and type(config) is k.config), None)


def all_modes() -> list[str]:
    """Every scoring mode some kind offers beyond a single default."""
    return sorted({m for k in kinds().values() if len(k.modes) > 1 for m in k.modes})


def trainable() -> list[str]:
    """The kinds ``densekit train reranker --kind`` accepts: those with at least one objective."""
    return [name for name, k in kinds().items() if k.objectives]


# ------------------------------------------------------------------ the built-in kinds, one line each
declare("pointwise", "densekit.reranker.pointwise:LLMReranker", config=RerankerConfig, objectives=("sft", "cl", "unified"),
        help="a causal LM answers yes or no: logit(yes) - logit(no)")
declare("qlm", "densekit.reranker.qlm:QLMReranker", config=QLMConfig, objectives=("sft", "cl", "unified"),
        help="query likelihood: mean log P(query | document) under a causal LM")
declare("blockrank", "densekit.reranker.blockrank:BlockRanker", config=BlockRankConfig, modes=("attention", "decode"),
        objectives=("blockrank",), train_options=BlockRankTrainOptions, train_defaults={"group_size": 20},
        help="all documents in one prompt, ranked by the query's attention (LM loss + attention InfoNCE)")
declare("cross", "densekit.reranker.cross:CrossEncoderRanker", config=CrossEncoderConfig,
        objectives=("sft", "cl", "unified"), help="a sequence-classification transformer scores (query, document) jointly")
