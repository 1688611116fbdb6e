"""Corpus -> index -> run: dense retrieval (``dense_search``) and the index it searches, built or reused.

``build_index`` encodes the corpus (all of it, or shard i of n: ``shards.py``) in pieces of ``shard_size``
documents, each saved as a ``.npy`` file under ``<out>.partial/`` next to the target; an interrupted build
resumes from the pieces already written (same model content hash and corpus fingerprint), and the index,
merged from the shards by streaming them, is saved atomically.
The target, the factory string and the corpus size are checked before anything is encoded.

An index knows its encoder by ``model_hash`` in ``meta.json`` (``DualEncoder.content_hash``: weights +
pooling config), not by the path it was loaded from; ``check_encoder`` compares it wherever an index is
read (eval, search, mine, reranker training); an index without it is refused.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .encoder import DualEncoder
from .index import BadIndexError, Index, check_factory, corpus_fingerprint
from densekit.core.io import check_target
from .shards import CorpusRows, encode_shard, merge_shards, wait_for_shards
from .config import DEFAULT_ENCODER
from densekit.core.types import Queries, Run



def index_meta(encoder: DualEncoder, corpus) -> dict:
    return {"model": encoder.name, "model_hash": encoder.content_hash(), "pooling": encoder.config.pooling, "normalize": encoder.config.normalize,
            "doc_max_length": encoder.config.doc_max_length, "doc_prefix": encoder.config.doc_prefix,
            "corpus_fingerprint": corpus_fingerprint(corpus), "num_docs": len(corpus)}


def check_encoder(index: Index, encoder: DualEncoder, folder) -> None:
    """Refuse an index built with another encoder: its ``model_hash`` (content of weights + config) must
    equal ``encoder.content_hash()``."""
    if index.dim != encoder.dim:
        raise BadIndexError(f"{folder}: index dimension {index.dim} does not match the encoder's {encoder.dim}")
    stored = index.meta.get("model_hash")
    if stored is None:
        raise BadIndexError(f"{folder}: index meta has no encoder content hash (model_hash), so its vectors cannot be "
                            "matched to an encoder; rebuild it with `densekit index build --overwrite`")
    if stored != encoder.content_hash():
        raise BadIndexError(
            f"{folder}: index was built with another encoder than {encoder.name} (its weights or pooling "
            f"config differ: index {stored[:12]}, model {encoder.content_hash()[:12]}; was the model retrained "
            f"at the same path?); rebuild it with `densekit index build --overwrite` or use its model")


def build_index(corpus, encoder: DualEncoder, out: str | Path | None = None, factory: str = "Flat",
                batch_size: int = 64, shard_size: int = 4096, show_progress: bool = True, overwrite: bool = False,
                num_shards: int = 1, shard_index: int = 0, merge: bool = True, train_sample: int = 100_000,
                add_batch: int = 65536, on_disk: bool = False) -> Index | Path:
    """Encode ``corpus`` (a BEIR dict or a ``datasets.Dataset``) and build (and, with ``out``, save) an index;
    resumable through ``<out>.partial``.

    Before any encoding: ``out`` must be free (or an index to replace with ``overwrite``, see
    ``io.check_target``), and ``factory`` must be a FAISS factory trainable on ``len(corpus)`` vectors.

    With ``num_shards`` > 1 this process encodes only shard ``shard_index`` (``shards.encode_shard``) and,
    unless ``merge`` (then it waits for the other shards' processes), returns the shard folder; the index
    is built later by ``shards.merge_shards`` (``densekit index merge``)."""
    if not len(corpus):
        raise BadIndexError("cannot build an index over an empty corpus")
    if out is not None:
        check_target(out, "index", overwrite)
    check_factory(factory, encoder.dim, min(len(corpus), train_sample))
    if on_disk and (out is None or "IVF" not in factory.upper()):
        raise BadIndexError(f"--on-disk needs an IVF factory and an output folder (factory {factory!r})")
    if num_shards > 1 and out is None:
        raise BadIndexError("a sharded build needs an output folder (--out)")
    meta = index_meta(encoder, corpus)
    if out is None:
        rows = CorpusRows(corpus)
        doc_ids, texts = rows.rows(0, len(rows))
        vectors = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)
        return Index.build(vectors, doc_ids, factory, meta)

    out = Path(out)
    work = out.with_name(f"{out.name}.partial")
    shard = encode_shard(corpus, encoder, work, meta, num_shards, shard_index, shard_size, batch_size, show_progress)
    if not merge:
        return shard
    if num_shards > 1:
        wait_for_shards(work, num_shards)
    index = merge_shards([work], out, factory, train_sample, add_batch, overwrite, show_progress=show_progress, on_disk=on_disk)
    shutil.rmtree(work, ignore_errors=True)
    return index


def open_index(index_dir: str | Path, encoder: DualEncoder, corpus) -> Index:
    """The index saved in ``index_dir``, refused unless it is ``encoder``'s index (``check_encoder``) of this very
    ``corpus`` (same fingerprint): the one rule for every reader (eval, mining, reranker training)."""
    index = Index.load(index_dir)
    check_encoder(index, encoder, index_dir)
    if index.meta.get("corpus_fingerprint") != corpus_fingerprint(corpus):
        raise BadIndexError(f"{index_dir}: index was built from another corpus (fingerprint differs); "
                            f"use another --index folder or delete it")
    return index


def load_or_build_index(corpus, encoder: DualEncoder, index_dir: str | Path | None, factory: str = "Flat",
                        batch_size: int = 64, show_progress: bool = True) -> Index:
    """Reuse ``index_dir`` when it holds this model's index of this very corpus, else build it there."""
    if index_dir is not None and Path(index_dir).is_dir() and any(Path(index_dir).iterdir()):
        return open_index(index_dir, encoder, corpus)
    return build_index(corpus, encoder, index_dir, factory, batch_size, show_progress=show_progress)


def encode_queries(encoder: DualEncoder, queries: Queries, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """``(query ids, query vectors)`` in ``queries``' order."""
    query_ids = list(queries)
    return query_ids, encoder.encode([queries[q] for q in query_ids], is_query=True, batch_size=batch_size)


def dense_search(corpus, queries: Queries, k: int, model: str = DEFAULT_ENCODER,
                 index_dir: str | Path | None = None, factory: str = "Flat", batch_size: int = 64,
                 encoder: DualEncoder | None = None, show_progress: bool = True, nprobe: int | None = None,
                 ef_search: int | None = None) -> Run:
    """Top-``k`` dense run for ``queries`` over ``corpus`` (a BEIR dict or an Arrow dataset; index built or
    reused); ``nprobe`` (IVF) and ``ef_search`` (HNSW) are passed to ``Index.set_params`` before searching."""
    building = index_dir is None or not Path(index_dir).is_dir()
    if building and nprobe is not None and "IVF" not in factory.upper():
        raise BadIndexError(f"nprobe applies to IVF indexes, not {factory!r}")
    if building and ef_search is not None and "HNSW" not in factory.upper():
        raise BadIndexError(f"ef_search applies to HNSW indexes, not {factory!r}")
    encoder = encoder or DualEncoder.from_pretrained(model)
    index = load_or_build_index(corpus, encoder, index_dir, factory, batch_size, show_progress)
    index.set_params(nprobe=nprobe, ef_search=ef_search)
    return index.search_run(*encode_queries(encoder, queries, batch_size), k)
