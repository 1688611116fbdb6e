"""TREC run files (``qid Q0 docid rank score tag``): written atomically in trec_eval's rank order, read back with
every malformed line refused by file and line."""
from __future__ import annotations

import math
from pathlib import Path

from densekit.core.io import DataError, atomic_write_text, lines as numbered_lines
from densekit.core.runs import rank
from densekit.core.types import Run


def check_trec_id(value: str, what: str = "id") -> str:
    """A TREC run/qrels id: non-empty, no whitespace (the format is whitespace-separated columns).
    Raise DataError naming the id otherwise."""
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        raise DataError(f"cannot write {what} {value!r} to a TREC run file: ids must be non-empty and contain no "
                        "whitespace (TREC files are whitespace-separated); rename it in the corpus/queries/qrels")
    return value


def write_run(path: str | Path, run: Run, tag: str = "densekit", overwrite: bool = False) -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``), ranks in trec_eval order, atomically; an
    existing file is replaced only with ``overwrite``.

    Ids are written as they are: a query or doc id that is empty or contains whitespace (space, tab,
    newline ...) would make a line of the wrong column count, so it is refused with a DataError naming
    it, before anything is written. Whitespace in ``tag`` is replaced by ``_``. A query with an empty
    ranking has no line (TREC files cannot express it): ``trec_eval`` without ``-c`` then averages over
    fewer queries than densekit, which counts it 0 (``trec_eval -c`` with qrels of the evaluated queries
    gives densekit's figure).
    """
    tag = "_".join(str(tag).split()) or "densekit"
    lines = []
    for qid in sorted(run):
        docs = run[qid]
        check_trec_id(qid, "query id")
        for doc in docs:
            check_trec_id(doc, f"doc id (query {qid})")
        for position, doc in enumerate(rank(docs), start=1):
            lines.append(f"{qid} Q0 {doc} {position} {float(docs[doc])!r} {tag}\n")
    atomic_write_text(path, "".join(lines), overwrite)


def read_run(path: str | Path) -> Run:
    """Read a TREC run file; a malformed line, a NaN score or a repeated (query, doc) pair raises
    DataError naming the file and line (trec_eval refuses duplicate docs too)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a TREC run file")
    if not path.exists():
        raise DataError(f"{path}: no such run file")
    run: Run = {}
    for number, line in numbered_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DataError(f"{path}:{number}: expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}")
        try:
            score = float(fields[4])
        except ValueError:
            raise DataError(f"{path}:{number}: score {fields[4]!r} is not a number") from None
        if math.isnan(score):
            raise DataError(f"{path}:{number}: score is NaN")
        docs = run.setdefault(fields[0], {})
        if fields[2] in docs:
            raise DataError(f"{path}:{number}: doc {fields[2]!r} appears twice for query {fields[0]!r}")
        docs[fields[2]] = score
    return run
