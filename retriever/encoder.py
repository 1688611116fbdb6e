"""DualEncoder: a Hugging Face encoder or decoder + pooling + optional L2 norm, shared by queries and docs.

``embedding(text) = normalize(pool(model(prefix + text)))`` with pooling

- ``mean``: masked mean of the last hidden states (sentence-transformers' mean pooling);
- ``cls``: the first token's hidden state;
- ``last``: the last non-padding token's hidden state (decoder models, e5-mistral style).

Reads and writes sentence-transformers folders (``modules.json``, ``1_Pooling/config.json``,
``sentence_bert_config.json``, ``2_Normalize``), so all-MiniLM-L6-v2 gives the same vectors as
sentence-transformers and a saved DualEncoder loads back in sentence-transformers.
``encode`` sorts texts by token length and pads per batch (no padding waste), runs under
``torch.inference_mode``, and can stream to a ``.npy`` memmap chunk by chunk so memory stays flat.
It also speaks beir's model interface (``encode_queries`` / ``encode_corpus``).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from densekit.core import models
from densekit.core.device import inference_device
from .config import EncoderConfig
from densekit.core.io import DataError, atomic_dir, verify_parts
from densekit.core.text import doc_text

_ST_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def is_decoder_only(hf_config) -> bool:
    """True for causal LMs (Llama, Mistral, Qwen ...), False for BERT-like encoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if any("CausalLM" in a for a in (hf_config.architectures or [])):
        return True
    kind = hf_config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def read_st_config(folder: Path) -> dict:
    """EncoderConfig fields found in a sentence-transformers (and/or densekit) folder."""
    found: dict = {}
    modules = _read_json(folder / "modules.json") if (folder / "modules.json").exists() else None
    if isinstance(modules, list):
        found["normalize"] = any(m.get("type", "").endswith("Normalize") for m in modules)
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                pool = _read_json(folder / module["path"] / "config.json")
                for name, key in _ST_POOLING_KEYS.items():
                    if pool.get(key):
                        found["pooling"] = name
                        break
                else:
                    raise ValueError(f"{folder}: unsupported sentence-transformers pooling {pool}")
    st = _read_json(folder / "sentence_bert_config.json")
    if "max_seq_length" in st:
        found["query_max_length"] = found["doc_max_length"] = int(st["max_seq_length"])
    prompts = _read_json(folder / "config_sentence_transformers.json").get("prompts") or {}
    if prompts.get("query"):
        found["query_prefix"] = prompts["query"]
    if prompts.get("document"):
        found["doc_prefix"] = prompts["document"]
    found.update(_read_json(folder / "densekit_encoder.json"))
    return found


def check_texts(texts) -> list[str]:
    """``texts`` as a list of strings; TypeError for one string (a sequence of characters), bytes, or an item
    that is not a string (``None`` would be encoded as "None" or as an empty text)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"texts must be a list of strings, got one {type(texts).__name__} ({texts[:40]!r}); "
                        "wrap a single text in a list: encode([text])")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {texts[bad]!r} ({type(texts[bad]).__name__}), not a string; "
                        "every text must be a string (use \"\" for an empty one)")
    return texts


class DualEncoder(torch.nn.Module):
    """Siamese bi-encoder: one backbone for queries and documents."""

    def __init__(self, model, tokenizer, config: EncoderConfig, name: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    # ------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | None = None, **overrides) -> "DualEncoder":
        """Load from a packaged name, a folder (sentence-transformers or plain HF), or a hub id, onto
        ``core.device.inference_device(device)`` (``device``, else the GPU when there is one). A folder
        densekit saved is refused (``io.DamagedFolderError``) when its files differ from the sizes and sha256
        its ``densekit.json`` records (``io.verify_parts``), before anything is read."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        device = inference_device(device)
        path = models.resolve(name_or_path)
        settings: dict = {}
        if Path(path).is_dir():
            verify_parts(path)
            settings = read_st_config(Path(path))
        if "pooling" not in settings:
            hf_config = AutoConfig.from_pretrained(path)
            settings["pooling"] = "last" if is_decoder_only(hf_config) else "mean"
        settings.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(EncoderConfig)}
        config = EncoderConfig(**{k: v for k, v in settings.items() if k in known})
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(device)
        model.eval()
        return cls(model, tokenizer, config, name=models.canonical_name(str(name_or_path)))

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def content_hash(self) -> str:
        """The encoder's identity: sha256 over its weights and its ``EncoderConfig`` (``models.weights_hash``),
        independent of the path it was loaded from. Computed once and cached on the object until a weight
        changes in place (training, ``load_state_dict``), which torch's tensor version counters reveal."""
        versions = tuple(t._version for t in self.model.state_dict().values())
        cached = getattr(self, "_content_hash", None)
        if cached is None or cached[0] != versions:
            cached = (versions, models.weights_hash(self.model, asdict(self.config)))
            self._content_hash = cached
        return cached[1]

    def check_finite(self, what: str = "the encoder") -> None:
        """Refuse (DataError) weights holding NaN or inf, naming the first tensors."""
        bad = [name for name, t in self.model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise DataError(f"{what} ({self.name}) has non-finite weights in {len(bad)} tensor(s), e.g. "
                            f"{', '.join(bad[:3])}: training diverged; nothing was saved")

    # ------------------------------------------------------------ forward
    @property
    def position_limit(self) -> int | None:
        """The most tokens the model can take in one text: its ``max_position_embeddings`` (RoBERTa-style
        models, which reserve ``pad_token_id + 1`` positions, minus those) and the tokenizer's
        ``model_max_length`` when that is a real limit; None when the model states none."""
        limits = []
        hf = self.model.config
        positions = getattr(hf, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            offset = (hf.pad_token_id or 0) + 1 if hf.model_type in ("roberta", "xlm-roberta", "camembert") else 0
            limits.append(positions - offset)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)
        return min(limits) if limits else None

    def check_max_lengths(self, query_max_length: int | None = None, doc_max_length: int | None = None) -> None:
        """Refuse (ValueError) a requested query/document length beyond ``position_limit``."""
        limit = self.position_limit
        for name, value in (("query_max_length", query_max_length), ("doc_max_length", doc_max_length)):
            if value is not None and limit is not None and value > limit:
                raise ValueError(f"{name} {value} is beyond the position limit of {self.name or 'the encoder'} "
                                 f"({limit} tokens): give at most {limit}")

    def _side(self, is_query: bool) -> tuple[str, int]:
        """(prefix, max length) of queries or of documents; the length never exceeds ``position_limit`` (a
        longer text is truncated there, as sentence-transformers does, instead of overflowing the model)."""
        prefix, length = ((self.config.query_prefix, self.config.query_max_length) if is_query
                          else (self.config.doc_prefix, self.config.doc_max_length))
        limit = self.position_limit
        return prefix, length if limit is None else min(length, limit)

    def tokenize(self, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        """Prefix, truncate to the side's max length and pad to the longest text in the batch."""
        prefix, max_length = self._side(is_query)
        return self.tokenizer([prefix + t for t in texts], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")

    def sorted_batches(self, texts: Sequence[str], is_query: bool, batch_size: int):
        """Yield ``(rows, features)``: the texts tokenized once, ordered by token length (longest
        first, stable) and cut into batches of ``batch_size``, each padded only to its own longest text;
        ``rows`` are the batch's positions in ``texts`` (numpy int array), features on the model's device."""
        prefix, max_length = self._side(is_query)
        device = next(self.model.parameters()).device
        ids = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length, padding=False)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            batch = self.tokenizer.pad({"input_ids": [ids[r] for r in rows]}, return_tensors="pt")
            yield rows, {k: v.to(device) for k, v in batch.items()}

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        elif self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:  # last non-padding position, whichever side the padding is on
            positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
            last = (positions * mask).argmax(dim=1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings ``[batch, dim]`` of tokenized inputs (with gradients, for training)."""
        out = self.model(**features)
        return self.pool(out.last_hidden_state, features["attention_mask"])

    def embed(self, texts: Sequence[str], is_query: bool, chunk: int | None = None) -> torch.Tensor:
        """Tokenize and embed texts, keeping gradients (training); rows in input order.

        With ``chunk`` the texts are forwarded ``chunk`` at a time in order of token length, each
        chunk padded only to its own longest text (same embeddings, less padding work).
        """
        if not chunk or len(texts) <= chunk:
            device = next(self.model.parameters()).device
            return self({k: v.to(device) for k, v in self.tokenize(texts, is_query).items()})
        order, parts = [], []
        for rows, features in self.sorted_batches(texts, is_query, chunk):
            order.extend(rows.tolist())
            parts.append(self(features))
        out = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return out[inverse.to(out.device)]

    # ------------------------------------------------------------ inference
    @torch.inference_mode()
    def encode(self, texts: Sequence[str], is_query: bool = False, batch_size: int = 64, show_progress: bool = False,
               out: str | os.PathLike | None = None, chunk_size: int = 16384) -> np.ndarray:
        """float32 embeddings ``[len(texts), dim]`` in input order.

        Texts are tokenized ``chunk_size`` at a time, sorted by token length and batched, so padding is
        minimal. With ``out`` the result is written into a ``.npy`` memmap (written under a temporary
        name and renamed when complete) and returned memory-mapped. ``texts`` is a sequence of strings: a
        single string (which would be encoded character by character) or an item that is not a string is
        refused with TypeError.
        """
        from tqdm.auto import tqdm

        texts = check_texts(texts)
        n = len(texts)
        if out is not None:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.partial")
            result = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, self.dim))
        else:
            result = np.empty((n, self.dim), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        with tqdm(total=n, desc="encode queries" if is_query else "encode docs", disable=not show_progress, unit="text") as bar:
            try:
                for start in range(0, n, chunk_size):
                    for rows, batch in self.sorted_batches(texts[start:start + chunk_size], is_query, batch_size):
                        emb = self(batch).float()
                        if not torch.isfinite(emb).all():
                            row = int(rows[int((~torch.isfinite(emb)).any(dim=1).nonzero()[0])]) + start
                            raise DataError(f"encoder {self.name}: non-finite embedding (NaN/inf) for text {row} "
                                            f"({texts[row][:60]!r}); the model's weights are probably broken "
                                            "(a diverged training run): use another model")
                        result[start + rows] = emb.cpu().numpy()
                        bar.update(len(rows))
            except BaseException:
                if out is not None:
                    del result
                    tmp.unlink(missing_ok=True)
                raise
            finally:
                self.model.train(was_training)
        if out is not None:
            result.flush()
            del result
            os.replace(tmp, out)
            return np.load(out, mmap_mode="r")
        return result

    # ------------------------------------------------------------ beir model interface
    def encode_queries(self, queries: list[str], batch_size: int = 64, **kwargs):
        emb = self.encode(list(queries), is_query=True, batch_size=batch_size, show_progress=kwargs.get("show_progress_bar", False))
        return torch.from_numpy(emb) if kwargs.get("convert_to_tensor") else emb

    def encode_corpus(self, corpus, batch_size: int = 64, **kwargs):
        if isinstance(corpus, dict):  # {"title": [...], "text": [...]}
            docs = [{"title": t, "text": x} for t, x in zip(corpus.get("title") or [""] * len(corpus["text"]), corpus["text"])]
        else:
            docs = list(corpus)
        emb = self.encode([doc_text(d) for d in docs], is_query=False, batch_size=batch_size,
                          show_progress=kwargs.get("show_progress_bar", False))
        return torch.from_numpy(emb) if kwargs.get("convert_to_tensor") else emb

    # ------------------------------------------------------------ saving
    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a sentence-transformers-compatible folder (atomically: temp folder, then rename; kind
        ``encoder`` in ``densekit.json``, with every file's size and sha256, checked by ``from_pretrained``). An
        existing densekit encoder folder is replaced only with ``overwrite``; weights holding NaN/inf are refused
        (DataError) before anything is written."""
        self.check_finite()
        with atomic_dir(folder, "encoder", overwrite, {"content_hash": self.content_hash()}, parts=True) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
            if self.config.normalize:
                modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
                (tmp / "2_Normalize").mkdir()
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
            (tmp / "1_Pooling").mkdir()
            pooling = {"word_embedding_dimension": self.dim, **{key: name == self.config.pooling for name, key in _ST_POOLING_KEYS.items()}}
            (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
            (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": self.config.doc_max_length, "do_lower_case": False}))
            prompts = {"query": self.config.query_prefix, "document": self.config.doc_prefix}
            (tmp / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts, "default_prompt_name": None}))
            (tmp / "densekit_encoder.json").write_text(json.dumps(asdict(self.config), indent=2))
        return Path(folder)
