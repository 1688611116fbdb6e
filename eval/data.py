"""Data in: BEIR folders, MS MARCO-style TSV files, a dataset resolver and an online downloader.

Everything returns the BEIR dict formats:

- corpus:  ``dict[doc_id, {"title": str, "text": str}]``
- queries: ``dict[query_id, str]``
- qrels:   ``dict[query_id, dict[doc_id, int]]``

Ids are always strings. Every parse error names the file and the 1-based line number.
A corpus bigger than RAM opens as a memory-mapped Arrow ``datasets.Dataset`` instead (``load_corpus_arrow``:
columns ``_id``, ``title``, ``text``, same parser, same documents), which encoding and the sharded index
build read in slices.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from densekit.core.io import DataError, atomic_write_text, lines as _lines, read_jsonl, write_jsonl  # noqa: F401

from densekit.core.types import Corpus, Qrels, Queries

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 of each official BEIR zip, as published in the BEIR README.
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}


@dataclass
class Dataset:
    """One split of a retrieval dataset: the three BEIR dicts and where they came from."""

    corpus: Corpus
    queries: Queries
    qrels: Qrels
    path: Path
    split: str


# ---------------------------------------------------------------- readers

def _record_id(path: Path, number: int, value) -> str:
    """The ``_id`` of a JSONL record as a string; null, empty, boolean or non-scalar ids are refused
    (``str(None)`` would silently become the id "None")."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataError(f"{path}:{number}: _id must be a non-empty string or integer, got {json.dumps(value)}")
    return str(value)


def _check_unique(path: Path, number: int, key: str, seen: dict | set) -> None:
    if key in seen:
        raise DataError(f"{path}:{number}: duplicate id {key!r}")


def _jsonl_docs(path: Path):
    """``(doc_id, title, text)`` of each line of a BEIR ``corpus.jsonl[.gz]``; ids checked and unique."""
    seen: set[str] = set()
    for number, obj in read_jsonl(path, required=("_id", "text")):
        doc_id = _record_id(path, number, obj["_id"])
        _check_unique(path, number, doc_id, seen)
        seen.add(doc_id)
        yield doc_id, str(obj.get("title") or ""), str(obj["text"] or "")


def _tsv_pairs(path: Path, what: str):
    """``(id, text)`` of each ``id<TAB>text`` line (MS MARCO collection / queries files); ids unique."""
    seen: set[str] = set()
    for number, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected '<id>\\t<{what}>', found no tab")
        _check_unique(path, number, parts[0], seen)
        seen.add(parts[0])
        yield parts[0], parts[-1] if len(parts) == 2 else "\t".join(parts[1:])


def load_corpus(path: str | Path) -> Corpus:
    """Read a BEIR ``corpus.jsonl[.gz]``: one ``{"_id", "title"?, "text"}`` object a line."""
    path = Path(path)
    corpus: Corpus = {doc_id: {"title": title, "text": text} for doc_id, title, text in _jsonl_docs(path)}
    if not corpus:
        raise DataError(f"{path}: empty corpus (no documents)")
    return corpus


def load_queries(path: str | Path) -> Queries:
    """Read a BEIR ``queries.jsonl``: one ``{"_id", "text"}`` object a line."""
    path = Path(path)
    queries: Queries = {}
    for number, obj in read_jsonl(path, required=("_id", "text")):
        query_id = _record_id(path, number, obj["_id"])
        _check_unique(path, number, query_id, queries)
        text = obj["text"]
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):  # str(None) would search "None"
            raise DataError(f"{path}:{number}: query {query_id!r} has text {json.dumps(text)}, not a string; "
                            "give every query its text (or remove the query)")
        queries[query_id] = str(text)
    return queries


def load_qrels(path: str | Path) -> Qrels:
    """Read qrels: BEIR TSV (``query-id<TAB>corpus-id<TAB>score``, header optional) or TREC (``qid 0 docid rel``).

    One file has one format, decided once, from its first non-blank line: a file whose first line holds a
    tab is tab-separated and every line is split at tabs only (as BEIR's own reader does), so an id may
    contain spaces (``q1<TAB>doc 1<TAB>1`` is doc ``"doc 1"``); a file without tabs is split at any
    whitespace. The first data row's column count fixes the format, 3 columns BEIR and 4 columns TREC,
    and a later row with another count is refused (DataError naming the line) rather than read as the
    other format.
    """
    path = Path(path)
    qrels: Qrels = {}
    tabbed, width = None, None
    for number, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if tabbed is None:
            tabbed = "\t" in line
            first = True
        else:
            first = False
        if tabbed:
            if "\t" not in line:
                raise DataError(f"{path}:{number}: no tab in a tab-separated qrels file (expected "
                                "query-id<TAB>corpus-id<TAB>score)")
            fields = [field.strip() for field in line.split("\t")]
        else:
            fields = line.split()
        if first and not _is_int(fields[-1]):  # header row
            continue
        if width is None and len(fields) in (3, 4):
            width = len(fields)
        if width is not None and len(fields) != width:
            sep = "tab-separated " if tabbed else ""
            raise DataError(f"{path}:{number}: {len(fields)} {sep}columns in a file whose first row has {width} "
                            f"({'BEIR: query-id corpus-id score' if width == 3 else 'TREC: qid 0 docid rel'}); "
                            "one file holds one format: fix or remove this row")
        if len(fields) == 4:  # TREC qrels
            query_id, doc_id, score = fields[0], fields[2], fields[3]
        elif len(fields) == 3:
            query_id, doc_id, score = fields
        else:
            sep = "tab-separated " if tabbed else ""
            raise DataError(f"{path}:{number}: expected 3 (BEIR) or 4 (TREC) {sep}columns, got {len(fields)}")
        if not query_id or not doc_id:
            raise DataError(f"{path}:{number}: empty {'query' if not query_id else 'doc'} id")
        if not _is_int(score):
            raise DataError(f"{path}:{number}: relevance {score!r} is not an integer")
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    return qrels


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _read_tsv_pairs(path: Path, what: str) -> dict[str, str]:
    """Read ``id<TAB>text`` lines (MS MARCO collection / queries files)."""
    return dict(_tsv_pairs(path, what))


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).exists():
            return folder / name
    return None


def available_splits(folder: str | Path) -> list[str]:
    """Splits of a BEIR (``qrels/<split>.tsv``) or MS MARCO (``qrels.<split>.tsv``) folder."""
    folder = Path(folder)
    splits = {p.name.split(".")[0] for p in (folder / "qrels").glob("*.tsv")} if (folder / "qrels").is_dir() else set()
    splits |= {p.name.split(".")[1] for p in folder.glob("qrels.*.tsv")}
    return sorted(splits)


def load_dataset(folder: str | Path, split: str = "test", check_ids: bool = True) -> Dataset:
    """Load one split of a BEIR folder (or an MS MARCO-style folder) into the BEIR dicts.

    Queries are restricted to those with qrels in ``split``. qrels rows whose query or doc id is
    absent are counted and reported in one warning; evaluation still uses the full qrels (absent
    documents simply cannot be retrieved, as in the official qrels of a sub-sampled corpus).
    """
    folder = Path(folder)
    queries, qrels = load_split(folder, split)
    corpus = _load_folder_corpus(folder)
    if check_ids:
        _warn_unknown_ids(folder, split, corpus, queries, qrels)
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, path=folder, split=split)


def load_split(folder: str | Path, split: str) -> tuple[Queries, Qrels]:
    """``(queries, qrels)`` of one split of a BEIR or MS MARCO folder, without its corpus: the queries are
    those with qrels in ``split`` and text in the queries file, in sorted id order. DataError for a missing
    folder, an unknown split, or a split none of whose queries has text."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such dataset folder")
    splits = available_splits(folder)
    if split not in splits:
        raise DataError(f"{folder}: unknown split {split!r}; splits found: {', '.join(splits) or 'none'}")
    if (folder / "queries.jsonl").exists():
        queries = load_queries(folder / "queries.jsonl")
        qrels = load_qrels(folder / "qrels" / f"{split}.tsv")
    else:
        query_file = _first_existing(folder, (f"queries.{split}.tsv", "queries.tsv"))
        if query_file is None:
            raise DataError(f"{folder}: neither queries.jsonl (BEIR) nor queries.{split}.tsv (MS MARCO) found")
        queries = _read_tsv_pairs(query_file, "query")
        qrels = load_qrels(folder / f"qrels.{split}.tsv")
    queries = {qid: queries[qid] for qid in sorted(qrels) if qid in queries}
    if not queries:
        raise DataError(f"{folder}: no queries for split {split!r} (none of its qrels query ids is in the queries file)")
    return queries, qrels


def _warn_unknown_ids(folder: Path, split: str, corpus: Corpus, queries: Queries, qrels: Qrels) -> None:
    bad_queries = sum(len(docs) for qid, docs in qrels.items() if qid not in queries)
    bad_docs = sum(1 for docs in qrels.values() for doc_id in docs if doc_id not in corpus)
    if bad_queries or bad_docs:
        warnings.warn(
            f"{folder} qrels/{split}: {bad_docs} row(s) name doc ids absent from the corpus and "
            f"{bad_queries} row(s) name query ids absent from the queries; they stay in the qrels "
            f"(such documents count as relevant but unretrievable)",
            stacklevel=2,
        )


def load_corpus_of(name_or_path: str | Path, arrow: bool = False, cache_dir: str | Path | None = None):
    """The corpus of a BEIR or MS MARCO folder (or dataset name), without queries or qrels: a dict, or with
    ``arrow`` a memory-mapped ``datasets.Dataset`` (``load_corpus_arrow``)."""
    folder = resolve_dataset(name_or_path)
    return load_corpus_arrow(folder, cache_dir) if arrow else _load_folder_corpus(folder)


def _corpus_file(folder: Path) -> Path:
    path = _first_existing(folder, ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv", "collection.tsv.gz"))
    if path is None:
        raise DataError(f"{folder}: neither corpus.jsonl[.gz] (BEIR) nor collection.tsv (MS MARCO) found")
    return path


def _corpus_records(path: str, stamp: str = ""):
    """``{"_id", "title", "text"}`` rows of a corpus file, parsed and checked exactly as ``load_corpus`` /
    the MS MARCO reader do (same ids, same text, duplicates refused); ``stamp`` only keys the cache."""
    path = Path(path)
    if ".jsonl" in path.name:
        for doc_id, title, text in _jsonl_docs(path):
            yield {"_id": doc_id, "title": title, "text": text}
        return
    for doc_id, text in _tsv_pairs(path, "passage"):
        yield {"_id": doc_id, "title": "", "text": text}


def load_corpus_arrow(folder: str | Path, cache_dir: str | Path | None = None):
    """The corpus of a BEIR (``corpus.jsonl[.gz]``) or MS MARCO (``collection.tsv``) folder as a memory-mapped
    Arrow ``datasets.Dataset`` with string columns ``_id``, ``title``, ``text``, in file order.

    Written once by ``Dataset.from_generator`` (the same parser and checks as the dict path, so the same
    documents and the same ``corpus_fingerprint``) into ``cache_dir`` (default ``$DENSEKIT_CACHE/datasets``),
    keyed by the file's path, size and modification time; later opens map the cached Arrow file and cost
    no RAM beyond the pages read. Encoding and the sharded build read it in slices (``Dataset.shard``)."""
    import datasets
    from densekit.core.models import cache_dir as densekit_cache

    path = _corpus_file(Path(folder))
    stat = path.stat()
    features = datasets.Features({name: datasets.Value("string") for name in ("_id", "title", "text")})
    cache = Path(cache_dir) if cache_dir is not None else densekit_cache() / "datasets"
    try:
        corpus = datasets.Dataset.from_generator(
            _corpus_records, features=features, cache_dir=str(cache),
            gen_kwargs={"path": str(path.resolve()), "stamp": f"{stat.st_size}-{stat.st_mtime_ns}"})
    except Exception as err:  # datasets wraps the reader's DataError (file:line) in its own error
        cause = err
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise DataError(str(cause)) from None
    if len(corpus) == 0:
        raise DataError(f"{path}: empty corpus (no documents)")
    return corpus


def _load_folder_corpus(folder: Path) -> Corpus:
    path = _first_existing(folder, ("corpus.jsonl", "corpus.jsonl.gz"))
    if path is not None:
        return load_corpus(path)
    collection = _first_existing(folder, ("collection.tsv", "collection.tsv.gz"))
    if collection is None:
        raise DataError(f"{folder}: neither corpus.jsonl[.gz] (BEIR) nor collection.tsv (MS MARCO) found")
    corpus = {pid: {"title": "", "text": text} for pid, text in _read_tsv_pairs(collection, "passage").items()}
    if not corpus:
        raise DataError(f"{collection}: empty corpus (no documents)")
    return corpus


def select_queries(queries: Queries, max_queries: int | None) -> Queries:
    """The first ``max_queries`` queries in sorted id order (all when None); ``max_queries`` must be a
    positive integer (ValueError otherwise, as ``--max-queries`` refuses it)."""
    ids = sorted(queries)
    if max_queries is not None:
        if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
            raise ValueError(f"max_queries must be a positive integer or None, got {max_queries!r}")
        ids = ids[:max_queries]
    return {qid: queries[qid] for qid in ids}


def data_root() -> Path:
    """``$DENSEKIT_DATA``, the folder of BEIR datasets (default ``../shared/data`` of the checkout)."""
    return Path(os.environ.get("DENSEKIT_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))


def resolve_dataset(name_or_path: str | Path) -> Path:
    """A folder path is used as is; a bare name is looked up in ``$DENSEKIT_DATA``."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = data_root() / str(name_or_path)
    if candidate.is_dir():
        return candidate
    raise DataError(
        f"dataset {str(name_or_path)!r} not found: not a folder, and not in $DENSEKIT_DATA={data_root()}; "
        f"online, fetch it with `densekit data download {path.name} --out DIR`"
    )


# ---------------------------------------------------------------- download (online users)

def download(name: str, out: str | Path, url: str | None = None, md5: str | None = None, timeout: float = 10.0) -> Path:
    """Download and unpack the official BEIR zip of ``name`` into ``out/<name>``.

    The zip is checked against its published md5 before extraction; extraction goes to a temporary
    folder that is renamed into place, so a failed or interrupted download never leaves a half folder.
    Offline (``DENSEKIT_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``, or no connection within ``timeout``
    seconds) it fails fast with a clear message.
    """
    from tqdm.auto import tqdm

    from densekit.core.io import check_writable

    out = Path(out)
    target = out / name
    if target.is_dir():
        if _first_existing(target, ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv", "collection.tsv.gz")) is None:
            raise DataError(f"{target}: folder exists and holds no dataset (no corpus file); densekit never writes into "
                            "a folder it did not write: choose another --out")
        return target
    if target.exists():
        raise DataError(f"{target}: a file is in the way of the dataset folder; choose another --out")
    check_writable(target)
    if url is None:
        if name not in BEIR_MD5:
            raise DataError(f"unknown BEIR dataset {name!r}; known: {', '.join(sorted(BEIR_MD5))}")
        url, md5 = BEIR_URL.format(name=name), BEIR_MD5[name]
    from densekit.core.models import offline

    if offline():
        raise DataError(f"offline mode (DENSEKIT_OFFLINE/HF_HUB_OFFLINE set): cannot download {url}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}.") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as fh:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                    while chunk := response.read(1 << 20):
                        fh.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise DataError(f"cannot download {url}: {err} (offline? use a local folder with --data)") from None
        if md5 and digest.hexdigest() != md5:
            raise DataError(f"{url}: md5 {digest.hexdigest()} does not match the published {md5}; nothing written")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DataError(f"{url}: unsafe path {member!r} in archive")
            zf.extractall(unpacked)
        inner = unpacked / name if (unpacked / name).is_dir() else unpacked
        os.replace(inner, target)
    return target


def write_beir(folder: str | Path, corpus: Corpus, queries: Queries, qrels: dict[str, Qrels],
               overwrite: bool = False) -> Path:
    """Write a BEIR folder (``qrels`` maps split name to qrels) as one whole: the output-path rule of
    ``densekit.core.io.atomic_dir`` (kind ``dataset``), so a folder that exists is replaced, whole,
    only when densekit wrote it and ``overwrite`` is true; no file of an older dataset survives beside
    the new one. Used by tests and converters."""
    from densekit.core.io import atomic_dir

    with atomic_dir(folder, "dataset", overwrite) as tmp:
        write_jsonl(tmp / "corpus.jsonl", ({"_id": k, "title": v.get("title", ""), "text": v["text"]}
                                           for k, v in corpus.items()))
        write_jsonl(tmp / "queries.jsonl", ({"_id": k, "text": v} for k, v in queries.items()))
        for split, rows in qrels.items():
            lines = ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t{s}\n" for q, docs in rows.items()
                                                         for d, s in docs.items()]
            atomic_write_text(tmp / "qrels" / f"{split}.tsv", "".join(lines))
    return Path(folder)
