"""Line-numbered readers and atomic writers shared by every layer (plain files, no ML).

Every parse error names the file and the 1-based line; every writer goes through a temporary file
in the target folder and a rename, so what is on disk is either the old or the new content.

The output-path rule (every folder densekit writes goes through ``atomic_dir``):

- a new folder is written into a temporary sibling ``.<name>.tmp-<pid>-<random>`` and renamed into place;
- every folder densekit writes declares its kind in ``densekit.json``: ``{"kind": "index" | "encoder" |
  "reranker" | "train-run", "format": 1, "files": [top-level entries it wrote], ...}`` (folders from
  before this file existed are recognised by ``meta.json``+``index.faiss``+``ids.json``,
  ``reranker.json``, ``densekit_encoder.json`` or ``train_config.json``);
- an existing target is replaced only when it is a densekit folder of the same kind holding nothing
  densekit did not write, and the caller passed ``overwrite=True`` (``--overwrite``); an empty folder
  may be used; anything else, a file in a folder's place included, is refused with ``OutputExistsError``;
- files (runs, JSONL) replace an existing file only with ``overwrite`` where the caller asks for the
  check (the CLI does); a folder in a file's place is refused;
- files and folders get the permissions the umask gives (not mkstemp's 0600 / mkdtemp's 0700);
- temporary siblings of a killed process are removed by the next write of the same target.
"""
from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import zlib
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """Bad input data; the message names the file (and line, where there is one)."""


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with 1-based numbers; undecodable bytes raise DataError with the line,
    and a ``.gz`` file that is not gzip, or is truncated or corrupt, raises DataError naming the file."""
    path = Path(path)
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    number = 0
    with raw:
        try:
            for number, line in enumerate(raw, start=1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
                yield number, text
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataError(f"{path}: not a valid gzip file or truncated after line {number} ({err or type(err).__name__}); "
                            "download or compress it again (gzip -t checks it)") from None


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


def _tmp_name(target: Path, tag: str) -> Path:
    """``.<name>.<tag>-<pid>-<random>`` beside ``target``: densekit's own temporary sibling."""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def remove_stale_temps(target: str | os.PathLike) -> None:
    """Delete temporary siblings ``.<name>.tmp-<pid>-*`` / ``.<name>.old-<pid>-*`` left by a densekit
    process that was killed (its pid no longer runs); those of live processes are left alone."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for entry in target.parent.glob(f".{glob_escape(target.name)}.*-*-*"):
        tag, _, rest = entry.name[len(target.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if tag in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename. The file's
    permissions follow the umask (like ``open``). With ``overwrite=False`` an existing file is refused
    (``OutputExistsError``); a folder at ``path`` is always refused."""
    path = Path(path)
    check_file_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _tmp_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() does
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows, overwrite: bool = True) -> None:
    """Write an iterable of JSON-able objects, one a line, atomically."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), overwrite)


# ---------------------------------------------------------------- the output-path rule
MANIFEST = "densekit.json"
# Folders written before densekit.json existed are recognised by the file that always marked them.
_LEGACY_MARKERS = (("index", ("index.faiss", "ids.json", "meta.json")), ("reranker", ("reranker.json",)),
                   ("encoder", ("densekit_encoder.json",)), ("train-run", ("train_config.json",)))


class OutputExistsError(DataError):
    """An output path holds something densekit may not replace (see ``check_target``)."""


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """``<folder>/densekit.json`` as a dict, or None when absent or unreadable."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("kind"), str) else None


def artefact_kind(folder: str | os.PathLike) -> str | None:
    """The kind of densekit artefact ``folder`` is (its ``densekit.json``, else a legacy marker file), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    manifest = read_manifest(folder)
    if manifest is not None:
        return manifest["kind"]
    for kind, markers in _LEGACY_MARKERS:
        if all((folder / m).exists() for m in markers):
            return kind
    return None


def _foreign_entries(folder: Path) -> list[str]:
    """Top-level entries of a densekit folder that its manifest does not list (someone else put them there)."""
    manifest = read_manifest(folder)
    listed = manifest.get("files") if manifest else None
    if not isinstance(listed, list):
        return []  # legacy folder or a kind that does not list its files
    return sorted(e.name for e in folder.iterdir() if e.name not in set(listed) | {MANIFEST})


def check_target(folder: str | os.PathLike, kind: str, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """The output-path rule for a folder densekit is about to write: nothing there, or an empty folder,
    is fine; an existing densekit artefact of the same ``kind`` may be replaced only with ``overwrite``;
    anything else (a file, another kind, a folder densekit did not write, a densekit folder holding
    entries densekit did not put there) is refused with ``OutputExistsError``."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise OutputExistsError(f"{folder}: a file is in the way of the {kind} folder to write; "
                                "choose another output path (densekit never replaces a file by a folder)")
    if not any(folder.iterdir()):
        return
    found = artefact_kind(folder)
    if found is None:
        raise OutputExistsError(f"{folder}: folder exists and was not written by densekit; choose a new "
                                f"(or empty) output folder: densekit never deletes files it did not write")
    if found != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise OutputExistsError(f"{folder}: holds a densekit {found}, not {article} {kind}; choose another output folder")
    foreign = _foreign_entries(folder)
    if foreign:
        raise OutputExistsError(f"{folder}: this densekit {kind} folder also holds {', '.join(map(repr, foreign[:5]))} "
                                "that densekit did not write; move them away or choose another output folder")
    if not overwrite:
        raise OutputExistsError(f"{folder}: already holds a densekit {kind}; pass {flag} to replace it, "
                                "or choose another output folder")


def check_file_target(path: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """The rule for a file densekit is about to write: a folder there is refused; an existing file is
    replaced only with ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file path to write to")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: file exists; pass {flag} to replace it, or choose another file name")


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir`` whose permissions follow the umask (``tempfile.mkdtemp`` makes 0700 folders)."""
    path = Path(path)
    os.mkdir(path, 0o777)
    return path


@contextmanager
def atomic_dir(folder: str | os.PathLike, kind: str | None = None, overwrite: bool = False,
               manifest: dict | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder`` to fill; when the block ends without error,
    ``densekit.json`` (``{"kind", "files", **manifest}``) is written into it and it takes ``folder``'s
    place by rename, otherwise it is removed. Readers see the old folder or the complete new one.

    ``folder`` is checked by ``check_target`` first (and again just before the rename): an existing
    target is replaced only when it is a densekit ``kind`` folder and ``overwrite`` is true.
    Permissions follow the umask."""
    folder = Path(folder)
    check_target(folder, kind or "folder", overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    tmp = make_dir(_tmp_name(folder, "tmp"))
    try:
        yield tmp
        if kind is not None:
            files = sorted(e.name for e in tmp.iterdir())
            (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "format": 1, **(manifest or {}), "files": files}, indent=2))
        check_target(folder, kind or "folder", overwrite)
        old = None
        if folder.exists():
            old = _tmp_name(folder, "old")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
