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
- temporary siblings of a killed process are removed by the next write of the same target;
- an output path that is a symbolic link is written through it: the rule applies to the link's resolved
  target, which is replaced, and the link stays (pointing at the new content); a dangling link is refused;
- index, encoder and reranker folders record the size and sha256 of every file in them (``"parts"`` in
  ``densekit.json``); their loaders call ``verify_parts``, which refuses a folder whose parts were changed;
- ``folder_lock`` lets one process at a time write a target (a ``.<name>.lock`` file beside it).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import shutil
import socket
import time
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
    """Whether process ``pid`` runs on this machine (a killed process not yet reaped, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    try:  # Linux: state "Z" after the last ")" of /proc/<pid>/stat
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
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
    (``OutputExistsError``); a folder at ``path`` is always refused. A symbolic link at ``path`` is written
    through: its target gets the new content and the link stays (a dangling link is refused)."""
    with atomic_file(path, overwrite) as tmp:
        with open(tmp, "x", encoding="utf-8") as fh:  # permissions: 0o666 & ~umask
            fh.write(text)


@contextmanager
def atomic_file(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path of ``path`` for a writer that wants a file name (matplotlib, numpy ...);
    when the block ends without error it takes ``path``'s place by rename, otherwise it is removed. ``path``
    is checked first by the rule for files (``check_file_target``): an existing file is replaced only with
    ``overwrite``. A symbolic link at ``path`` is written through (``_through_link``)."""
    path = _through_link(Path(path))
    check_file_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _tmp_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def _through_link(path: Path) -> Path:
    """The path densekit writes for the output path ``path``: ``path`` itself, or, for a symbolic link, the
    path it resolves to (written in place, so the link stays and points at the new content). A dangling link
    (its target does not exist) is refused with ``OutputExistsError``."""
    if not path.is_symlink():
        return path
    real = Path(os.path.realpath(path))
    if not real.exists():
        raise OutputExistsError(f"{path}: is a symbolic link to {real}, which does not exist; point the link at an "
                                "existing folder or file, remove the link, or choose another output path")
    return real


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
    entries densekit did not put there) is refused with ``OutputExistsError``, and a new folder that cannot
    be created (``check_writable``) with DataError."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return check_writable(folder)
    _through_link(folder)  # a dangling link is refused as such
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
    check_writable(path)


def check_writable(path: str | os.PathLike) -> None:
    """Refuse (DataError) an output ``path`` that cannot be created: its nearest existing ancestor is a file,
    or that folder does not let this process create a file in it (tried with a temporary file of densekit's
    own, removed at once: permission bits do not tell for root or on read-only mounts)."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputExistsError(f"{path}: {folder} is a file, not a folder; choose another output path")
    probe = _tmp_name(folder / path.name, "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise DataError(f"{path}: cannot write in {folder} ({err.strerror or err}); choose a writable location") from None
    os.unlink(probe)


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir`` whose permissions follow the umask (``tempfile.mkdtemp`` makes 0700 folders)."""
    path = Path(path)
    os.mkdir(path, 0o777)
    return path


@contextmanager
def atomic_dir(folder: str | os.PathLike, kind: str | None = None, overwrite: bool = False,
               manifest: dict | None = None, parts: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder`` to fill; when the block ends without error,
    ``densekit.json`` (``{"kind", "files", **manifest}``) is written into it and it takes ``folder``'s
    place by rename, otherwise it is removed. Readers see the old folder or the complete new one.

    ``folder`` is checked by ``check_target`` first (and again just before the rename): an existing
    target is replaced only when it is a densekit ``kind`` folder and ``overwrite`` is true. A symbolic
    link at ``folder`` is written through (its resolved target is checked and replaced; the link stays);
    a dangling link is refused. With ``parts`` (and a ``kind``), ``densekit.json`` also records the size and
    sha256 of every file written (``"parts"``, relative posix paths), which ``verify_parts`` checks on load:
    only for folders that do not change after they are written. Permissions follow the umask; no temporary
    sibling remains after the block."""
    folder = _through_link(Path(folder))
    check_target(folder, kind or "folder", overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    tmp = make_dir(_tmp_name(folder, "tmp"))
    try:
        yield tmp
        if kind is not None:
            record = {"kind": kind, "format": 1, **(manifest or {}), "files": sorted(e.name for e in tmp.iterdir())}
            if parts:
                record["parts"] = _parts(tmp)
            (tmp / MANIFEST).write_text(json.dumps(record, indent=2))
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


# ---------------------------------------------------------------- folder integrity
class DamagedFolderError(DataError):
    """A folder densekit wrote whose files no longer match the ``parts`` recorded in its ``densekit.json``."""


_REWRITE = {"index": "rebuild it with `densekit index build --overwrite` (or copy the whole folder again)",
            "encoder": "save the encoder again (`densekit train retriever --overwrite`), or copy the whole folder again",
            "reranker": "save the reranker again (`densekit train reranker --overwrite`), or copy the whole folder again"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _parts(folder: Path) -> dict:
    """``{relative posix path: {"size", "sha256"}}`` of every file under ``folder``, recursively."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_parts(folder: str | os.PathLike) -> None:
    """Check that every file listed under ``"parts"`` in ``folder``'s ``densekit.json`` exists with the
    recorded size and sha256 (all sizes first, then the contents); raise ``DamagedFolderError`` naming the
    folder, the part and what to do otherwise. A folder without ``"parts"`` (written by densekit before
    parts were recorded, or by another tool) passes unchecked. Reads every part once: O(folder size)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    parts = manifest.get("parts") if manifest else None
    if not isinstance(parts, dict):
        return
    remedy = _REWRITE.get(manifest["kind"], "write it again, or copy the whole folder again")

    def damaged(name: str, what: str) -> DamagedFolderError:
        return DamagedFolderError(f"{folder}: part {name!r} {what} (recorded in {MANIFEST} when densekit wrote the "
                                  f"folder): the folder was changed afterwards, so its parts may not belong together; {remedy}")

    for name, want in parts.items():
        path = folder / name
        if not isinstance(want, dict) or not path.is_file():
            raise damaged(name, "is missing" if isinstance(want, dict) else "has no valid size and sha256")
        if path.stat().st_size != want.get("size"):
            raise damaged(name, f"has {path.stat().st_size} bytes, not {want.get('size')}")
    for name, want in parts.items():
        if _sha256(folder / name) != want.get("sha256"):
            raise damaged(name, "has other content than the sha256 recorded")


# ---------------------------------------------------------------- one writer per target
class FolderLockedError(DataError):
    """Another process holds the lock of an output path (see ``folder_lock``)."""


def _read_lock(lock: Path) -> dict | None:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _take_over(lock: Path, stale: dict) -> None:
    """Remove the stale ``lock`` (holding ``stale``) unless another process replaced it meanwhile: it is first
    renamed to a name of this process's own, so that two processes never both remove a fresh lock."""
    claimed = _tmp_name(lock, "old")
    try:
        os.rename(lock, claimed)
    except FileNotFoundError:
        return  # another process took it over first
    if _read_lock(claimed) != stale:  # a fresh lock arrived between the read and the rename: put it back
        try:
            os.link(claimed, lock)
        except FileExistsError:
            pass
    claimed.unlink(missing_ok=True)


@contextmanager
def folder_lock(target: str | os.PathLike, part: str = "") -> Iterator[Path]:
    """Hold the lock file ``.<name>.lock`` (``.<name>.<part>.lock`` for a ``part`` of the job, e.g. one shard)
    beside ``target`` while the block runs, so that one process at a time writes it. The file is created with
    O_CREAT|O_EXCL and holds ``{"pid", "host", "started"}``. A lock of a live process on this host, or of any
    process on another host (its pid cannot be checked from here), or an unreadable one, is refused with
    ``FolderLockedError`` naming the process, its host, and the lock file to delete if that process is gone;
    a lock of a process that no longer runs on this host is stale and taken over. The lock file is removed
    when the block ends, also on an exception or Ctrl-C (only while it is still this process's lock)."""
    real = Path(os.path.realpath(target))  # one lock however the path is spelt (through a link, ..)
    lock = real.with_name(f".{real.name}{'.' + part if part else ''}.lock")
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": secrets.token_hex(8)}
    lock.parent.mkdir(parents=True, exist_ok=True)
    draft = _tmp_name(lock, "tmp")  # the lock is linked into place whole: it is never seen empty
    draft.write_text(json.dumps(mine))
    try:
        for attempt in range(2):
            try:
                os.link(draft, lock)
                break
            except FileExistsError:
                holder = _read_lock(lock) or {}
                pid, where = holder.get("pid"), holder.get("host")
                if attempt == 0 and where == host and isinstance(pid, int) and not _pid_alive(pid):
                    _take_over(lock, holder)  # stale: its process is gone
                    continue
                what = (f"process {pid} on host {where} (started {holder.get('started')})" if pid is not None
                        else "another process (the lock file is unreadable)")
                raise FolderLockedError(f"{target}{' (' + part + ')' if part else ''}: {what} is writing it and holds the "
                                        f"lock {lock}; wait for that process to finish, or, if it no longer runs, delete "
                                        f"{lock} and run again") from None
    finally:
        draft.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        if _read_lock(lock) == mine:
            lock.unlink(missing_ok=True)
