"""Line-numbered readers and atomic writers shared by every layer (plain files, no ML).

Every parse error names the file and the 1-based line; every writer goes through a temporary file
in the target folder and a rename, so what is on disk is either the old or the new content.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """Bad input data; the message names the file (and line, where there is one)."""


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with 1-based numbers; undecodable bytes raise DataError with the line."""
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    with raw:
        for number, line in enumerate(raw, start=1):
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; check that ``required`` keys exist."""
    path = Path(path)
    for number, line in lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        missing = [key for key in required if key not in obj]
        if missing:
            raise DataError(f"{path}:{number}: missing field(s) {', '.join(map(repr, missing))}")
        yield number, obj


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows) -> None:
    """Write an iterable of JSON-able objects, one a line, atomically."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))




@contextmanager
def atomic_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder`` to fill; when the block ends without error it takes
    ``folder``'s place by rename (an existing folder is first renamed aside, then deleted), otherwise it
    is removed. Readers see the old folder or the complete new one, never a half-written one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        yield tmp
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
