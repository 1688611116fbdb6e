"""Corpus -> index -> run: the dense first stage shared by evaluation, mining and reranking.

``build_index`` encodes the corpus in shards of ``shard_size`` documents, each saved as a ``.npy``
file in ``<out>.partial/`` next to the target; an interrupted build resumes from the shards already
written (same model content hash and corpus fingerprint), and the finished index is saved atomically.
The target, the factory string and the corpus size are checked before anything is encoded.

An index knows its encoder by ``model_hash`` in ``meta.json`` (``DualEncoder.content_hash``: weights +
pooling config), not by the path it was loaded from; ``check_encoder`` compares it wherever an index is
read (eval, search, mine, reranker training). Indexes from before the hash fall back to the model
name, with a warning.
"""
from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

from .encoder import DualEncoder
from .index import BadIndexError, Index, check_factory, corpus_fingerprint
from .io import check_target, make_dir
from .models import same_model_name
from .text import doc_text


def index_meta(encoder: DualEncoder, corpus: dict) -> dict:
    return {"model": encoder.name, "model_hash": encoder.content_hash(), "pooling": encoder.config.pooling, "normalize": encoder.config.normalize,
            "doc_max_length": encoder.config.doc_max_length, "doc_prefix": encoder.config.doc_prefix,
            "corpus_fingerprint": corpus_fingerprint(corpus), "num_docs": len(corpus)}


def check_encoder(index: Index, encoder: DualEncoder, folder) -> None:
    """Refuse an index built with another encoder: its ``model_hash`` (content of weights + config) must
    equal ``encoder.content_hash()``; old indexes without one are checked by model name, with a warning."""
    if index.dim != encoder.dim:
        raise BadIndexError(f"{folder}: index dimension {index.dim} does not match the encoder's {encoder.dim}")
    stored = index.meta.get("model_hash")
    if stored is not None:
        if stored != encoder.content_hash():
            raise BadIndexError(
                f"{folder}: index was built with another encoder than {encoder.name} (its weights or pooling "
                f"config differ: index {stored[:12]}, model {encoder.content_hash()[:12]}; was the model retrained "
                f"at the same path?); rebuild it with `densekit index build --overwrite` or use its model")
        return
    warnings.warn(f"{folder}: index has no encoder content hash (built by an older densekit); checking the "
                  "model name only: rebuild it to have stale vectors detected", stacklevel=2)
    built = index.meta.get("model")
    if built is not None and not same_model_name(built, encoder.name):
        raise BadIndexError(f"{folder}: index was built with model {built!r}, not {encoder.name!r}")


def build_index(corpus: dict, encoder: DualEncoder, out: str | Path | None = None, factory: str = "Flat",
                batch_size: int = 64, shard_size: int = 4096, show_progress: bool = True, overwrite: bool = False) -> Index:
    """Encode ``corpus`` and build (and, with ``out``, save) an index; resumable through ``<out>.partial``.

    Before any encoding: ``out`` must be free (or an index to replace with ``overwrite``, see
    ``io.check_target``), and ``factory`` must be a FAISS factory trainable on ``len(corpus)`` vectors."""
    if not corpus:
        raise BadIndexError("cannot build an index over an empty corpus")
    if out is not None:
        check_target(out, "index", overwrite)
    check_factory(factory, encoder.dim, len(corpus))
    meta = index_meta(encoder, corpus)
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    if out is None:
        vectors = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)
        return Index.build(vectors, doc_ids, factory, meta)

    out = Path(out)
    work = out.with_name(f"{out.name}.partial")
    manifest = {"model": meta["model"], "model_hash": meta["model_hash"], "corpus_fingerprint": meta["corpus_fingerprint"],
                "shard_size": shard_size, "pooling": meta["pooling"], "doc_max_length": meta["doc_max_length"]}
    if work.exists() or work.is_symlink():
        found = _read_manifest(work) if work.is_dir() else None
        if found is None or not _only_shards(work):
            raise BadIndexError(f"{work}: is in the way of index build's shard folder and was not written by densekit; "
                                "move it away or choose another --out")
        if found != manifest:
            shutil.rmtree(work)  # densekit's shards of another corpus or model: start over
    if not work.exists():
        work.parent.mkdir(parents=True, exist_ok=True)
        make_dir(work)
    (work / "manifest.json").write_text(json.dumps(manifest))
    shards = []
    for number, start in enumerate(range(0, len(texts), shard_size)):
        path = work / f"shard-{number:05d}.npy"
        if not path.exists():
            if show_progress:
                print(f"encoding docs {start}-{min(start + shard_size, len(texts))} of {len(texts)}", file=sys.stderr, flush=True)
            encoder.encode(texts[start:start + shard_size], batch_size=batch_size, show_progress=show_progress, out=path)
        shards.append(path)
    vectors = np.concatenate([np.load(p) for p in shards]) if len(shards) > 1 else np.load(shards[0])
    index = Index.build(vectors, doc_ids, factory, meta)
    index.save(out, overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return index


def _read_manifest(work: Path) -> dict | None:
    try:
        found = json.loads((work / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and {"corpus_fingerprint", "shard_size"} <= set(found) else None


def _only_shards(work: Path) -> bool:
    """True when ``work`` holds only what ``build_index`` writes there (so it may delete it)."""
    return all(e.name == "manifest.json" or (e.name.startswith(("shard-", ".shard-")) and ".npy" in e.name)
               for e in work.iterdir())


def load_or_build_index(corpus: dict, encoder: DualEncoder, index_dir: str | Path | None, factory: str = "Flat",
                        batch_size: int = 64, show_progress: bool = True) -> Index:
    """Reuse ``index_dir`` when it holds this model's index of this very corpus, else build it there."""
    if index_dir is not None and Path(index_dir).is_dir() and any(Path(index_dir).iterdir()):
        index = Index.load(index_dir)
        check_encoder(index, encoder, index_dir)
        if index.meta.get("corpus_fingerprint") != corpus_fingerprint(corpus):
            raise BadIndexError(f"{index_dir}: index was built from another corpus (fingerprint differs); "
                                f"use another --index folder or delete it")
        return index
    return build_index(corpus, encoder, index_dir, factory, batch_size, show_progress=show_progress)


def dense_search(corpus: dict, queries: dict[str, str], k: int, model: str = "sentence-transformers/all-MiniLM-L6-v2",
                 index_dir: str | Path | None = None, factory: str = "Flat", batch_size: int = 64,
                 encoder: DualEncoder | None = None, show_progress: bool = True, nprobe: int | None = None,
                 ef_search: int | None = None) -> dict[str, dict[str, float]]:
    """Top-``k`` dense run for ``queries`` over ``corpus`` (index built or reused); ``nprobe`` (IVF) and
    ``ef_search`` (HNSW) are passed to ``Index.set_params`` before searching."""
    building = index_dir is None or not Path(index_dir).is_dir()
    if building and nprobe is not None and "IVF" not in factory.upper():
        raise BadIndexError(f"nprobe applies to IVF indexes, not {factory!r}")
    if building and ef_search is not None and "HNSW" not in factory.upper():
        raise BadIndexError(f"ef_search applies to HNSW indexes, not {factory!r}")
    encoder = encoder or DualEncoder.from_pretrained(model)
    index = load_or_build_index(corpus, encoder, index_dir, factory, batch_size, show_progress)
    index.set_params(nprobe=nprobe, ef_search=ef_search)
    query_ids = list(queries)
    vectors = encoder.encode([queries[q] for q in query_ids], is_query=True, batch_size=batch_size)
    return index.search_run(query_ids, vectors, k)
