"""Sharded corpus encoding and an index merged from the shards (one machine or many).

A corpus of ``N`` documents is cut into ``n`` contiguous ranges in corpus order (the split of
``datasets.Dataset.shard(n, i, contiguous=True)``: the first ``N % n`` shards get one document more).
Process ``i`` encodes range ``i`` into its own folder under the work folder ``<out>.partial/``::

    <out>.partial/
      shard-00001-of-00002.partial/   being encoded (resumable: one vectors-*.npy per --shard-size docs)
      shard-00000-of-00002/           complete (renamed into place when its last piece is written)
        shard.json                    identity: shard i of n, doc range, dim, model hash, corpus fingerprint, index meta
        vectors-00000.npy ...         float32 [rows, dim] pieces, in corpus order
        ids.json                      the shard's doc ids, in the same order

Only process ``i`` writes ``shard-i-of-n*``, so processes never share a temporary name; a killed
process resumes from its last complete piece. A work folder holding shards of another split (another
``n``) is refused: finish that split, or delete the work folder to start over.

``merge_shards`` checks the set (every shard 0..n-1 exactly once, same model hash, dimension, corpus,
contiguous ranges) and streams the pieces: IVF/PQ are trained on a random sample of ``train_sample``
rows, then vectors are added ``add_batch`` rows at a time, each batch read from a memory map that is
closed right after (its pages leave the process), into an index whose storage is allocated once
(``Index.reserve``). Peak memory is the finished index plus one batch. The index is saved atomically
(``Index.save``), so an interrupted merge leaves nothing that loads. With ``Flat`` the merged index
equals a one-process build: same ids, same vectors, same order. ``on_disk`` (IVF) instead fills one IVF
index per shard and joins their lists with FAISS's ``merge_ondisk`` into ``lists.ivfdata`` in the index
folder, memory-mapped at search time and found beside ``index.faiss`` after a move (``IO_FLAG_ONDISK_SAME_DIR``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .index import BadIndexError, Index, check_factory
from densekit.core.io import atomic_write_text, check_target, make_dir
from densekit.core.text import doc_text

SHARD_FORMAT = 1
_SHARD_RE = re.compile(r"^shard-(\d{5,})-of-(\d{5,})(\.partial)?$")
_PIECE_RE = re.compile(r"^\.?vectors-\d{5,}\.npy(\.partial)?$")


# ---------------------------------------------------------------- corpus access (dict or Arrow dataset)
def is_arrow(corpus) -> bool:
    """True for a ``datasets.Dataset`` (columns ``_id``, ``title``, ``text``), False for a BEIR dict."""
    return not isinstance(corpus, dict) and hasattr(corpus, "shard") and hasattr(corpus, "column_names")


def shard_range(num_docs: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard_index`` of ``num_shards``: ``Dataset.shard(contiguous=True)``'s split."""
    if not 0 <= shard_index < num_shards:
        raise BadIndexError(f"--shard-index {shard_index} is outside 0..{num_shards - 1} (--num-shards {num_shards})")
    div, mod = divmod(num_docs, num_shards)
    start = div * shard_index + min(shard_index, mod)
    return start, start + div + (1 if shard_index < mod else 0)


class CorpusRows:
    """Positional, batched access to one contiguous range of a corpus (a dict, or an Arrow dataset that is
    never loaded whole: ``Dataset.shard`` + slices of a memory-mapped table)."""

    def __init__(self, corpus, num_shards: int = 1, shard_index: int = 0):
        self.start, self.stop = shard_range(len(corpus), num_shards, shard_index)
        if is_arrow(corpus):
            self._data = corpus.shard(num_shards, shard_index, contiguous=True) if num_shards > 1 else corpus
            if len(self._data) != self.stop - self.start:  # the datasets split changed: refuse rather than mis-id
                raise BadIndexError(f"datasets' Dataset.shard gave {len(self._data)} rows for shard {shard_index} of "
                                    f"{num_shards}, expected {self.stop - self.start}")
            self._ids = None
        else:
            self._data = corpus
            self._ids = list(corpus)[self.start:self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def ids(self, start: int, stop: int) -> list[str]:
        """Doc ids of rows ``[start, stop)`` (no text read)."""
        if self._ids is not None:
            return self._ids[start:stop]
        return [str(i) for i in self._data.select_columns(["_id"])[start:stop]["_id"]]

    def rows(self, start: int, stop: int) -> tuple[list[str], list[str]]:
        """(ids, document texts) of rows ``[start, stop)`` of this range (0-based within it)."""
        if self._ids is not None:
            ids = self._ids[start:stop]
            return ids, [doc_text(self._data[d]) for d in ids]
        batch = self._data[start:stop]
        return ([str(i) for i in batch["_id"]],
                [doc_text({"title": t, "text": x}) for t, x in zip(batch["title"], batch["text"])])


# ---------------------------------------------------------------- encoding one shard
def shard_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _is_ours(entry: Path) -> bool:
    """An entry of a work folder that densekit wrote (and so may delete)."""
    if entry.name == "manifest.json":
        return True
    if not _SHARD_RE.match(entry.name) or entry.is_symlink():
        return False
    try:
        return entry.is_dir() and all(e.name in ("shard.json", "ids.json") or _PIECE_RE.match(e.name)
                                      or e.name.startswith((".shard.json.tmp-", ".ids.json.tmp-")) for e in entry.iterdir())
    except FileNotFoundError:  # another shard's process just renamed its .partial folder into place
        return True


def prepare_work(work: Path, num_shards: int) -> None:
    """Create the work folder, or check that an existing one holds only densekit shards of this split
    (``num_shards``); a stale ``manifest.json`` is removed."""
    if work.exists() or work.is_symlink():
        if not work.is_dir() or work.is_symlink() or not all(_is_ours(e) for e in work.iterdir()):
            raise BadIndexError(f"{work}: is in the way of index build's shard folder and was not written by densekit; "
                                "move it away or choose another --out")
        other = sorted({int(m.group(2)) for e in work.iterdir() if (m := _SHARD_RE.match(e.name))} - {num_shards})
        if other:
            raise BadIndexError(f"{work}: holds shards of a {other[0]}-way split, not {num_shards}; resume with "
                                f"--num-shards {other[0]} (the shard count cannot change mid-build), or delete {work} "
                                "to start over")
        for entry in work.iterdir():
            if entry.name == "manifest.json":
                entry.unlink(missing_ok=True)
        return
    work.parent.mkdir(parents=True, exist_ok=True)
    try:
        make_dir(work)
    except FileExistsError:  # another shard's process made it first
        pass


def encode_shard(corpus, encoder, work: str | Path, meta: dict, num_shards: int = 1, shard_index: int = 0,
                 shard_size: int = 4096, batch_size: int = 64, show_progress: bool = True) -> Path:
    """Encode shard ``shard_index`` of ``num_shards`` of ``corpus`` (dict or Arrow dataset) into
    ``work/shard-i-of-n/``; resumable piece by piece; returns the complete shard folder.

    ``meta`` is the index meta (``search.index_meta``) that the merged index will carry; a finished or
    half-finished shard of another model, corpus or piece size is replaced (only this shard's own folder)."""
    work = Path(work)
    prepare_work(work, num_shards)
    rows = CorpusRows(corpus, num_shards, shard_index)
    identity = {"kind": "index-shard", "format": SHARD_FORMAT, "shard_index": shard_index, "num_shards": num_shards,
                "start": rows.start, "stop": rows.stop, "num_docs": len(corpus), "dim": encoder.dim,
                "shard_size": shard_size, "meta": meta}
    final = work / shard_name(shard_index, num_shards)
    partial = final.with_name(final.name + ".partial")
    if final.is_dir():
        if _read_json(final / "shard.json") == identity:
            return final  # already done
        shutil.rmtree(final)
    if partial.is_dir() and _read_json(partial / "shard.json") != identity:
        shutil.rmtree(partial)
    if not partial.is_dir():
        make_dir(partial)
        atomic_write_text(partial / "shard.json", json.dumps(identity, indent=2))
    ids: list[str] = []
    for number, start in enumerate(range(0, len(rows), shard_size)):
        stop = min(start + shard_size, len(rows))
        path = partial / f"vectors-{number:05d}.npy"
        if path.exists():
            ids.extend(rows.ids(start, stop))
            continue
        piece_ids, texts = rows.rows(start, stop)
        ids.extend(piece_ids)
        if show_progress:
            print(f"encoding docs {rows.start + start}-{rows.start + stop} of {len(corpus)}"
                  + (f" (shard {shard_index} of {num_shards})" if num_shards > 1 else ""), file=sys.stderr, flush=True)
        encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, out=path)
    atomic_write_text(partial / "ids.json", json.dumps(ids))
    os.replace(partial, final)
    return final


# ---------------------------------------------------------------- checking a shard set
def shard_folders(paths: Sequence[str | Path]) -> list[Path]:
    """Shard folders named by ``paths``: each a shard folder itself or a work folder holding them."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise BadIndexError(f"{path}: no such shard folder")
        if _SHARD_RE.match(path.name) or (path / "shard.json").exists():
            found.append(path)
            continue
        inside = sorted(e for e in path.iterdir() if _SHARD_RE.match(e.name) and e.is_dir())
        if not inside:
            raise BadIndexError(f"{path}: holds no index shards (shard-IIIII-of-NNNNN folders written by "
                                "`densekit index build --num-shards N --shard-index I`)")
        found.extend(inside)
    return found


def check_shards(folders: Sequence[Path]) -> list[tuple[Path, dict]]:
    """Read and cross-check a shard set; return ``(folder, shard.json)`` sorted by shard index.

    Refused, naming the shard: a shard still being encoded (``.partial``) or unreadable, shards of
    different splits, models, dimensions, corpora or index settings, a shard given twice, a missing shard,
    ranges that do not tile the corpus, pieces whose rows or dimension disagree with the manifest."""
    if not folders:
        raise BadIndexError("no shards to merge")
    infos: list[tuple[Path, dict]] = []
    for folder in folders:
        if folder.name.endswith(".partial"):
            match = _SHARD_RE.match(folder.name)
            which = f"shard {int(match.group(1))} of {int(match.group(2))}" if match else "a shard"
            raise BadIndexError(f"{folder}: {which} is incomplete (still being encoded, or its process was "
                                "interrupted): run its `densekit index build ... --shard-index` again to finish it")
        info = _read_json(folder / "shard.json")
        if not isinstance(info, dict) or info.get("kind") != "index-shard" or not isinstance(info.get("meta"), dict):
            raise BadIndexError(f"{folder}: not a complete densekit index shard (shard.json missing or unreadable)")
        if info.get("format") != SHARD_FORMAT:
            raise BadIndexError(f"{folder}: shard format {info.get('format')} is not {SHARD_FORMAT}; encode it again")
        if not (folder / "ids.json").exists():
            raise BadIndexError(f"{folder}: incomplete shard (no ids.json)")
        infos.append((folder, info))
    first_folder, first = infos[0]
    for key, what in (("num_shards", "shard count (--num-shards)"), ("dim", "dimension"), ("num_docs", "corpus size")):
        for folder, info in infos:
            if info[key] != first[key]:
                raise BadIndexError(f"shards disagree on the {what}: {first_folder} has {first[key]}, {folder} has {info[key]}; "
                                    "all shards must come from one `index build` split")
    for key, what in (("model_hash", "encoder (model content hash)"), ("corpus_fingerprint", "corpus (fingerprint)")):
        for folder, info in infos:
            if info["meta"].get(key) != first["meta"].get(key):
                raise BadIndexError(f"shards were encoded with a different {what}: {first_folder} "
                                    f"({str(first['meta'].get(key))[:12]}) vs {folder} ({str(info['meta'].get(key))[:12]}); "
                                    "encode every shard with the same model and corpus")
    for folder, info in infos:
        if info["meta"] != first["meta"]:
            diff = sorted(k for k in set(info["meta"]) | set(first["meta"]) if info["meta"].get(k) != first["meta"].get(k))
            raise BadIndexError(f"shards disagree on {', '.join(diff)}: {first_folder} vs {folder}")
    n = first["num_shards"]
    seen: dict[int, Path] = {}
    for folder, info in infos:
        i = info["shard_index"]
        if i in seen:
            raise BadIndexError(f"shard {i} of {n} given twice: {seen[i]} and {folder}")
        seen[i] = folder
    missing = [i for i in range(n) if i not in seen]
    if missing:
        names = ", ".join(shard_name(i, n) for i in missing[:5])
        raise BadIndexError(f"shard(s) {', '.join(map(str, missing[:5]))} of {n} missing ({names}, expected beside "
                            f"{first_folder}); encode with `densekit index build ... --num-shards {n} --shard-index "
                            f"{missing[0]}` (or copy it there from the machine that encoded it)")
    infos.sort(key=lambda item: item[1]["shard_index"])
    position = 0
    for folder, info in infos:
        if info["start"] != position or info["stop"] < info["start"]:
            raise BadIndexError(f"{folder}: covers docs {info['start']}-{info['stop']}, expected to start at {position}")
        position = info["stop"]
        rows = 0
        for piece in pieces(folder):
            shape = _npy_shape(piece)
            if len(shape) != 2 or shape[1] != info["dim"]:
                raise BadIndexError(f"{piece}: vectors of shape {shape}, expected [rows, {info['dim']}]")
            rows += shape[0]
        if rows != info["stop"] - info["start"]:
            raise BadIndexError(f"{folder}: pieces hold {rows} vectors, expected {info['stop'] - info['start']}")
    if position != first["num_docs"]:
        raise BadIndexError(f"shards cover {position} docs of a {first['num_docs']}-doc corpus")
    return infos


def pieces(folder: Path) -> list[Path]:
    """A shard folder's vector pieces (``vectors-NNNNN.npy``) in row order."""
    return sorted(folder.glob("vectors-*.npy"), key=lambda p: int(p.stem.split("-")[1]))


def _npy_shape(path: Path) -> tuple:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError) as err:
        raise BadIndexError(f"{path}: unreadable vectors file ({err})") from None


def _read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a ``.npy`` file, copied out of a memory map that is closed right after, so
    the file's pages do not stay in this process's resident memory."""
    mapped = np.load(path, mmap_mode="r")
    rows = np.array(mapped[start:stop], dtype=np.float32, order="C")
    del mapped
    return rows


def _stream(infos: list[tuple[Path, dict]], add_batch: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(vectors, ids) in corpus order, at most ``add_batch`` rows at a time."""
    for folder, _ in infos:
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        offset = 0
        for piece in pieces(folder):
            rows = _npy_shape(piece)[0]
            for start in range(0, rows, add_batch):
                stop = min(start + add_batch, rows)
                yield _read_rows(piece, start, stop), ids[offset + start:offset + stop]
            offset += rows
        if offset != len(ids):
            raise BadIndexError(f"{folder}: ids.json holds {len(ids)} ids for {offset} vectors")


def _sample(infos: list[tuple[Path, dict]], total: int, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement from all shards (all rows when ``size >= total``)."""
    if size >= total:
        return np.concatenate([_read_rows(p, 0, _npy_shape(p)[0]) for f, _ in infos for p in pieces(f)])
    chosen = np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    parts, offset = [], 0
    for folder, _ in infos:
        for piece in pieces(folder):
            mapped = np.load(piece, mmap_mode="r")
            lo, hi = np.searchsorted(chosen, [offset, offset + len(mapped)])
            if hi > lo:
                parts.append(np.array(mapped[chosen[lo:hi] - offset], dtype=np.float32))
            offset += len(mapped)
            del mapped
    return np.concatenate(parts)


def merge_shards(shards: Sequence[str | Path], out: str | Path, factory: str = "Flat", train_sample: int = 100_000,
                 add_batch: int = 65536, overwrite: bool = False, seed: int = 0, show_progress: bool = True,
                 on_disk: bool = False) -> Index:
    """Build and save the index at ``out`` from a complete shard set (folders, or work folders holding them).

    IVF/PQ factories are trained on ``train_sample`` rows sampled from every shard (seeded); vectors are then
    added in corpus order ``add_batch`` rows at a time from memory maps closed after each batch. With
    ``on_disk`` (IVF factories) each shard becomes an IVF index of its own, one at a time, and FAISS's
    ``merge_ondisk`` joins their lists into ``lists.ivfdata`` in the index folder: the merged lists are never
    in memory, and searching memory-maps them (the folder may be moved: ``IO_FLAG_ONDISK_SAME_DIR``)."""
    check_target(out, "index", overwrite)
    if train_sample < 1 or add_batch < 1:
        raise BadIndexError("--train-sample and --add-batch must be >= 1")
    infos = check_shards(shard_folders(shards))
    dim, total, meta = infos[0][1]["dim"], infos[0][1]["num_docs"], infos[0][1]["meta"]
    check_factory(factory, dim, min(total, train_sample))
    if on_disk and "IVF" not in factory.upper():
        raise BadIndexError(f"--on-disk keeps IVF lists on disk: use an IVF factory (IVF1024,Flat, IVF1024,PQ32 ...), not {factory!r}")
    index = Index(dim=dim, factory=factory, meta=dict(meta))
    began = time.time()
    if not index.is_trained:
        index.train(_sample(infos, total, train_sample, seed), max_samples=train_sample, seed=seed)
    if on_disk:
        return _merge_on_disk(index, infos, Path(out), add_batch, overwrite)
    index.reserve(total)
    for vectors, ids in _stream(infos, add_batch):
        index.add(vectors, ids)
    if show_progress:
        print(f"merged {len(infos)} shard(s): {index.ntotal} vectors into {factory} in {time.time() - began:.1f} s",
              file=sys.stderr, flush=True)
    index.save(out, overwrite)
    return index


def _merge_on_disk(index: Index, infos: list[tuple[Path, dict]], out: Path, add_batch: int, overwrite: bool) -> Index:
    """Fill one IVF index per shard (ids 0..rows-1, shifted by ``merge_ondisk``), join their lists into
    ``lists.ivfdata`` and save, all inside ``atomic_dir`` (recording every file's size and sha256, as
    ``Index.save`` does): an interrupted merge leaves no folder that loads."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from densekit.core.io import atomic_dir

    with atomic_dir(out, "index", overwrite, parts=True) as tmp:
        parts = []
        for k, info in enumerate(infos):
            part = faiss.clone_index(index.faiss)
            for vectors, ids in _stream([info], add_batch):
                part.add(vectors)
                index.ids.extend(ids)
            parts.append(tmp / f".part-{k:05d}.faiss")
            faiss.write_index(part, str(parts[-1]))
            del part
        if len(set(index.ids)) != len(index.ids):
            raise BadIndexError("doc ids must be unique within an index")
        merge_ondisk(index.faiss, [str(p) for p in parts], str(tmp / "lists.ivfdata"), shift_ids=True)
        index.meta["on_disk"] = True
        index.write_files(tmp)
        for part in parts:
            part.unlink()
    return Index.load(out, verify=False)  # just written and hashed: no second pass over lists.ivfdata


def wait_for_shards(work: Path, num_shards: int, poll_s: float = 1.0) -> None:
    """Block until every ``shard-i-of-n`` folder of ``work`` is complete (torchrun: rank 0 merges)."""
    names = [shard_name(i, num_shards) for i in range(num_shards)]
    told = False
    while not all((work / name / "ids.json").exists() and (work / name / "shard.json").exists() for name in names):
        if not told:
            print(f"waiting for the other {num_shards - 1} shard(s) in {work} ...", file=sys.stderr, flush=True)
            told = True
        time.sleep(poll_s)
