"""Issue 11: never lose a user's files, never save or report a wrong model.

Output-path rule, run identity of checkpoints, finite checks, encoder identity by content hash, index
load errors, and a fault test (SIGKILL at random points, then resume)."""
import json
import os
import random
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from densekit.eval.cli import main
from densekit.eval.data import write_beir
from densekit.core.checkpoints import NonFiniteError, list_checkpoints
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import BadIndexError, Index
from densekit.core.io import MANIFEST, OutputExistsError, _pid_alive, atomic_dir, atomic_write_text
from densekit.retriever.search import build_index
from densekit.retriever.config import TrainConfig
from densekit.retriever.train import train

TOPICS = ["cats", "dogs", "fish", "birds", "trees", "rivers", "stars", "trains"]


def toy_examples(topics=TOPICS):
    return [{"query": f"about {t}", "positives": [f"{t} {t} are described here"],
             "negatives": [f"{o} {o} are described here" for o in topics if o != t][:2]} for t in topics]


def snapshot(folder: Path) -> dict:
    """path -> (is_dir, bytes) of everything under ``folder``."""
    return {str(p.relative_to(folder)): (p.is_dir(), None if p.is_dir() else p.read_bytes()) for p in folder.rglob("*")}


def no_encoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the corpus was encoded before the arguments were checked")

    monkeypatch.setattr(DualEncoder, "encode", fail)


# ---------------------------------------------------------------- 1. one rule for every output path
def test_index_build_never_deletes_user_files(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "thesis.tex").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    no_encoding(monkeypatch)
    build = ["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert)]
    for out in (victim, tmp_path / "notes.txt"):
        for extra in ([], ["--overwrite"]):
            assert main(build + ["--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert f"densekit: error: {out}:" in err and ("not written by densekit" in err or "a file is in the way" in err)
    eval_dense = ["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", str(tiny_bert),
                  "--index", str(tmp_path / "notes.txt")]
    assert main(eval_dense) == 2 and "a file is in the way" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_index_is_replaced_only_with_overwrite(tiny_beir, tiny_bert, tmp_path, capsys):
    build = ["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "idx")]
    assert main(build) == 0
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["kind"] == "index" and set(manifest["files"]) == {"index.faiss", "ids.npy", "meta.json"}
    capsys.readouterr()
    assert main(build) == 2
    assert "already holds a densekit index; pass --overwrite" in capsys.readouterr().err
    assert main(build + ["--overwrite"]) == 0
    (tmp_path / "idx" / "my-notes.txt").write_text("keep me")  # something densekit did not write
    assert main(build + ["--overwrite"]) == 2
    assert "'my-notes.txt' that densekit did not write" in capsys.readouterr().err
    assert (tmp_path / "idx" / "my-notes.txt").read_text() == "keep me"


def test_atomic_dir_refuses_other_kinds_and_files(tmp_path):
    with atomic_dir(tmp_path / "enc", "encoder") as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    with pytest.raises(OutputExistsError, match="holds a densekit encoder, not an index"):
        with atomic_dir(tmp_path / "enc", "index", overwrite=True):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="a file is in the way"):
        with atomic_dir(tmp_path / "file", "index", overwrite=True):
            pass
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", "index") as tmp:  # an empty folder holds nothing to lose
        (tmp / "a").write_text("a")
    assert (tmp_path / "empty" / "a").exists() and (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "enc", "file"]  # no temporaries left


def test_save_run_and_mine_refuse_an_existing_file(tiny_beir, tmp_path, capsys):
    run_file, mined = tmp_path / "bm25.trec", tmp_path / "neg.jsonl"
    run_file.write_text("precious\n")
    mined.write_text("precious\n")
    assert main(["eval", "--data", str(tiny_beir), "--save-run", str(run_file)]) == 2
    assert "file exists; pass --overwrite" in capsys.readouterr().err and run_file.read_text() == "precious\n"
    assert main(["mine", "--data", str(tiny_beir), "--split", "test", "--out", str(mined)]) == 2
    assert "file exists; pass --overwrite" in capsys.readouterr().err and mined.read_text() == "precious\n"
    assert main(["eval", "--data", str(tiny_beir), "--save-run", str(run_file), "--overwrite"]) == 0
    assert run_file.read_text().split()[1] == "Q0"
    assert main(["mine", "--data", str(tiny_beir), "--split", "test", "--out", str(mined), "--overwrite"]) == 0
    assert "positives" in json.loads(mined.read_text().splitlines()[0])


def test_outputs_follow_the_umask(tiny_bert, tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "run.trec", "q Q0 d 1 1.0 x\n")
        enc = DualEncoder.from_pretrained(str(tiny_bert))
        enc.save(tmp_path / "enc")
        Index.build(np.eye(4, dtype=np.float32), list("abcd")).save(tmp_path / "idx")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "run.trec") == 0o644
    assert mode(tmp_path / "enc") == mode(tmp_path / "idx") == 0o755
    assert mode(tmp_path / "idx" / "meta.json") == 0o644


# ---------------------------------------------------------------- 2. checkpoints carry a run identity
def test_resume_refuses_a_changed_config_and_keeps_train_config(tiny_bert, tmp_path):
    config = TrainConfig(batch_size=2, n_negatives=1, lr=1e-3, epochs=2, checkpoint_every=2, temperature=0.1)
    out = tmp_path / "run"
    train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), out, config, show_progress=False, stop_after=3)
    saved = (out / "train_config.json").read_text()
    for change, field in (({"lr": 2e-3}, "lr"), ({"loss": "mw"}, "loss"), ({"batch_size": 4}, "batch_size"),
                          ({"max_steps": 20}, "max_steps")):
        other = TrainConfig(**{**config.__dict__, **change})
        with pytest.raises(OutputExistsError, match=rf"--resume refused.*\b{field} \(was"):
            train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), out, other, resume=True, show_progress=False)
    with pytest.raises(OutputExistsError, match="training data"):
        train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(TOPICS[:6]), out, config, resume=True,
              show_progress=False)
    assert (out / "train_config.json").read_text() == saved
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    # another checkpoint_every is not another run
    resumed = TrainConfig(**{**config.__dict__, "checkpoint_every": 3})
    train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), out, resumed, resume=True, show_progress=False)
    steps = [json.loads(l)["step"] for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_cli_resume_with_another_lr_is_refused(tiny_beir, tiny_bert, tmp_path, capsys):
    args = ["train", "retriever", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_bert),
            "--batch-size", "1", "--max-steps", "1", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--resume", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "--resume refused" in err and "lr (was 2e-05, now 0.001)" in err


def test_fresh_run_in_an_old_out_is_refused_and_overwrite_keeps_its_own_checkpoint(tiny_bert, tmp_path):
    out = tmp_path / "run"
    old = TrainConfig(batch_size=2, n_negatives=1, epochs=2, checkpoint_every=2, temperature=0.1)
    train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), out, old, show_progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-000006", "step-000008"]
    (out / "README-mine.txt").write_text("notes")
    new = TrainConfig(batch_size=2, n_negatives=1, epochs=2, checkpoint_every=2, temperature=0.1, lr=1e-4)
    with pytest.raises(OutputExistsError, match=r"already holds a training run \(checkpoints up to step 8\)"):
        train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), out, new, show_progress=False, stop_after=2)
    # overwrite: the old run's checkpoints, log and model go, the new run's first checkpoint stays
    train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), out, new, show_progress=False, stop_after=2,
          overwrite=True)
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    assert not (out / "model").exists() and (out / "README-mine.txt").read_text() == "notes"
    assert json.loads((out / "train_config.json").read_text())["lr"] == 1e-4
    user = tmp_path / "papers"
    user.mkdir()
    (user / "a.pdf").write_text("a")
    with pytest.raises(OutputExistsError, match="not written by densekit training"):
        train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), user, new, show_progress=False, overwrite=True)
    assert sorted(p.name for p in user.iterdir()) == ["a.pdf"]


def test_resumed_reranker_log_does_not_repeat_steps(tiny_causal_lm, tmp_path):
    from densekit.reranker.pointwise import LLMReranker
    from densekit.reranker.config import RerankTrainConfig
    from densekit.reranker.train import train_reranker

    groups = [{"query": f"q{t}", "positives": [f"{t} {t} {t}"], "negatives": [f"{o} {o}" for o in "abcde" if o != t]}
              for t in "abcde"]
    config = RerankTrainConfig(objective="cl", group_size=3, batch_size=1, lr=5e-3, epochs=1, lora_r=2, checkpoint_every=2)
    out = tmp_path / "rr"
    full = train_reranker(LLMReranker.from_pretrained(str(tiny_causal_lm)), groups, out, config, show_progress=False)
    shutil.rmtree(out / "checkpoints" / "step-000005")  # as if killed after logging step 5, before its checkpoint
    resumed = train_reranker(LLMReranker.from_pretrained(str(tiny_causal_lm)), groups, out, config, resume=True,
                             show_progress=False)
    steps = [json.loads(l)["step"] for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert resumed.score("qa", ["a a a", "b b"]) == pytest.approx(full.score("qa", ["a a a", "b b"]), abs=1e-5)
    with pytest.raises(OutputExistsError, match=r"lr \(was 0.005, now 0.001\)"):
        train_reranker(LLMReranker.from_pretrained(str(tiny_causal_lm)), groups, out,
                       RerankTrainConfig(**{**config.__dict__, "lr": 1e-3}), resume=True, show_progress=False)


# ---------------------------------------------------------------- 3. finite checks
def test_configs_refuse_out_of_range_values():
    from densekit.reranker.config import BlockRankTrainOptions, RerankTrainConfig

    for bad in ({"temperature": 0}, {"temperature": -1}, {"lr": 0}, {"batch_size": 0}, {"max_steps": 0},
                {"warmup_ratio": 2}, {"loss": "nope"}, {"lr": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
            TrainConfig(**bad)
    for bad in ({"temperature": 0}, {"group_size": 1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad)).replace("_", "-")):
            RerankTrainConfig(**bad)
    with pytest.raises(ValueError, match="aux-temperature"):
        BlockRankTrainOptions(aux_temperature=0)


def test_nonfinite_loss_stops_training_before_anything_is_saved(tiny_beir, tiny_bert, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "retriever", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_bert),
            "--batch-size", "1", "--max-steps", "2", "--checkpoint-every", "1", "--out", str(out)]
    assert main(args + ["--temperature", "1e-40"]) == 2  # scores / 1e-40 overflow float32: a NaN loss at step 1
    err = capsys.readouterr().err
    assert "training diverged at step 1" in err and "temperature=1e-40" in err
    assert not (out / "model").exists() and not list_checkpoints(out)
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    with pytest.raises(NonFiniteError, match="step 1"):
        train(enc, toy_examples(), tmp_path / "lib", TrainConfig(batch_size=2, n_negatives=1, temperature=1e-40),
              show_progress=False)
    assert not (tmp_path / "lib" / "model").exists()


def test_nonfinite_weights_are_never_saved_nor_encoded(tiny_bert, tiny_causal_lm, tmp_path):
    from densekit.reranker.pointwise import LLMReranker

    enc = DualEncoder.from_pretrained(str(tiny_bert))
    enc.save(tmp_path / "good")
    with torch.no_grad():
        next(enc.model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite embedding"):
        enc.encode(["cats purr"])
    with pytest.raises(ValueError, match="non-finite weights"):
        enc.save(tmp_path / "good", overwrite=True)
    assert DualEncoder.from_pretrained(str(tmp_path / "good")).encode(["cats"]).shape == (1, 32)
    rr = LLMReranker.from_pretrained(str(tiny_causal_lm))
    with torch.no_grad():
        next(rr.model.parameters()).fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite weights"):
        rr.save(tmp_path / "rr")
    assert not (tmp_path / "rr").exists()


# ---------------------------------------------------------------- 4. encoder identity by content hash
def test_index_knows_its_encoder_by_content_not_path(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    enc.save(Path("runs/x"))
    assert main(["index", "build", "--data", str(tiny_beir), "--model", "runs/x", "--out", "idx"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", "idx", "--query", "cats", "--model", "./runs/x"]) == 0  # same model, other spelling
    dense = ["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", "./runs/x", "--index", "idx", "--json"]
    assert main(dense) == 0
    capsys.readouterr()
    with torch.no_grad():  # retrain "in place": same path, other weights
        next(enc.model.parameters()).add_(0.5)
    enc.save(Path("runs/x"), overwrite=True)
    for args in (["search", "--index", "idx", "--query", "cats"], ["search", "--index", "idx", "--query", "cats", "--model", "runs/x"],
                 dense, ["mine", "--data", str(tiny_beir), "--split", "test", "--index", "idx", "--out", "neg.jsonl"]):
        assert main(args) == 2, args
        assert "index was built with another encoder" in capsys.readouterr().err
    # an index whose meta lost its hash cannot be matched to an encoder: refused, not guessed from the model name
    meta = json.loads(Path("idx/meta.json").read_text())
    del meta["model_hash"]
    Path("idx/meta.json").write_text(json.dumps(meta))
    manifest = json.loads(Path("idx/densekit.json").read_text())
    del manifest["parts"]  # (the edited meta.json would otherwise be caught as a damaged part first)
    Path("idx/densekit.json").write_text(json.dumps(manifest))
    assert main(["search", "--index", "idx", "--query", "cats", "--model", "./runs/x"]) == 2
    assert "no encoder content hash" in capsys.readouterr().err


# ---------------------------------------------------------------- 5. index load errors, factory, nprobe
def test_damaged_index_files_are_named(tiny_bert, tmp_path, capsys):
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    corpus = {f"d{i}": {"title": "", "text": f"doc {i}"} for i in range(8)}
    folder = tmp_path / "idx"
    build_index(corpus, enc, folder, show_progress=False)
    manifest = json.loads((folder / "densekit.json").read_text())
    del manifest["parts"]  # an index without recorded parts (older densekit): the loader's own checks name the damage
    (folder / "densekit.json").write_text(json.dumps(manifest))
    faiss_bytes = (folder / "index.faiss").read_bytes()
    for content in (faiss_bytes[: len(faiss_bytes) // 2], b""):
        (folder / "index.faiss").write_bytes(content)
        with pytest.raises(BadIndexError, match=r"idx/index\.faiss: unreadable FAISS index"):
            Index.load(folder)
        assert main(["search", "--index", str(folder), "--query", "x"]) == 2
        assert "index.faiss: unreadable FAISS index" in capsys.readouterr().err
    (folder / "index.faiss").write_bytes(faiss_bytes)
    (folder / "meta.json").write_text('{"dim": 32, "fac')
    with pytest.raises(BadIndexError, match=r"idx/meta\.json: corrupt index file"):
        Index.load(folder)
    assert main(["search", "--index", str(folder), "--query", "x"]) == 2
    assert "meta.json: corrupt index file" in capsys.readouterr().err


def test_bad_factory_and_nprobe_fail_before_encoding(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch):
    build = ["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "idx")]
    no_encoding(monkeypatch)
    assert main(build + ["--factory", "Bogus123"]) == 2
    assert "--factory 'Bogus123' is not a FAISS factory string" in capsys.readouterr().err
    assert main(build + ["--factory", "IVF64,Flat"]) == 2  # 6 documents cannot train 64 lists
    assert "cannot be trained on 6 vectors: IVF64 has 64 lists" in capsys.readouterr().err
    assert main(build + ["--factory", "IVF2,PQ4"]) == 2
    assert "256 centroids per sub-vector" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists() and not (tmp_path / "idx.partial").exists()
    index = Index.build(np.random.default_rng(0).standard_normal((64, 8)).astype("float32"), [str(i) for i in range(64)], "IVF4,Flat")
    for bad in ({"nprobe": 0}, {"ef_search": -1}):
        with pytest.raises(BadIndexError, match=f"{next(iter(bad))} must be >= 1"):
            index.set_params(**bad)


# ---------------------------------------------------------------- 6. fault test: SIGKILL at random points
def _forkserver():
    """Children forked from a server that has densekit imported: a real process to SIGKILL, ~0.1 s to start."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["densekit.eval.cli", "densekit.retriever.train", "densekit.retriever.search", "densekit.reranker.train", "densekit.reranker.pointwise",
                                "accelerate", "peft", "faiss", "transformers.models.bert.modeling_bert",
                                "transformers.models.llama.modeling_llama"])
    warm = ctx.Process(target=os.getpid)  # start the server now, so that timings below are the commands' own
    warm.start()
    warm.join()
    return ctx


def _densekit(argv):
    os._exit(main(argv))


def _run_child(ctx, argv, kill_when=None, delay: float = 0.0) -> bool:
    """Run ``densekit argv`` in a child; SIGKILL it ``delay`` s after ``kill_when()`` first holds. True when
    it was killed (False: it finished first)."""
    proc = ctx.Process(target=_densekit, args=(argv,))
    proc.start()
    if kill_when is not None:
        while proc.is_alive() and not kill_when():
            time.sleep(0.005)
        time.sleep(delay)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return True
    proc.join()
    assert proc.exitcode == 0, argv
    return False


def _progress(out: Path, name: str) -> int:
    """Shards encoded (index build) or steps logged (training) so far."""
    if name == "index":
        return len(list(out.with_name("out.partial").glob("shard-*/vectors-*.npy"))) + 10 * out.exists()
    try:
        return len((out / "train_log.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _fault_data(root: Path) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    corpus = {f"d{i}": {"title": words[i % 12], "text": " ".join(words[(i + j) % 12] for j in range(3 + i % 7))} for i in range(60)}
    queries = {f"q{i}": f"{words[i % 12]} {words[(i + 3) % 12]}" for i in range(12)}
    qrels = {"train": {f"q{i}": {f"d{i}": 1, f"d{i + 12}": 1} for i in range(12)}}
    return write_beir(root / "data", corpus, queries, qrels)


def _user_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "thesis.tex").write_text("x")
    (root / "sub").mkdir()
    (root / "sub" / "notes").write_text("y")
    return root


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tiny_bert, tiny_causal_lm, tmp_path):
    ctx = _forkserver()
    rng = random.Random(11)
    data = _fault_data(tmp_path)
    commands = {
        "index": (["index", "build", "--data", str(data), "--model", str(tiny_bert), "--shard-size", "8",
                   "--batch-size", "4"], []),
        "retriever": (["train", "retriever", "--data", str(data), "--model", str(tiny_bert), "--batch-size", "2",
                       "--epochs", "2", "--checkpoint-every", "3", "--temperature", "0.1"], ["--resume"]),
        "reranker": (["train", "reranker", "--data", str(data), "--model", str(tiny_causal_lm), "--first-stage", "bm25",
                      "--group-size", "3", "--batch-size", "1", "--max-steps", "10", "--checkpoint-every", "3",
                      "--doc-max-tokens", "16"], ["--resume"]),
    }
    for name, (argv, resume) in commands.items():
        reference = tmp_path / f"{name}-ref" / "out"
        assert not _run_child(ctx, argv + ["--out", str(reference)])
        total = 8 if name == "index" else len((reference / "train_log.jsonl").read_text().splitlines())
        for point in range(5):  # kill once progress reaches a random shard/step, a random moment later
            parent = _user_folder(tmp_path / f"{name}-{point}")
            before = snapshot(parent)
            out = parent / "out"
            at, delay = rng.randint(0, total), rng.uniform(0.0, 0.3)
            killed = _run_child(ctx, argv + ["--out", str(out)], lambda: _progress(out, name) >= at, delay)
            left = snapshot(parent)
            assert {k: v for k, v in left.items() if k in before} == before, (name, point)  # nothing outside --out touched
            new_top = {k for k in left if "/" not in k} - {k for k in before if "/" not in k}
            # a killed build also leaves its lock .out.lock (stale: its pid is gone; the next build takes it over)
            assert new_top <= {"out", "out.partial", ".out.lock"} | {k for k in new_top if k.startswith((".out.tmp-", ".out.old-"))}
            if name == "index":
                try:
                    Index.load(out)  # a folder that is there loads ...
                except BadIndexError as err:  # ... or is refused with a clear message
                    assert "no such index folder" in str(err) and killed
                    assert main(argv + ["--out", str(out)]) == 0  # resume from the shards
                got, want = Index.load(out), Index.load(reference)
                assert got.ids == want.ids
                np.testing.assert_allclose(got.reconstruct(got.ids), want.reconstruct(want.ids), atol=1e-6)
            else:
                if (out / "model").exists():  # only ever written complete, at the end of the run
                    _weights(out / "model")
                assert main(argv + ["--out", str(out)] + resume) == 0, (name, point)
                got, want = _weights(out / "model"), _weights(reference / "model")
                assert got.keys() == want.keys()
                for key in got:
                    torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5, msg=f"{name} {point} {key}")
                steps = [json.loads(l)["step"] for l in (out / "train_log.jsonl").read_text().splitlines()]
                assert steps == list(range(1, len(steps) + 1)) and steps, (name, point)
            left = snapshot(parent)
            assert {k: v for k, v in left.items() if k in before} == before
            extra = {k for k in left if "/" not in k} - {k for k in before if "/" not in k} - {"out", "out.partial"}
            if extra == {".out.lock"}:  # killed after the index was whole, before its lock went: a stale lock
                holder = json.loads((parent / ".out.lock").read_text())
                assert killed and name == "index" and not _pid_alive(holder["pid"]), (name, point, holder)
            else:
                assert not extra, (name, point, extra)
