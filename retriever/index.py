"""Index: a FAISS inner-product index behind a factory string, with string doc ids.

Factory strings are FAISS's own (``Flat``, ``HNSW32``, ``IVF1024,Flat``, ``IVF256,PQ32`` ...); the
metric is always inner product (cosine for normalised vectors). FAISS holds int64 rows; the
index keeps ``ids[row]``. A saved index is a folder::

    index.faiss   the FAISS index
    ids.npy       row -> doc id, one fixed-width UTF-8 byte array (``DocIds``; memory-mapped on load)
    meta.json     dim, factory, model, pooling, normalize, corpus fingerprint, ntotal ... (written last)
    lists.ivfdata IVF lists of an on-disk index (``index merge --on-disk``; memory-mapped when searching)

written into a temporary sibling folder and renamed into place, so an interrupted save never
leaves a folder that loads.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from densekit.core.io import DataError, atomic_dir, verify_parts

FORMAT_VERSION = 1


class BadIndexError(DataError):
    """A wrong or unusable index (dimension, model, folder, factory)."""


class DocIds(Sequence[str]):
    """Row -> doc id over one fixed-width UTF-8 byte array (numpy ``S<w>``, memory-mapped when loaded from
    ``ids.npy``): ``w`` bytes per id, ``w`` the longest id's length in bytes (MS MARCO's 8.8M passage ids:
    7 bytes each, 62 MB, where a Python list of strings takes about 0.6 GB). Ids are decoded on access."""

    def __init__(self, array: np.ndarray):
        self.array = array

    @classmethod
    def of(cls, ids: Iterable[str]) -> "DocIds":
        encoded = [str(i).encode("utf-8") for i in ids]
        if any(b"\0" in e for e in encoded):
            raise BadIndexError("doc ids must not contain NUL characters")
        return cls(np.array(encoded, dtype=f"S{max(map(len, encoded), default=1) or 1}"))

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [b.decode("utf-8") for b in self.array[i].tolist()]
        return self.array[i].decode("utf-8")

    def __iter__(self):
        for start in range(0, len(self.array), 65536):
            yield from (b.decode("utf-8") for b in self.array[start:start + 65536].tolist())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"DocIds({len(self)} ids, {self.array.dtype})"

    def unique(self) -> bool:
        return len(np.unique(self.array)) == len(self.array)


def check_factory(factory: str, dim: int, num_vectors: int | None = None) -> None:
    """Refuse, before any encoding, a factory string FAISS does not know, and an IVF/PQ factory that
    needs more training vectors than ``num_vectors`` (k-means needs at least one point per centroid)."""
    import faiss

    try:
        index = faiss.index_factory(int(dim), str(factory), faiss.METRIC_INNER_PRODUCT)
    except (RuntimeError, TypeError) as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise BadIndexError(f"--factory {factory!r} is not a FAISS factory string for dimension {dim} ({detail}); "
                            "use e.g. Flat, HNSW32, IVF256,Flat or IVF256,PQ16") from None
    if isinstance(faiss.downcast_index(index), (faiss.IndexIDMap, faiss.IndexIDMap2)):
        raise BadIndexError(f"--factory {factory!r}: an IDMap index takes ids of its own (add_with_ids), and densekit "
                            "keeps the row -> doc id map itself; drop the 'IDMap,' prefix (e.g. Flat, HNSW32)")
    if num_vectors is None or index.is_trained:
        return
    needs = []
    try:
        ivf = faiss.extract_index_ivf(index)
        needs.append((int(ivf.nlist), f"IVF{int(ivf.nlist)} has {int(ivf.nlist)} lists"))
        inner = faiss.downcast_index(ivf)
    except RuntimeError:
        inner = faiss.downcast_index(index)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        needs.append((int(pq.ksub), f"its product quantiser has {int(pq.ksub)} centroids per sub-vector"))
    for need, what in needs:
        if num_vectors < need:
            raise BadIndexError(f"--factory {factory!r} cannot be trained on {num_vectors} vectors: {what}, which needs "
                                f"at least {need} training vectors; use Flat or HNSW32 for a corpus this small, "
                                "or fewer IVF lists / PQ bits")


def corpus_fingerprint(corpus) -> str:
    """sha256 over ``id \\0 title \\0 text`` of every document, in corpus order; ``corpus`` is a BEIR dict or a
    ``datasets.Dataset`` with columns ``_id``, ``title``, ``text`` (read in batches: same corpus, same fingerprint)."""
    h = hashlib.sha256()
    if isinstance(corpus, dict):
        for doc_id, doc in corpus.items():
            h.update(f"{doc_id}\0{doc.get('title') or ''}\0{doc.get('text') or ''}\0".encode("utf-8"))
        return h.hexdigest()
    for batch in corpus.iter(batch_size=8192):
        for doc_id, title, text in zip(batch["_id"], batch["title"], batch["text"]):
            h.update(f"{doc_id}\0{title or ''}\0{text or ''}\0".encode("utf-8"))
    return h.hexdigest()


def _as_matrix(vectors, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``[n, dim]`` array; BadIndexError for another shape or
    dimension, and for a row holding NaN or inf (FAISS would store it, and that row is never found again,
    or a query would score every document NaN)."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1 and x.size == 0:
        x = x.reshape(0, dim or 0)
    if x.ndim != 2:
        raise BadIndexError(f"expected a 2-D array of {what}, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise BadIndexError(f"{what} have dimension {x.shape[1]} but the index has dimension {dim}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise BadIndexError(f"{len(bad)} of {len(x)} {what} hold NaN or inf (first: row {int(bad[0])}); "
                            "a diverged encoder? nothing was added or searched")
    return x


class Index:
    """FAISS index + row -> string id map + metadata.

    ``Index(dim, factory, meta)`` makes an empty index from a FAISS factory string; ``Index(dim, factory, meta,
    faiss_index=..., ids=...)`` wraps a filled FAISS index whose row ``i`` holds ``ids[i]`` (``load`` does this).
    ``ids`` is the row -> id sequence (a list while building, ``DocIds`` once loaded); the id -> row map behind
    ``reconstruct`` and ``in`` is built on first use and kept (O(1) per id after that)."""

    def __init__(self, dim: int, factory: str = "Flat", meta: dict | None = None, *, faiss_index=None,
                 ids: Sequence[str] = ()):
        import faiss

        self.dim, self.factory, self.meta = int(dim), str(factory), dict(meta or {})
        if faiss_index is None:
            faiss_index = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        if int(faiss_index.d) != self.dim:
            raise BadIndexError(f"FAISS index has dimension {int(faiss_index.d)} but the index has dimension {self.dim}")
        self.faiss = faiss_index
        self.ids: list[str] | DocIds = ids if isinstance(ids, DocIds) else [str(i) for i in ids]
        if len(self.ids) != self.ntotal:
            raise BadIndexError(f"{self.ntotal} vectors but {len(self.ids)} ids")
        if not (self.ids.unique() if isinstance(self.ids, DocIds) else len(set(self.ids)) == len(self.ids)):
            raise BadIndexError("doc ids must be unique within an index")
        self._row_of: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Index(dim={self.dim}, factory={self.factory!r}, ntotal={self.ntotal})"

    def _rows(self) -> dict[str, int]:
        """The id -> row map, built on first use and rebuilt only when ``ids`` was extended from outside
        (``shards._merge_on_disk``)."""
        if len(self._row_of) != len(self.ids):
            self._row_of = {d: row for row, d in enumerate(self.ids)}
        return self._row_of

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._rows()

    # ------------------------------------------------------------ building
    @property
    def ntotal(self) -> int:
        return int(self.faiss.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.faiss.is_trained)

    def train(self, vectors, max_samples: int = 100_000, seed: int = 0) -> None:
        """Train IVF/PQ quantisers on (a random sample of at most ``max_samples``) vectors."""
        x = _as_matrix(vectors, self.dim)
        if len(x) > max_samples:
            rows = np.sort(np.random.default_rng(seed).choice(len(x), max_samples, replace=False))
            x = x[rows]
        try:
            self.faiss.train(x)
        except RuntimeError as err:
            raise BadIndexError(f"factory {self.factory!r} could not be trained on {len(x)} vectors: "
                                f"{str(err).strip().splitlines()[-1]}") from None

    def reserve(self, n: int) -> None:
        """Allocate the storage for ``n`` more vectors at once where FAISS keeps them in one array (Flat, PQ,
        SQ, HNSW's storage), so that adding in batches never reallocates: no moment holds the vectors twice (a growing
        array copies itself at every doubling). Other index types are left alone."""
        import faiss

        inner = faiss.downcast_index(self.faiss)
        if getattr(inner, "storage", None) is not None:  # HNSW: its vectors live in a Flat storage index
            inner = faiss.downcast_index(inner.storage)
        codes, code_size = getattr(inner, "codes", None), getattr(inner, "code_size", None)
        if codes is None or not code_size or not hasattr(codes, "resize"):
            return
        size = int(codes.size())
        codes.resize(size + int(n) * int(code_size))  # capacity grows once ...
        codes.resize(size)  # ... and stays when the size goes back: later adds fill it in place

    def add(self, vectors, ids: Sequence[str], chunk_size: int = 65536) -> None:
        """Add vectors with their string ids (chunked). Ids must be unique across the index."""
        x = _as_matrix(vectors, self.dim)
        ids = [str(i) for i in ids]
        if len(ids) != len(x):
            raise BadIndexError(f"{len(x)} vectors but {len(ids)} ids")
        if isinstance(self.ids, DocIds):  # adding to a loaded index: its ids become a list again until saved
            self.ids = list(self.ids)
        row_of = self._rows()
        if len(set(ids)) != len(ids) or any(i in row_of for i in ids):
            raise BadIndexError("doc ids must be unique within an index")
        if not self.is_trained:
            raise BadIndexError(f"factory {self.factory!r} needs training: call train() on a sample first")
        for start in range(0, len(x), chunk_size):
            self.faiss.add(x[start:start + chunk_size])
        row_of.update((d, row) for row, d in enumerate(ids, start=len(self.ids)))
        self.ids.extend(ids)

    @classmethod
    def build(cls, vectors, ids: Sequence[str], factory: str = "Flat", meta: dict | None = None) -> "Index":
        """Create, train when the factory needs it, and fill an index."""
        x = _as_matrix(vectors)
        if len(x) == 0:
            raise BadIndexError("cannot build an index from zero vectors (empty corpus)")
        check_factory(factory, x.shape[1], len(x))
        index = cls(dim=x.shape[1], factory=factory, meta=dict(meta or {}))
        if not index.is_trained:
            index.train(x)
        index.add(x, ids)
        return index

    # ------------------------------------------------------------ search knobs
    def set_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """``nprobe`` for IVF indexes, ``ef_search`` for HNSW indexes."""
        import faiss

        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and int(value) < 1:
                raise BadIndexError(f"{name} must be >= 1, got {value}")
        if nprobe is not None:
            try:
                faiss.extract_index_ivf(self.faiss).nprobe = int(nprobe)
            except RuntimeError:
                raise BadIndexError(f"nprobe applies to IVF indexes, not {self.factory!r}") from None
        if ef_search is not None:
            hnsw = getattr(faiss.downcast_index(self.faiss), "hnsw", None)
            if hnsw is None:
                raise BadIndexError(f"ef_search applies to HNSW indexes, not {self.factory!r}")
            hnsw.efSearch = int(ef_search)

    # ------------------------------------------------------------ search
    def search(self, queries, k: int = 10) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` doc ids and scores per query row. ``k`` larger than the index returns every document;
        ``k`` must be a positive integer (ValueError)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer (documents per query), got {k!r}")
        x = _as_matrix(queries, self.dim, "query vectors")
        if len(x) == 0 or self.ntotal == 0:
            return [[] for _ in range(len(x))], np.zeros((len(x), 0), dtype=np.float32)
        k = min(int(k), self.ntotal)
        scores, rows = self.faiss.search(x, k)
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows.tolist()]
        return ids, scores

    def search_run(self, query_ids: Sequence[str], queries, k: int = 10) -> dict[str, dict[str, float]]:
        """Search and return a BEIR run ``{query_id: {doc_id: score}}``."""
        ids, scores = self.search(queries, k)
        return {qid: {doc: float(s) for doc, s in zip(doc_ids, row)} for qid, doc_ids, row in zip(query_ids, ids, scores)}

    def reconstruct(self, doc_ids: Iterable[str]) -> np.ndarray:
        """Stored vectors of ``doc_ids`` (exact for Flat/HNSW, approximate for PQ); O(1) per id (cached map)."""
        doc_ids = list(doc_ids)
        row_of = self._rows()
        missing = [d for d in doc_ids if d not in row_of]
        if missing:
            raise KeyError(f"{len(missing)} doc id(s) not in the index, e.g. {missing[0]!r}")
        return np.stack([self.faiss.reconstruct(row_of[d]) for d in doc_ids])

    # ------------------------------------------------------------ disk
    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the folder atomically (temp sibling + rename, ``densekit.json`` kind ``index`` recording the size
        and sha256 of each file, which ``load`` checks); an existing densekit index there is replaced only with
        ``overwrite`` (see ``io.check_target``)."""
        if self.meta.get("on_disk"):
            raise BadIndexError("an on-disk IVF index is written by `densekit index merge --on-disk` only")
        with atomic_dir(folder, "index", overwrite, parts=True) as tmp:
            self.write_files(tmp)
        return Path(folder)

    def write_files(self, tmp: Path) -> None:
        """``index.faiss``, ``ids.npy`` and ``meta.json`` (last) into the temporary folder ``tmp``."""
        import faiss

        faiss.write_index(self.faiss, str(tmp / "index.faiss"))
        ids = self.ids if isinstance(self.ids, DocIds) else DocIds.of(self.ids)
        np.save(tmp / "ids.npy", ids.array, allow_pickle=False)
        meta = {**self.meta, "format": FORMAT_VERSION, "dim": self.dim, "factory": self.factory, "ntotal": self.ntotal}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    @staticmethod
    def read_meta(folder: str | os.PathLike) -> dict:
        """``meta.json`` of a complete saved index folder (model, dim, factory, ...), without reading the index."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not folder.is_dir():
            raise BadIndexError(f"{folder}: no such index folder")
        if not meta_path.exists() or not (folder / "index.faiss").exists() or not (folder / "ids.npy").exists():
            raise BadIndexError(f"{folder}: incomplete index folder (index.faiss, ids.npy and meta.json are all needed)")
        meta = _read_json(meta_path, dict)
        missing = [k for k in ("dim", "factory", "ntotal") if k not in meta]
        if missing:
            raise BadIndexError(f"{meta_path}: not a densekit index meta file (missing {', '.join(missing)}); "
                                "rebuild the index with `densekit index build --overwrite`")
        return meta

    @classmethod
    def load(cls, folder: str | os.PathLike, expect_dim: int | None = None, expect_model: str | None = None,
             mmap: bool = False, verify: bool = True) -> "Index":
        """Load a saved folder; refuse a half-written folder, one built for another model/dimension, and (with
        ``verify``, before anything is read) one whose files differ from the sizes and sha256 its ``densekit.json``
        records (``io.verify_parts``: e.g. an ``ids.npy`` copied from another index). ``verify=False`` skips that
        pass over every byte of the folder, for a huge index the caller trusts."""
        import faiss

        folder = Path(folder)
        meta = cls.read_meta(folder)
        if verify:
            verify_parts(folder)
        if expect_dim is not None and meta["dim"] != expect_dim:
            raise BadIndexError(f"{folder}: index dimension {meta['dim']} does not match the encoder's {expect_dim}")
        if expect_model is not None and meta.get("model") not in (None, expect_model):
            raise BadIndexError(f"{folder}: index was built with model {meta.get('model')!r}, not {expect_model!r}")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        if meta.get("on_disk"):  # IVF lists in lists.ivfdata beside index.faiss, wherever the folder is now
            flags |= faiss.IO_FLAG_ONDISK_SAME_DIR
        try:
            faiss_index = faiss.read_index(str(folder / "index.faiss"), flags)
        except RuntimeError as err:
            raise BadIndexError(f"{folder / 'index.faiss'}: unreadable FAISS index (truncated or corrupt: "
                                f"{str(err).strip().splitlines()[-1] if str(err).strip() else 'read failed'}); "
                                "rebuild it with `densekit index build --overwrite`") from None
        ids_file = folder / "ids.npy"
        try:
            ids = DocIds(np.load(ids_file, mmap_mode="r", allow_pickle=False))
        except (OSError, ValueError) as err:
            raise BadIndexError(f"{ids_file}: corrupt index file ({err}); rebuild the index with "
                                "`densekit index build --overwrite`") from None
        if ids.array.dtype.kind != "S" or ids.array.ndim != 1:
            raise BadIndexError(f"{ids_file}: corrupt index file (expected a 1-d byte-string array, got "
                                f"{ids.array.dtype} of shape {ids.array.shape})")
        if int(faiss_index.ntotal) != len(ids) or int(faiss_index.ntotal) != meta["ntotal"]:
            raise BadIndexError(f"{folder}: corrupt index ({int(faiss_index.ntotal)} vectors, {len(ids)} ids, meta says {meta['ntotal']})")
        if int(faiss_index.d) != int(meta["dim"]):
            raise BadIndexError(f"{folder}: corrupt index (FAISS dimension {int(faiss_index.d)}, meta says {meta['dim']})")
        extra = {k: v for k, v in meta.items() if k not in ("format", "dim", "factory", "ntotal")}
        try:
            index = cls(int(meta["dim"]), meta["factory"], extra, faiss_index=faiss_index, ids=ids)
        except BadIndexError as err:
            raise BadIndexError(f"{folder}: corrupt index ({err})") from None
        return index


def _read_json(path: Path, expected: type):
    """A JSON file of the ``expected`` type, or BadIndexError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BadIndexError(f"{path}: corrupt index file ({err}); rebuild the index with "
                            "`densekit index build --overwrite`") from None
    if not isinstance(value, expected):
        raise BadIndexError(f"{path}: corrupt index file (expected a JSON {expected.__name__}, got {type(value).__name__})")
    return value
