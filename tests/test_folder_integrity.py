"""Issue 22: folders densekit writes record their parts (sizes + sha256) and refuse changed parts; one
`index build` per --out at a time (lock file); an output path that is a symbolic link is written through."""
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from densekit.eval.cli import main
from densekit.eval.data import write_beir
from densekit.retriever.index import Index, corpus_fingerprint
from densekit.core import io
from densekit.core.io import MANIFEST, DataError, OutputExistsError


def two_indexes(tmp_path, meta=None) -> tuple[Path, Path]:
    """Two saved Flat indexes of the same shape (6 vectors of dim 8, ids of the same width), different content."""
    rng = np.random.default_rng(0)
    folders = []
    for name in ("a", "b"):
        x = rng.standard_normal((6, 8)).astype("float32")
        folders.append(Index.build(x, [f"{name}{i}" for i in range(6)], "Flat", meta).save(tmp_path / name))
    return folders[0], folders[1]


def swap(a: Path, b: Path, part: str) -> None:
    tmp = a / (part + ".swap")
    os.replace(a / part, tmp)
    os.replace(b / part, a / part)
    os.replace(tmp, b / part)


# ---------------------------------------------------------------- 1. parts of a folder belong together
@pytest.mark.parametrize("part", ["ids.npy", "index.faiss"])
def test_index_with_a_part_swapped_from_another_index_is_refused_by_name(tmp_path, part):
    a, b = two_indexes(tmp_path)
    assert (a / part).stat().st_size == (b / part).stat().st_size  # same shape: the old checks all pass
    swap(a, b, part)
    for folder in (a, b):
        with pytest.raises(DataError) as err:
            Index.load(folder)
        message = str(err.value)
        assert str(folder) in message and repr(part) in message and "densekit index build --overwrite" in message
    assert Index.load(a, verify=False).ntotal == 6  # the opt-out for a huge trusted index: no check, loads as before


def test_cli_search_refuses_a_damaged_index(tmp_path, tiny_bert, capsys):
    a, b = two_indexes(tmp_path, {"model": str(tiny_bert)})
    swap(a, b, "ids.npy")
    assert main(["search", "--index", str(a), "--query", "cats"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("densekit: error: ") and str(a) in err and "'ids.npy'" in err


def test_untouched_and_pre_parts_folders_still_load(tmp_path):
    a, b = two_indexes(tmp_path)
    parts = json.loads((a / MANIFEST).read_text())["parts"]
    assert sorted(parts) == ["ids.npy", "index.faiss", "meta.json"]
    assert parts["ids.npy"]["size"] == (a / "ids.npy").stat().st_size and len(parts["ids.npy"]["sha256"]) == 64
    assert Index.load(a).ids == [f"a{i}" for i in range(6)]
    for folder in (a, b):  # folders written before parts were recorded load as before
        manifest = json.loads((folder / MANIFEST).read_text())
        del manifest["parts"]
        (folder / MANIFEST).write_text(json.dumps(manifest))
    swap(a, b, "ids.npy")
    assert Index.load(a).ids == [f"b{i}" for i in range(6)]


def test_on_disk_merge_records_and_checks_its_lists(tmp_path):
    from densekit.retriever.shards import encode_shard, merge_shards

    x = np.random.default_rng(0).standard_normal((200, 8)).astype("float32")
    corpus = {f"d{i}": {"title": "", "text": f"v{i}"} for i in range(len(x))}

    class Vectors:
        dim = 8

        def encode(self, texts, batch_size=64, show_progress=False, out=None):
            np.save(out, x[[int(t[1:]) for t in texts]])

    meta = {"model": "synthetic", "model_hash": "m", "corpus_fingerprint": corpus_fingerprint(corpus), "num_docs": 200}
    encode_shard(corpus, Vectors(), tmp_path / "work", meta, shard_size=100, show_progress=False)
    merge_shards([tmp_path / "work"], tmp_path / "idx", "IVF4,Flat", on_disk=True, show_progress=False)
    assert "lists.ivfdata" in json.loads((tmp_path / "idx" / MANIFEST).read_text())["parts"]
    assert Index.load(tmp_path / "idx").ntotal == 200
    with open(tmp_path / "idx" / "lists.ivfdata", "r+b") as fh:  # same size, one byte changed
        byte = fh.read(1)
        fh.seek(0)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataError, match="'lists.ivfdata'"):
        Index.load(tmp_path / "idx")


def test_encoder_folder_with_replaced_weights_is_refused(tmp_path, tiny_bert):
    import torch

    from densekit.retriever.encoder import DualEncoder

    encoder = DualEncoder.from_pretrained(str(tiny_bert))
    encoder.save(tmp_path / "a")
    with torch.no_grad():
        next(encoder.model.parameters()).add_(1.0)
    encoder.save(tmp_path / "b")
    shutil.copyfile(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(DataError) as err:
        DualEncoder.from_pretrained(str(tmp_path / "a"))
    assert str(tmp_path / "a") in str(err.value) and "'model.safetensors'" in str(err.value)
    assert DualEncoder.from_pretrained(str(tmp_path / "b")).content_hash() == encoder.content_hash()  # untouched loads
    assert "model.safetensors" in json.loads((tmp_path / "a" / MANIFEST).read_text())["parts"]


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own call
def test_reranker_folder_with_replaced_adapter_is_refused(tmp_path, tiny_causal_lm):
    import torch
    from peft import LoraConfig, get_peft_model

    from densekit.reranker.base import load_reranker
    from densekit.reranker.pointwise import LLMReranker

    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        ranker = LLMReranker.from_pretrained(str(tiny_causal_lm))
        ranker.model = get_peft_model(ranker.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                              init_lora_weights=False))
        ranker.save(tmp_path / name)
    weights = "adapter_model.safetensors"
    expected = load_reranker(str(tmp_path / "b")).score("cats", ["cats purr", "dogs bark"])  # untouched loads
    shutil.copyfile(tmp_path / "b" / weights, tmp_path / "a" / weights)
    with pytest.raises(DataError) as err:
        load_reranker(str(tmp_path / "a"))
    assert str(tmp_path / "a") in str(err.value) and repr(weights) in str(err.value)
    assert load_reranker(str(tmp_path / "b")).score("cats", ["cats purr", "dogs bark"]) == expected
    assert weights in json.loads((tmp_path / "a" / MANIFEST).read_text())["parts"]


# ---------------------------------------------------------------- 2. one build per --out
def build_argv(data, model, out) -> list[str]:
    return ["index", "build", "--data", str(data), "--model", str(model), "--out", str(out)]


def test_build_refuses_an_out_locked_by_a_live_process(tmp_path, tiny_beir, tiny_bert, capsys):
    holder = subprocess.Popen(["sleep", "30"])
    try:
        lock = tmp_path / ".idx.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "then"}))
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(build_argv(tiny_beir, tiny_bert, tmp_path / "idx")) == 2
        err = capsys.readouterr().err
        assert err.startswith("densekit: error: ") and f"process {holder.pid}" in err and socket.gethostname() in err
        assert str(lock) in err  # what to delete if that process is gone
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new: no index, no .partial, lock kept
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_of_another_host_is_refused(tmp_path):
    lock = tmp_path / ".idx.lock"
    lock.write_text(json.dumps({"pid": os.getpid() + 10**7, "host": "elsewhere.example", "started": "then"}))
    with pytest.raises(io.FolderLockedError, match="elsewhere.example"):
        with io.folder_lock(tmp_path / "idx"):
            pass
    assert lock.exists()


def test_stale_lock_is_taken_over_and_no_lock_remains(tmp_path, tiny_beir, tiny_bert, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / ".idx.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "then"}))
    assert main(build_argv(tiny_beir, tiny_bert, tmp_path / "idx")) == 0
    assert Index.load(tmp_path / "idx").ntotal == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "tiny"]


def test_lock_is_released_on_errors_and_interrupts(tmp_path):
    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error):
            with io.folder_lock(tmp_path / "idx") as lock:
                assert json.loads(lock.read_text())["pid"] == os.getpid()
                with pytest.raises(io.FolderLockedError, match=f"process {os.getpid()}"):  # a second writer is refused
                    with io.folder_lock(tmp_path / "idx"):
                        pass
                raise error()
        assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- 3. output paths that are symbolic links
def test_overwrite_through_a_link_replaces_the_target_and_keeps_the_link(tmp_path, tiny_beir, tiny_bert, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    assert main(build_argv(tiny_beir, tiny_bert, tmp_path / "real" / "idx")) == 0
    link = tmp_path / "links" / "link"
    link.symlink_to(tmp_path / "real" / "idx", target_is_directory=True)
    other = write_beir(tmp_path / "other", {"x1": {"title": "", "text": "one"}, "x2": {"title": "", "text": "two"}},
                       {"q": "one"}, {"test": {"q": {"x1": 1}}})
    assert main(build_argv(other, tiny_bert, link) + ["--overwrite"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "real" / "idx")
    assert Index.load(tmp_path / "real" / "idx").ids == ["x1", "x2"]  # the target holds the new index
    for parent in (tmp_path / "links", tmp_path / "real"):
        assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == [], parent  # no .old-/.tmp-/.lock


def test_link_to_a_foreign_folder_or_nowhere_is_refused(tmp_path, tiny_beir, tiny_bert, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "mine", target_is_directory=True)
    assert main(build_argv(tiny_beir, tiny_bert, link) + ["--overwrite"]) == 2
    assert "not written by densekit" in capsys.readouterr().err
    assert link.is_symlink() and [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert main(build_argv(tiny_beir, tiny_bert, dangling) + ["--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_files_are_written_through_links(tmp_path):
    target = tmp_path / "runs" / "run.trec"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "run.trec"
    link.symlink_to(target)
    io.atomic_write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["run.trec", "run.trec", "runs"]
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExistsError, match="symbolic link"):
        io.atomic_write_text(tmp_path / "dangling", "x")
