"""The reranker interface and what every transformer reranker shares.

A reranker kind (``reranker/kinds.py``: the registry) is a class with a ``kind`` name that implements
``score_groups(groups, batch_size, show_progress, mode) -> scores`` over ``(query, [doc texts])`` groups
(higher is better), and, when it trains, ``train_step`` and ``prepare_training``. Everything else is generic
and written once here:

- ``rerank(reranker, run, ...)`` re-scores each query's top ``k`` and keeps the rest below;
- ``load_reranker(spec)`` turns a CLI spec into a reranker: ``<kind>:<folder or model>``, a folder
  saved by densekit (its ``reranker.json`` names the kind), or a bare causal LM (zero-shot pointwise);
- ``TransformerRanker``: loading (packaged name, folder, hub id; optional LoRA adapter) through the kind's
  ``auto_model`` class, saving (adapter or full model + ``reranker.json`` naming the kind, base model and config,
  written atomically), batching pairs by length, and LoRA or top-layer set-up for training;
- ``CausalLMRanker``: left-padded batching, the tokenizer's leading special tokens, the frozen lower-layer cache.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from densekit.core import models
from densekit.core.device import inference_device
from densekit.core.io import DataError, atomic_dir, verify_parts
from densekit.core.runs import drop_unknown_docs, rank
from densekit.core.text import doc_text

from . import kinds
from .kinds import DEFAULT_KIND, register  # noqa: F401  (``register``: the decorator a kind's class carries)


def leading_special_tokens(tokenizer) -> list[int]:
    """Ids the tokenizer puts in front of a text by itself (e.g. BOS), ``[]`` when none."""
    with_special = tokenizer.encode("x", add_special_tokens=True)
    plain = tokenizer.encode("x", add_special_tokens=False)
    if plain and plain[0] in with_special:
        return with_special[: with_special.index(plain[0])]
    return []


def rerank(reranker, run: dict, corpus: dict, queries: dict[str, str], top_k: int = 20, batch_size: int = 8,
           show_progress: bool = True, mode: str | None = None) -> dict[str, dict[str, float]]:
    """Re-score each query's top ``top_k`` (first-stage order) with ``reranker.score_groups``; the
    documents below ``top_k`` keep their order under the reranked ones. Doc ids absent from the
    corpus are dropped, with one warning giving the count."""
    if top_k < 1:
        raise ValueError(f"rerank top_k must be >= 1, got {top_k}")
    rankings = {qid: rank(docs) for qid, docs in run.items()}
    known, missing = drop_unknown_docs({qid: dict.fromkeys(r[:top_k], 0.0) for qid, r in rankings.items()}, corpus)
    heads = {qid: list(docs) for qid, docs in known.items()}  # first-stage order
    tails = {qid: r[top_k:] for qid, r in rankings.items()}
    groups = [(queries[qid], [doc_text(corpus[d]) for d in heads[qid]]) for qid in run if heads[qid]]
    if missing:
        warnings.warn(f"rerank: skipped {missing} doc id(s) absent from the corpus", stacklevel=2)
    scored = iter(reranker.score_groups(groups, batch_size=batch_size, show_progress=show_progress, mode=mode))
    out: dict[str, dict[str, float]] = {}
    for qid in run:
        scores = next(scored) if heads[qid] else []
        out[qid] = dict(zip(heads[qid], map(float, scores)))
        floor = min(scores, default=0.0)
        for position, doc in enumerate(tails[qid], start=1):
            out[qid][doc] = floor - position
    return out


def _check_model_folder(folder: Path) -> None:
    """Refuse a folder a causal-LM reranker cannot be built from: one holding a dual encoder (it would get
    a random LM head), a densekit reranker's adapter (load it as a reranker instead), no model at all, or
    a model that is not a causal LM."""
    config = folder / "config.json"
    if (folder / "modules.json").exists() or (folder / "densekit_encoder.json").exists():
        raise DataError(f"{folder} holds a dual encoder, not a reranker: pass a causal LM or a folder saved by "
                        "`densekit train reranker`")
    if (folder / "reranker.json").exists() and not config.exists():
        raise DataError(f"{folder} holds a densekit reranker (an adapter), not a base model: rerank with it "
                        "(--reranker FOLDER), or train from its base model")
    if not config.exists():
        raise DataError(f"{folder} holds no model (no config.json): give a causal LM folder saved by "
                        "`save_pretrained`, a model name, or a folder saved by `densekit train reranker`")
    _check_causal_config(config, str(folder))


def _check_causal_config(config: Path, what: str) -> None:
    try:
        arch = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise DataError(f"{config}: not a valid model config ({err})") from None
    if not any(a.endswith("ForCausalLM") for a in arch):
        raise DataError(f"{what} holds a {', '.join(arch) or 'model without architectures'}, not a causal LM: "
                        "rerankers need a causal language model")


def check_causal_lm(name_or_path: str | os.PathLike) -> None:
    """Refuse, before any weights are read, a model no causal-LM reranker can be built from (``DataError`` or
    ``models.ModelNotAvailable``, naming it and what to do): a folder that holds no causal LM
    (``_check_model_folder``), a file, a packaged dual encoder given by name, a missing path, an offline hub
    id absent from the local cache (``models.check_available``), or a cached hub model that is not a causal LM."""
    path = Path(name_or_path)
    if path.is_dir():
        return _check_model_folder(path)
    if path.exists():
        raise DataError(f"{path} is a file, not a model folder or name")
    models.check_available(name_or_path)
    name = models.canonical_name(str(name_or_path))
    packaged = models.PACKAGED.get(name)
    if packaged is not None and not packaged.causal_lm:
        raise DataError(f"{name} is a dual encoder (a BERT-like sentence embedding model), not a causal LM: a "
                        "reranker needs a causal language model (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)")
    cached = models.hub_cached_config(name) if packaged is None else None
    if cached is not None:
        _check_causal_config(cached, name)


def _folder_kind(folder: Path) -> str | None:
    """The kind a densekit reranker folder declares (its ``reranker.json``), None for a plain model folder."""
    saved = folder / "reranker.json"
    if saved.exists():
        try:
            return json.loads(saved.read_text()).get("kind", DEFAULT_KIND)
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
            raise DataError(f"{saved}: not a valid reranker.json ({err}); re-save the reranker") from None
    return None


def resolve_spec(spec: str) -> tuple[type, str, bool]:
    """``(class, target, saved)`` of a reranker spec, checked without reading any weights: ``<kind>:<folder or
    model>`` (``kinds.KINDS``), a folder saved by densekit (``saved``: its ``reranker.json`` names the kind;
    a different explicit kind is refused), or a bare causal LM name or folder (zero-shot ``pointwise``).
    Refused (DataError naming the spec): an empty spec, an unknown kind, a kind with no model after it, and
    whatever the kind's ``check_target`` refuses (causal-LM kinds: ``check_causal_lm``)."""
    registry = kinds.kinds()
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"reranker spec {spec!r} is empty: give <kind>:<model or folder>, a folder, or a causal LM name")
    kind, sep, rest = spec.partition(":")
    if sep and kind in registry:
        if not rest:
            raise DataError(f"reranker {spec!r} names no model after {kind + ':'!r}: give {kind}:<model name or folder>")
        explicit, target = kind, rest
    elif sep and not Path(spec).exists() and len(kind) > 1 and not any(c in kind for c in "/\\."):
        raise DataError(f"reranker {spec!r}: unknown kind {kind!r}; known kinds: {', '.join(sorted(registry))} "
                        f"(<kind>:<model or folder>), or a bare causal LM name or folder (zero-shot {DEFAULT_KIND})")
    else:
        explicit, target = None, spec
    folder = Path(target)
    saved = _folder_kind(folder) if folder.is_dir() else None
    if saved is not None:
        if explicit is not None and explicit != saved:
            raise DataError(f"{folder} holds a {saved!r} reranker, not {explicit!r}: use {saved}:{folder}")
        if saved not in registry:
            raise DataError(f"{folder}/reranker.json names an unknown kind {saved!r}; known: {', '.join(sorted(registry))}")
        return registry[saved].load_class(), target, True
    cls = registry[explicit or DEFAULT_KIND].load_class()
    check_target(cls, target)
    return cls, target, False


def check_target(cls: type, target: str) -> None:
    """What reranker kind ``cls`` refuses to be built from (its ``check_target``, e.g. ``check_causal_lm``), checked
    without reading weights; a kind without one accepts any target."""
    check = getattr(cls, "check_target", None)
    if check is not None:
        check(target)


def load_reranker(spec: str):
    """The reranker a spec names (``resolve_spec``: every check runs before any weights are read)."""
    cls, target, saved = resolve_spec(spec)
    return cls.load(target) if saved else cls.from_pretrained(target)


class TransformerRanker(torch.nn.Module):
    """Base class of rerankers over a transformers model: ``model`` (possibly a peft model), ``tokenizer``,
    ``config`` (a dataclass of the kind's ``config_class``) and ``name`` (the base model's canonical name).

    A subclass sets ``auto_model`` (the ``transformers`` auto class it loads with), ``check_target`` (what it
    refuses to be built from, before any weights are read), ``lora_task`` and ``lora_targets`` (peft's task type and
    default adapted modules), and implements ``encode_pair`` and ``batch_scores`` (pairwise kinds; ``score_groups``
    otherwise) and, to train, ``train_step``. ``modes``, ``objectives``, ``config_class`` and ``train_options`` come
    from its line in ``reranker/kinds.py``."""

    kind = "base"
    config_class: type = object
    modes: tuple[str, ...] = ("score",)
    objectives: tuple[str, ...] = ()
    train_options: type | None = None
    auto_model = "AutoModel"
    lora_task = "FEATURE_EXTRACTION"
    lora_targets: tuple[str, ...] = ()
    lora_keep: tuple[str, ...] = ()  # modules trained in full beside the adapters (e.g. a new classification head)
    check_target = staticmethod(lambda target: None)

    def __init__(self, model, tokenizer, config, name: str = ""):
        super().__init__()
        self.model, self.tokenizer, self.config, self.name = model, tokenizer, config, name

    @classmethod
    def load_model(cls, path: str, dtype):
        """The ``auto_model`` of folder ``path`` (a hook: a kind may build its model differently)."""
        import transformers

        return getattr(transformers, cls.auto_model).from_pretrained(path, dtype=dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: str, config=None, adapter: str | None = None, dtype=torch.float32,
                        device: str | None = None):
        """A base model (packaged name, folder or hub id), optionally with a saved LoRA adapter folder, on
        ``core.device.inference_device(device)`` (``device``, else the GPU when there is one)."""
        from transformers import AutoTokenizer

        cls.check_target(name_or_path)
        device = inference_device(device)
        path = models.resolve(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = cls.load_model(path, dtype).to(device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
            saved = Path(adapter) / "reranker.json"
            if config is None and saved.exists():
                config = cls.config_class(**json.loads(saved.read_text())["config"])
        model.eval()
        return cls(model, tokenizer, config, name=models.canonical_name(str(name_or_path)))

    @classmethod
    def load(cls, folder: str | os.PathLike):
        """Load a folder written by ``save`` (adapter + ``reranker.json`` naming the base model); a folder whose
        files differ from the sizes and sha256 its ``densekit.json`` records is refused first
        (``io.verify_parts``: ``io.DamagedFolderError`` naming the file)."""
        verify_parts(folder)
        meta = json.loads((Path(folder) / "reranker.json").read_text())
        if meta.get("kind", DEFAULT_KIND) != cls.kind:
            raise DataError(f"{folder} holds a {meta.get('kind')!r} reranker, not {cls.kind!r}")
        config = cls.config_class(**meta["config"])
        if meta.get("full_model"):
            return cls.from_pretrained(str(folder), config)
        return cls.from_pretrained(meta["base_model"], config, adapter=str(folder))

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the LoRA adapter (or the full model) plus ``reranker.json`` (kind, base model, config), atomically,
        with ``densekit.json`` kind ``reranker`` (recording every file's size and sha256, checked by ``load``).
        An existing densekit reranker folder is replaced only with
        ``overwrite`` (``densekit.core.io.check_target``); non-finite weights are refused before anything is written."""
        bad = [n for n, t in self.model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise DataError(f"the {self.kind} reranker has non-finite weights in {len(bad)} tensor(s), e.g. "
                            f"{', '.join(bad[:3])}: training diverged; nothing was saved")
        with atomic_dir(folder, "reranker", overwrite, parts=True) as tmp:
            full = not hasattr(self.model, "peft_config")
            self.model.save_pretrained(tmp)
            if full:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "reranker.json").write_text(json.dumps({"kind": self.kind, "base_model": self.name, "full_model": full,
                                                           "config": asdict(self.config)}, indent=2))
        return Path(folder)

    # ------------------------------------------------------------ training set-up (the engine runs the loop)
    def lora_layers(self, config, options) -> list[int] | None:
        """Layer indices LoRA adapts (None: every layer): the top ``config.train_layers``."""
        return top_layer_names(self.model, config.train_layers)[0] if config.train_layers else None

    def prepare_training(self, config, options) -> None:
        """Make the model trainable as ``config`` says: LoRA adapters through peft (``lora_targets`` of the top
        ``train_layers`` layers, with ``lora_keep`` trained in full), or full fine-tuning of the top ``train_layers``."""
        if config.lora and not hasattr(self.model, "peft_config"):
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.model, LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, task_type=self.lora_task,
                target_modules=config.lora_targets or list(self.lora_targets) or None, layers_to_transform=self.lora_layers(config, options),
                modules_to_save=list(self.lora_keep) or None))
        elif not config.lora and config.train_layers:
            restrict_to_top_layers(self.model, config.train_layers)

    def train_step(self, groups: list[tuple[str, list[str]]], config, options, step: int):
        """``(loss, record)`` of one step's ``(query, [positive, negatives...])`` groups: the kind's own loss."""
        raise NotImplementedError(f"the {self.kind} reranker does not train")

    # ------------------------------------------------------------ shared scoring plumbing
    def check_mode(self, mode: str | None) -> str:
        mode = mode or self.modes[0]
        if mode not in self.modes:
            raise ValueError(f"the {self.kind} reranker has no mode {mode!r}: use {' or '.join(self.modes)}")
        return mode

    @staticmethod
    def prompt_length(encoded) -> int:
        """Length of what ``encode_pair`` returned (for length bucketing)."""
        return len(encoded)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], batch_size: int = 8, show_progress: bool = False) -> list[float]:
        """Scores of independent (query, document text) pairs, batched by length (pairwise kinds)."""
        from tqdm.auto import tqdm

        ids = [self.encode_pair(q, d) for q, d in pairs]
        order = sorted(range(len(ids)), key=lambda i: -self.prompt_length(ids[i]))
        scores = [0.0] * len(ids)
        was = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), batch_size), desc=f"rerank {self.kind}", disable=not show_progress):
                    rows = order[start:start + batch_size]
                    for i, value in zip(rows, self.batch_scores([ids[i] for i in rows]).tolist()):
                        scores[i] = value
        finally:
            self.model.train(was)
        return scores

    def score_groups(self, groups: Sequence[tuple[str, list[str]]], batch_size: int = 8, show_progress: bool = False,
                     mode: str | None = None) -> list[list[float]]:
        """Pairwise kinds: every (query, document) pair scored on its own, batched across groups."""
        self.check_mode(mode)
        flat = self.score_pairs([(q, d) for q, docs in groups for d in docs], batch_size, show_progress)
        out, start = [], 0
        for _, docs in groups:
            out.append(flat[start:start + len(docs)])
            start += len(docs)
        return out

    def score(self, query: str, docs: Sequence[str | dict], batch_size: int = 8) -> list[float]:
        """Scores of one query's documents (dicts or texts)."""
        return self.score_groups([(query, [doc_text(d) for d in docs])], batch_size)[0]

    def rerank(self, run: dict, corpus: dict, queries: dict[str, str], top_k: int = 20, batch_size: int = 8,
               show_progress: bool = True, mode: str | None = None) -> dict[str, dict[str, float]]:
        """``rerank(self, ...)``: see the module function."""
        return rerank(self, run, corpus, queries, top_k, batch_size, show_progress, mode)


def top_layer_names(model, layers: int) -> tuple[list[int], int]:
    """Indices of the top ``layers`` transformer layers and the model's layer count."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = base.config.num_hidden_layers
    if not 1 <= layers <= n:
        raise ValueError(f"train_layers must be between 1 and the model's {n} layers, got {layers}")
    return list(range(n - layers, n)), n


def restrict_to_top_layers(model, layers: int) -> None:
    """Full fine-tuning of the top ``layers`` layers only: every other parameter is frozen (embeddings, lower layers,
    LM head; a classification head and the pooler under it stay trainable), so no gradient flows below layer
    ``n - layers``."""
    keep, _ = top_layer_names(model, layers)
    prefixes = tuple(f"layers.{i}." for i in keep) + tuple(f"layer.{i}." for i in keep) + (".pooler.",)
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in prefixes) or name.endswith("model.norm.weight")
                             or name.startswith(("classifier.", "score.")))


class CausalLMRanker(TransformerRanker):
    """A reranker over a causal LM: left-padded prompts, the frozen lower-layer cache (``lower_cache``)."""

    auto_model = "AutoModelForCausalLM"
    lora_task = "CAUSAL_LM"
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    check_target = staticmethod(check_causal_lm)  # what ``resolve_spec`` and ``from_pretrained`` refuse
    supports_layer_cache = True  # its prompts recur in training, so ``--cache-lower-layers`` may pay
    lower_cache = None

    def __init__(self, model, tokenizer, config, name: str = ""):
        super().__init__(model, tokenizer, config, name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def forward_lm(self, batch: dict[str, torch.Tensor], **kwargs):
        """The causal LM's output for a ``left_padded`` batch; with a ``lower_cache`` (``layer_cache.LowerLayerCache``,
        set by ``train_reranker`` while training, or by a caller for scoring) the frozen lower layers run once per prompt."""
        if self.lower_cache is not None:
            return self.lower_cache(self.model, batch, **kwargs)
        return self.model(**batch, **kwargs)

    def left_padded(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad rows so that every row ends in the last column; ``position_ids`` count real tokens only."""
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        device = next(self.model.parameters()).device
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}
