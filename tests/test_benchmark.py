"""``densekit benchmark``: each cell equals `densekit eval` + `densekit compare` run by hand; a killed or changed
benchmark re-runs only what it must; held-out qrels choose nothing; bad suites are refused before any model loads."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from densekit.eval.cli import main
from densekit.eval.data import load_dataset, write_beir


@pytest.fixture
def two_datasets(tiny_beir, tmp_path):
    """``a`` (tune: test + train) and ``b`` (held out: test + a train split it must never tune on)."""
    ds_test, ds_train = load_dataset(tiny_beir, "test"), load_dataset(tiny_beir, "train")
    queries = {**ds_test.queries, **ds_train.queries}
    b = write_beir(tmp_path / "b", ds_test.corpus, queries,
                   {"test": {"q1": {"d6": 1}, "q2": {"d5": 2}, "q3": {"d4": 1}}, "train": {"q1": {"d1": 1}}})
    return tiny_beir, b


def write_suite(path: Path, a, b, bert, hybrid_norm="z") -> Path:
    path.write_text(f'''name = "tiny"
baseline = "bm25"

[[dataset]]
name = "a"
data = "{a}"
role = "tune"

[[dataset]]
name = "b"
data = "{b}"
role = "heldout"

[[system]]
name = "bm25"

[[system]]
name = "dense"
first_stage = "dense:{bert}"

[[system]]
name = "hybrid"
first_stage = "hybrid:{bert}"
hybrid_weight = {'"auto"' if hybrid_norm != "rrf" else '"x"'}
hybrid_norm = "{hybrid_norm}"
''')
    return path


def bench(argv, capsys) -> tuple[int, str, str]:
    code = main(["benchmark", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cells_equal_eval_and_compare_by_hand(two_datasets, tiny_bert, tmp_path, capsys):
    a, b = two_datasets
    suite, out = write_suite(tmp_path / "suite.toml", a, b, tiny_bert), tmp_path / "out"
    code, stdout, err = bench([suite, "--out", out], capsys)
    assert code == 0, err
    table = json.loads((out / "table.json").read_text())
    assert "| bm25 |" in stdout and (out / "table.tex").exists() and (out / "heatmap.png").exists()
    # every corpus encoded once per model: one index per dataset, shared by dense and hybrid
    names = sorted(p.name.rsplit("--", 1)[0] for p in (out / "indexes").iterdir())
    assert names == sorted(f"{Path(n).name}--{str(tiny_bert).strip('/').replace('/', '-')}" for n in (a, b))
    hybrid_b = json.loads((out / "cells" / "b" / "hybrid" / "cell.json").read_text())
    weight_b = hybrid_b["pooled"]["hybrid"]
    for name, data in (("a", a), ("b", b)):
        for system, flags in (("bm25", []), ("dense", ["--retriever", "dense", "--model", str(tiny_bert)]),
                              ("hybrid", ["--retriever", "hybrid", "--model", str(tiny_bert), "--hybrid-weight",
                                          "auto" if name == "a" else str(weight_b)])):
            assert main(["eval", "--data", str(data), "--json", *flags,
                         "--save-run", str(tmp_path / f"{name}-{system}.trec"), "--overwrite"]) == 0
            row = json.loads(capsys.readouterr().out)
            assert table["cells"][f"{system}|{name}"]["mean"] == pytest.approx(row["ndcg@10"], abs=1e-12), (name, system)
        assert main(["compare", f"bm25={tmp_path / f'{name}-bm25.trec'}", f"dense={tmp_path / f'{name}-dense.trec'}",
                     f"hybrid={tmp_path / f'{name}-hybrid.trec'}", "--data", str(data), "--metrics", "ndcg@10",
                     "--json", str(tmp_path / f"{name}.json"), "--overwrite"]) == 0
        capsys.readouterr()
        by_hand = json.loads((tmp_path / f"{name}.json").read_text())["systems"]
        for system in ("dense", "hybrid"):
            cell, test = table["cells"][f"{system}|{name}"], by_hand[system]["tests"]["ndcg@10"]
            assert (cell["p_ttest"], cell["p_random"], cell["win"], cell["loss"]) == \
                pytest.approx((test["p_ttest"], test["p_random"], test["win"], test["loss"]), nan_ok=True)


def test_heldout_settings_come_from_tune_data_and_heldout_qrels_choose_nothing(two_datasets, tiny_bert, tmp_path,
                                                                             capsys, monkeypatch):
    from densekit.eval import data

    a, b = two_datasets
    read = []
    real = data.load_qrels
    monkeypatch.setattr(data, "load_qrels", lambda path: read.append(Path(path)) or real(path))
    code, _, err = bench([write_suite(tmp_path / "suite.toml", a, b, tiny_bert), "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert Path(b) / "qrels" / "train.tsv" not in read  # the held-out dataset's other split is never read
    assert Path(a) / "qrels" / "train.tsv" in read  # the tune dataset's tuning split is
    cell_a = json.loads((tmp_path / "out" / "cells" / "a" / "hybrid" / "cell.json").read_text())
    cell_b = json.loads((tmp_path / "out" / "cells" / "b" / "hybrid" / "cell.json").read_text())
    curve = dict((w, v) for w, v in cell_a["result"]["system"]["hybrid"]["curve"])
    best = max(curve.values())
    assert cell_b["pooled"] == {"from": ["a:train"], "hybrid": min(w for w, v in curve.items() if v == best)}
    assert cell_b["result"]["system"]["hybrid"]["weight"] == cell_b["pooled"]["hybrid"]
    assert cell_b["result"]["system"]["hybrid"]["tuned_on"] is None  # nothing was tuned on b


def test_resume_reruns_only_unfinished_or_changed_cells(two_datasets, tiny_bert, tmp_path, capsys):
    a, b = two_datasets
    suite, out = write_suite(tmp_path / "suite.toml", a, b, tiny_bert), tmp_path / "out"
    assert bench([suite, "--out", out], capsys)[0] == 0
    first = (out / "table.json").read_text()
    (out / "cells" / "b" / "dense" / "cell.json").unlink()  # as if killed before this cell finished
    code, _, err = bench([suite, "--out", out], capsys)
    assert code == 0 and err.count("(cached)") == 5 and "b x dense: finished" in err
    assert (out / "table.json").read_text() == first
    write_suite(suite, a, b, tiny_bert, hybrid_norm="minmax")  # one system changed: only its cells run again
    code, _, err = bench([suite, "--out", out], capsys)
    assert code == 0 and err.count("(cached)") == 4 and err.count("definition changed") == 2


def test_kill_9_mid_run_then_resume_gives_the_same_table(two_datasets, tiny_bert, tmp_path, capsys):
    a, b = two_datasets
    suite, out = write_suite(tmp_path / "suite.toml", a, b, tiny_bert), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "densekit.eval.cli", "benchmark", str(suite), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "cells").glob("*/*/cell.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "cells").glob("*/*/cell.json")))
    assert 0 < finished < 6
    code, _, err = bench([suite, "--out", out], capsys)
    assert code == 0 and err.count("(cached)") == finished
    killed = (out / "table.json").read_text()
    shutil.rmtree(out)
    assert bench([suite, "--out", out], capsys)[0] == 0
    assert json.loads((out / "table.json").read_text())["cells"] == json.loads(killed)["cells"]


@pytest.mark.parametrize("change, message", [
    (("name = \"a\"\ndata", "name = \"b\"\ndata"), "two datasets are named 'b'"),
    (('name = "dense"', 'name = "bm25"'), "two systems are named 'bm25'"),
    (('role = "tune"', 'role = "train"'), "role 'train'"),
    (('role = "tune"', 'role = "heldout"'), "no dataset has role tune"),
    (('name = "a"\ndata = "', 'name = "a"\ndata = "/nonexistent'), "not found"),
    (('[[system]]\nname = "bm25"', '[[system]]\nname = "bm25"\nreranker = "bogus:x"'), "unknown kind 'bogus'"),
    (('baseline = "bm25"', 'baseline = "nosuch"'), "baseline 'nosuch' is not one of the systems"),
    (('name = "a"\ndata', 'name = "a"\nsplit = "dev"\ndata'), "unknown split 'dev'"),
    (('[[system]]\nname = "bm25"', '[[system]]\nname = "bm25"\nfuse = 0.5'), "fuse and depth serve a reranker"),
    (('hybrid_norm = "z"', 'hybrid_norm = "rrf"'), "rrf (reciprocal-rank fusion) has no weight"),
    (('[[system]]\nname = "bm25"', '[[system]]\nname = "bm25"\nhybrid_weight = 0.5'), "serve a hybrid:<model>"),
    (('role = "tune"', 'role = "tune"\nruns = { dense = "x.trec" }'), "saved runs stand for the bm25 first stage only"),
])
def test_bad_suites_are_refused_before_any_model_loads(two_datasets, tiny_bert, tmp_path, capsys, monkeypatch,
                                                       change, message):
    import transformers

    def fail(*args, **kwargs):
        raise AssertionError("a model loaded before the suite was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fail)
    a, b = two_datasets
    suite = write_suite(tmp_path / "suite.toml", a, b, tiny_bert)
    suite.write_text(suite.read_text().replace(*change, 1))
    code, _, err = bench([suite, "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_another_suite_is_refused(two_datasets, tiny_bert, tmp_path, capsys):
    a, b = two_datasets
    suite, out = write_suite(tmp_path / "suite.toml", a, b, tiny_bert), tmp_path / "out"
    out.mkdir()
    (out / "densekit.json").write_text(json.dumps({"kind": "benchmark", "format": 1, "suite": "other"}))
    code, _, err = bench([suite, "--out", out], capsys)
    assert code == 2 and "holds the benchmark of suite 'other', not 'tiny'" in err


def test_two_processes_make_the_same_table_as_one(two_datasets, tiny_bert, tmp_path, capsys):
    """torchrun --nproc_per_node 2: the cells (and indexes) are dealt out over the two processes, rank 0 waits
    for the other's cells and writes the table; it equals the one-process table."""
    a, b = two_datasets
    suite = write_suite(tmp_path / "suite.toml", a, b, tiny_bert)
    assert bench([suite, "--out", tmp_path / "one"], capsys)[0] == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "densekit.eval.cli", "benchmark", str(suite), "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = (json.loads((tmp_path / n / "table.json").read_text()) for n in ("one", "two"))
    assert two == one
    processes = [json.loads(p.read_text())["process"] for p in (tmp_path / "two" / "cells").glob("*/*/cell.json")]
    assert sorted(processes) == ["0/2"] * 3 + ["1/2"] * 3  # every cell ran once, half on each process


def test_a_heldout_split_is_never_a_tuning_source_and_unjudged_splits_are_refused(two_datasets, tiny_bert, tmp_path,
                                                                                capsys):
    a, b = two_datasets
    suite = write_suite(tmp_path / "suite.toml", a, b, tiny_bert)
    # dataset "a" (tune, test) tunes on its train split; a held-out dataset on that same split is refused
    suite.write_text(suite.read_text().replace('name = "b"\ndata = "' + str(b) + '"',
                                               'name = "b"\ndata = "' + str(a) + '"\nsplit = "train"'))
    code, _, err = bench([suite, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "would choose its weights on split 'train', which is the held-out dataset 'b'" in err
    (Path(a) / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nnobody\td1\t1\n")
    write_suite(suite, a, b, tiny_bert)
    suite.write_text(suite.read_text().replace('name = "b"\ndata', 'name = "b"\nsplit = "test"\ndata')
                     .replace('name = "a"\ndata', 'name = "a"\nsplit = "dev"\ndata'))
    code, _, err = bench([suite, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "no queries for split 'dev'" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_beir_dataset_is_downloaded_into_the_data_folder(tmp_path, capsys, monkeypatch, serve_zip):
    """Online, a suite may name an official BEIR dataset that is not on disk: it is fetched (md5-checked) from the
    BEIR address, here a server on the loopback address serving a small zip; offline the error says so."""
    from densekit.eval import data

    source = write_beir(tmp_path / "src", {"d1": {"title": "", "text": "cats purr"}, "d2": {"title": "", "text": "dogs"}},
                        {"q1": "cats"}, {"test": {"q1": {"d1": 1}}})
    url, md5 = serve_zip(source, "tinybeir")
    monkeypatch.setattr(data, "BEIR_URL", url.replace("tinybeir.zip", "{name}.zip"))
    monkeypatch.setitem(data.BEIR_MD5, "tinybeir", md5)
    monkeypatch.setenv("DENSEKIT_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    suite = tmp_path / "suite.toml"
    suite.write_text('[[dataset]]\nname = "tinybeir"\n\n[[system]]\nname = "bm25"\n\n[[system]]\nname = "bm25-again"\n')
    monkeypatch.setenv("DENSEKIT_OFFLINE", "1")
    code, _, err = bench([suite, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "offline" in err and not (tmp_path / "data" / "tinybeir").exists()
    monkeypatch.delenv("DENSEKIT_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, out, err = bench([suite, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert (tmp_path / "data" / "tinybeir" / "corpus.jsonl").exists() and "| bm25 |" in out


def test_a_saved_bm25_run_stands_for_the_bm25_first_stage(two_datasets, tiny_bert, tmp_path, capsys):
    """Like DL19's shipped Pyserini run: a dataset's runs.bm25 replaces BM25 for every system whose first stage is
    bm25; its content is part of the cell key (a regenerated file re-runs the cells)."""
    a, b = two_datasets
    (Path(a) / "bm25.trec").write_text("q1 Q0 d6 1 2.0 x\nq1 Q0 d1 2 1.0 x\nq2 Q0 d5 1 1.0 x\n")
    suite = write_suite(tmp_path / "suite.toml", a, b, tiny_bert)
    suite.write_text(suite.read_text().replace('role = "tune"', 'role = "tune"\nruns = { bm25 = "bm25.trec" }', 1))
    out = tmp_path / "out"
    code, _, err = bench([suite, "--out", out], capsys)
    assert code == 0, err
    cell = json.loads((out / "cells" / "a" / "bm25" / "cell.json").read_text())
    assert cell["result"]["system"]["retriever"] == "run" and cell["result"]["system"]["run"].endswith("bm25.trec")
    (Path(a) / "bm25.trec").write_text("q1 Q0 d1 1 2.0 x\nq2 Q0 d5 1 1.0 x\n")
    code, _, err = bench([suite, "--out", out], capsys)
    assert code == 0 and "a x bm25: its definition changed" in err and "b x bm25: done before" in err


class _LengthFirst:
    """A test reranker kind: longer documents first."""

    kind = "length-first-test"

    @classmethod
    def from_pretrained(cls, target):
        return cls()

    def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
        return [[float(len(d)) for d in docs] for _, docs in groups]

    def rerank(self, *args, **kwargs):
        from densekit.reranker.base import rerank

        return rerank(self, *args, **kwargs)


def test_a_reranking_row_is_compared_with_its_own_first_stage(two_datasets, tiny_bert, tmp_path, capsys, monkeypatch):
    """Guards the README's claim "which rerankers gain over their first stage" being read against BM25 (the
    baseline) for a reranker over the dense first stage: each reranking row names the row of its own first stage,
    and the held-out difference is the difference of those two rows' cells."""
    from densekit.reranker import kinds

    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    kinds.register(_LengthFirst)
    a, b = two_datasets
    suite = write_suite(tmp_path / "suite.toml", a, b, tiny_bert)
    suite.write_text(suite.read_text() + f'''
[[system]]
name = "dense+len"
first_stage = "dense:{tiny_bert}"
reranker = "length-first-test:x"
depth = 3

[[system]]
name = "bm25+len"
reranker = "length-first-test:x"
depth = 3
''')
    code, _, err = bench([suite, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    rows, cells = table["rows"], table["cells"]
    assert rows["dense+len"]["first_stage"] == "dense" and rows["bm25+len"]["first_stage"] == "bm25"
    assert "first_stage" not in rows["hybrid"] and "heldout_vs_first_stage" not in rows["dense"]
    for name, first in (("dense+len", "dense"), ("bm25+len", "bm25")):
        versus = rows[name]["heldout_vs_first_stage"]
        expected = cells[f"{name}|b"]["mean"] - cells[f"{first}|b"]["mean"]
        assert versus["by_dataset"]["b"] == pytest.approx(expected, abs=1e-12)
        assert versus["pooled"]["diff"] == pytest.approx(expected, abs=1e-12)  # one held-out dataset: the same queries
        assert versus["pooled"]["queries"] == cells[f"{name}|b"]["queries"]
