"""Issue 11 reproductions: wrong numbers, argument validation, ids, JSON output, tracebacks.

Each test is a reproduction from the issue that failed on the code before the fix, except the guards
that say so (``--max-queries two``, genuine bugs keep their traceback)."""
import gzip
import json
import math

import pytest
import pytrec_eval

from densekit.eval import metrics as M
from densekit.eval.cli import build_parser, main
from densekit.eval.data import DataError, load_corpus, load_qrels, load_queries, write_beir
from densekit.eval.metrics import evaluate
from densekit.eval.runfile import read_run, write_run


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what other JSON parsers do)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def exits_2(argv, capsys) -> str:
    """``main(argv)`` stops with exit status 2 (argparse error or densekit error); return stderr."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert code == 2, argv
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


@pytest.fixture
def nohit_beir(tmp_path):
    """A BEIR folder where q3 matches nothing (BM25 returns no hits for it) and q2 has a grade-0 judgement."""
    corpus = {"d1": {"title": "Cats", "text": "cats purr"}, "d2": {"title": "", "text": "dogs bark loudly"},
              "d3": {"title": "", "text": "fish swim in the sea"}, "d4": {"title": "", "text": "cats and dogs"}}
    queries = {"q1": "cats", "q2": "fish sea", "q3": "xylophone", "q4": "dogs"}
    qrels = {"test": {"q1": {"d1": 2, "d4": 1}, "q2": {"d3": 1, "d1": 0}, "q3": {"d2": 1}, "q4": {"d2": 1, "d4": 1}}}
    return write_beir(tmp_path / "nohit", corpus, queries, qrels)


# ---------------------------------------------------------------- item 4: relevance level 0

def test_relevance_level_zero_is_refused(tiny_beir, capsys):
    err = exits_2(["eval", "--data", str(tiny_beir), "--relevance-level", "0"], capsys)
    assert "--relevance-level" in err and "positive integer" in err
    run, qrels = {"q1": {"d1": 1.0, "d2": 0.5}}, {"q1": {"d1": 1, "d2": 0}}
    for call in (lambda: evaluate(run, qrels, relevance_level=0), lambda: M.compute(qrels, run, ["recall@10"], 0),
                 lambda: M.roc_auc(qrels, run, 10, 0)):
        with pytest.raises(ValueError, match="relevance level must be an integer >= 1"):
            call()


# ---------------------------------------------------------------- item 8: numeric flags and ignored flags

@pytest.mark.parametrize("argv, flag", [
    (["eval", "--max-queries", "-5"], "--max-queries"),
    (["eval", "--max-queries", "0"], "--max-queries"),
    (["eval", "--max-queries", "two"], "--max-queries"),
    (["eval", "--reranker", "x", "--rerank-top-k", "-2"], "--rerank-top-k"),
    (["eval", "--top-k", "0"], "--top-k"),
    (["eval", "--retriever", "dense", "--batch-size", "0"], "--batch-size"),
    (["eval", "--retriever", "dense", "--nprobe", "0"], "--nprobe"),
    (["eval", "--retriever", "dense", "--ef-search", "-1"], "--ef-search"),
    (["eval", "--relevance-level", "-1"], "--relevance-level"),
    (["search", "--index", "i", "--query", "q", "--k", "0"], "--k"),
    (["search", "--index", "i", "--query", "q", "--k", "-2"], "--k"),
    (["search", "--index", "i", "--query", "q", "--nprobe", "0"], "--nprobe"),
    (["index", "build", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["index", "build", "--data", "d", "--out", "o", "--shard-size", "0"], "--shard-size"),
    (["train", "retriever", "--data", "d", "--out", "o", "--temperature", "0"], "--temperature"),
    (["train", "retriever", "--data", "d", "--out", "o", "--temperature", "nan"], "--temperature"),
    (["train", "retriever", "--data", "d", "--out", "o", "--lr", "-0.001"], "--lr"),
    (["train", "retriever", "--data", "d", "--out", "o", "--warmup-ratio", "1.5"], "--warmup-ratio"),
    (["train", "retriever", "--data", "d", "--out", "o", "--max-steps", "0"], "--max-steps"),
    (["train", "retriever", "--data", "d", "--out", "o", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "retriever", "--data", "d", "--out", "o", "--n-negatives", "-1"], "--n-negatives"),
    (["train", "reranker", "--data", "d", "--out", "o", "--group-size", "1"], "--group-size"),
    (["train", "reranker", "--data", "d", "--out", "o", "--max-queries", "0"], "--max-queries"),
    (["train", "reranker", "--kind", "blockrank", "--data", "d", "--out", "o", "--score-layer", "-1"], "--score-layer"),
    (["mine", "--data", "d", "--out", "o", "--rank-from", "-1"], "--rank-from"),
    (["mine", "--data", "d", "--out", "o", "--index", "i", "--max-ratio", "0"], "--max-ratio"),
])
def test_numeric_flags_are_validated_at_parse_time(argv, flag, capsys):
    if argv[0] == "eval":
        argv = argv[:1] + ["--data", "d"] + argv[1:]
    err = exits_2(argv, capsys)
    assert f"argument {flag}" in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "d", "--retriever", "bm25", "--index", "idx"], "--index is ignored with --retriever bm25"),
    (["eval", "--data", "d", "--model", "m"], "--model is ignored with --retriever bm25"),
    (["eval", "--data", "d", "--retriever", "bm25", "--factory", "HNSW32", "--nprobe", "4"], "--factory, --nprobe are ignored"),
    (["eval", "--data", "d", "--rerank-top-k", "5"], "--rerank-top-k is ignored without --reranker"),
    (["eval", "--data", "d", "--rerank-mode", "decode"], "--rerank-mode is ignored without --reranker"),
    (["eval", "--data", "d", "--retriever", "dense", "--model", "a", "b", "--index", "i"], "--index serves one model"),
    (["mine", "--data", "d", "--out", "o", "--max-ratio", "0.95"], "--max-ratio is ignored with BM25 mining"),
    (["mine", "--data", "d", "--out", "o", "--index", "i", "--rank-from", "30", "--rank-to", "30"], "--rank-from 30 must be below --rank-to 30"),
    (["train", "retriever", "--data", "d", "--out", "o", "--loss", "mw", "--symmetric"], "--symmetric is ignored with --loss mw"),
    (["train", "reranker", "--data", "d", "--out", "o", "--first-stage", "bm25", "--index", "i"], "--index is ignored"),
])
def test_ignored_flag_combinations_are_refused(argv, message, capsys):
    err = exits_2(argv, capsys)
    assert "densekit: error: " + message in err


def test_version_and_defaults_in_help(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"densekit {version('densekit')}"
    parser = build_parser()
    for argv, shown in ((["eval", "--help"], "(default: 100)"), (["search", "--help"], "(default: 10)"),
                        (["train", "retriever", "--help"], "(default: 16)"), (["mine", "--help"], "(default: 50)")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert shown in capsys.readouterr().out.replace("\n", " ")


def test_eval_passes_ef_search_and_nprobe_to_the_index(tiny_beir, tiny_bert, tmp_path, capsys, monkeypatch):
    from densekit.retriever.index import Index

    calls = []
    original = Index.set_params

    def spy(self, nprobe=None, ef_search=None):
        calls.append((self.factory, nprobe, ef_search))
        return original(self, nprobe=nprobe, ef_search=ef_search)

    monkeypatch.setattr(Index, "set_params", spy)
    base = ["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", str(tiny_bert), "--top-k", "5", "--json"]
    assert main(base + ["--factory", "HNSW8", "--ef-search", "7"]) == 0
    assert calls[-1] == ("HNSW8", None, 7)
    capsys.readouterr()
    # --nprobe on a Flat index is refused before the corpus is encoded
    err = exits_2(base + ["--nprobe", "4"], capsys)
    assert "nprobe applies to IVF indexes" in err


# ---------------------------------------------------------------- eval --run

def test_eval_run_scores_a_saved_run(nohit_beir, tmp_path, capsys):
    path = tmp_path / "bm25.trec"
    assert main(["eval", "--data", str(nohit_beir), "--save-run", str(path), "--json"]) == 0
    first = strict_json(capsys.readouterr().out)
    assert main(["eval", "--data", str(nohit_beir), "--run", str(path), "--json"]) == 0
    again = strict_json(capsys.readouterr().out)
    assert again["retriever"] == "run" and again["run"] == str(path) and again["model"] is None
    for name in ("ndcg@10", "mrr@10", "recall@100", "map@100", "p@10", "num_queries"):
        assert again[name] == first[name], name
    # a run for other queries than the split's: a clear error, not a row of zeros
    other = tmp_path / "other.trec"
    other.write_text("zz Q0 d1 1 1.0 t\n")
    assert "none of its 1 queries is an evaluated query" in exits_2(
        ["eval", "--data", str(nohit_beir), "--run", str(other)], capsys)


@pytest.mark.parametrize("extra", [["--retriever", "bm25"], ["--retriever", "dense"], ["--model", "m"], ["--index", "i"]])
def test_eval_run_conflicts_with_first_stage_flags(nohit_beir, tmp_path, extra, capsys):
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 d1 1 1.0 t\n")
    err = exits_2(["eval", "--data", str(nohit_beir), "--run", str(path)] + extra, capsys)
    assert "densekit: error: --" in err and "replaces the first stage" in err


class StubReranker:
    """Scores documents by the reverse of their id; records what it was asked to score."""

    kind = "stub"
    modes = ("score",)

    def __init__(self):
        self.seen = []

    def rerank(self, run, corpus, queries, top_k=20, batch_size=8, show_progress=True, mode=None):
        self.seen.append((run, mode))
        return {qid: {doc: -float(i) for i, doc in enumerate(sorted(docs))} for qid, docs in run.items()}


def stub_kind(monkeypatch, cls=StubReranker, modes=("score",)):
    """Register ``cls`` (with ``modes``) as the reranker kind ``stub`` for one test; returns its one instance."""
    from densekit.reranker import kinds

    instance = cls()
    kind = type("Stub", (cls,), {"kind": "stub", "modes": modes, "from_pretrained": classmethod(lambda c, target: instance)})
    monkeypatch.setitem(kinds.KINDS, "stub", kinds.Kind("stub", modes=modes, cls=kind))
    instance.__class__ = kind
    return instance


def test_eval_run_rerank_skips_docs_absent_from_corpus(nohit_beir, tmp_path, capsys, monkeypatch):
    stub = stub_kind(monkeypatch)
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 d1 1 3.0 t\nq1 Q0 ghost 2 2.0 t\nq1 Q0 d4 3 1.0 t\nq2 Q0 d3 1 1.0 t\nq7 Q0 d3 1 1.0 t\n")
    assert main(["eval", "--data", str(nohit_beir), "--run", str(path), "--reranker", "stub:x", "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 run doc id(s) absent from the corpus" in captured.err
    assert "1 run query skipped" in captured.err  # q7 has no qrels in the split
    assert "2 evaluated queries are absent" in captured.err  # q3, q4 count 0
    (run, _), = stub.seen
    assert run == {"q1": {"d1": 3.0, "d4": 1.0}, "q2": {"d3": 1.0}, "q3": {}, "q4": {}}
    row = strict_json(captured.out)
    assert row["reranker"] == "stub:x" and row["rerank_mode"] is None and row["num_queries"] == 4


# ---------------------------------------------------------------- item 6: ids

def test_write_run_refuses_whitespace_and_empty_ids(tmp_path):
    for run, bad in (({"q1": {"doc 1": 1.0}}, "'doc 1'"), ({"q 1": {"d1": 1.0}}, "'q 1'"), ({"q1": {"": 1.0}}, "''"),
                     ({"q1": {"d\t1": 1.0}}, "'d\\t1'")):
        with pytest.raises(DataError, match="cannot write .*" + bad.replace("\\", "\\\\")):
            write_run(tmp_path / "run.trec", run)
        assert not (tmp_path / "run.trec").exists()
    write_run(tmp_path / "run.trec", {"q1": {"d1": 1.0}}, tag="my tag")
    assert read_run(tmp_path / "run.trec") == {"q1": {"d1": 1.0}}
    assert (tmp_path / "run.trec").read_text() == "q1 Q0 d1 1 1.0 my_tag\n"


def test_beir_qrels_split_by_tab_only(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\tdoc 1\t1\nq1\td2\t0\n")
    assert load_qrels(path) == {"q1": {"doc 1": 1, "d2": 0}}
    path.write_text("q1 0 d1 1\nq1 0 d2 2\n")  # TREC qrels: whitespace, 4 columns
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 2}}
    path.write_text("q1\t0\td1\t1\n")  # TREC qrels written with tabs
    assert load_qrels(path) == {"q1": {"d1": 1}}
    path.write_text("q1\td1\t1\nq2 d2 1\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: no tab"):
        load_qrels(path)


def test_doc_id_with_space_cannot_reach_a_run_file(tmp_path, capsys):
    folder = write_beir(tmp_path / "sp", {"doc 1": {"title": "", "text": "cats"}, "d2": {"title": "", "text": "dogs"}},
                        {"q1": "cats"}, {"test": {"q1": {"doc 1": 1}}})
    assert load_qrels(folder / "qrels" / "test.tsv") == {"q1": {"doc 1": 1}}
    err = exits_2(["eval", "--data", str(folder), "--save-run", str(tmp_path / "r.trec")], capsys)
    assert "'doc 1'" in err and not (tmp_path / "r.trec").exists()


@pytest.mark.parametrize("value", ["null", '""', "true", "[1]"])
def test_null_or_empty_id_is_refused_with_file_and_line(tmp_path, value):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "a"}\n{"_id": %s, "text": "b"}\n' % value)
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: _id must be a non-empty string or integer"):
        load_corpus(path)
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": %s, "text": "b"}\n' % value)
    with pytest.raises(DataError, match=r"queries\.jsonl:1: _id"):
        load_queries(path)
    path.write_text('{"_id": 7, "text": "b"}\n')
    assert load_queries(path) == {"7": "b"}


# ---------------------------------------------------------------- item 9: JSON output

def test_json_fields_are_structured(nohit_beir, capsys, monkeypatch):
    stub_kind(monkeypatch, modes=("attention", "decode"))
    base = ["eval", "--data", str(nohit_beir), "--json", "--reranker", "stub:HuggingFaceTB/SmolLM2-135M-Instruct",
            "--rerank-top-k", "2"]
    rows = []
    for mode in ("attention", "decode"):
        assert main(base + ["--rerank-mode", mode]) == 0
        rows.append(strict_json(capsys.readouterr().out))
    for row, mode in zip(rows, ("attention", "decode")):
        assert row["retriever"] == "bm25" and row["model"] is None and row["fuse"] is None
        assert row["reranker"] == "stub:HuggingFaceTB/SmolLM2-135M-Instruct" and row["rerank_mode"] == mode
        assert row["rerank_top_k"] == 2
    # BM25 + a reranker without modes: the reranker is named (it had no field at all)
    stub_kind(monkeypatch, modes=())
    assert main(["eval", "--data", str(nohit_beir), "--json", "--reranker", "stub:my-rr", "--rerank-top-k", "3"]) == 0
    row = strict_json(capsys.readouterr().out)
    assert (row["retriever"], row["model"], row["reranker"], row["rerank_mode"], row["rerank_top_k"]) == \
        ("bm25", None, "stub:my-rr", None, 3)


def test_undefined_auc_is_null_not_nan(tmp_path, capsys):
    folder = write_beir(tmp_path / "one", {"d1": {"title": "", "text": "cats"}, "d2": {"title": "", "text": "dogs"}},
                        {"q1": "cats"}, {"test": {"q1": {"d1": 1}}})
    assert main(["eval", "--data", str(folder), "--json"]) == 0  # the only hit is relevant: no negatives, AUC undefined
    out = capsys.readouterr().out
    assert "NaN" not in out and strict_json(out)["auc@100"] is None
    assert main(["eval", "--data", str(folder)]) == 0
    assert "n/a" in capsys.readouterr().out


# ---------------------------------------------------------------- item 10: queries without hits

def test_printed_mean_counts_queries_without_hits_like_pytrec_eval(nohit_beir, tmp_path, capsys):
    from densekit.retriever.bm25 import bm25_search
    from densekit.eval.data import load_dataset

    path = tmp_path / "r.trec"
    assert main(["eval", "--data", str(nohit_beir), "--json", "--save-run", str(path)]) == 0
    captured = capsys.readouterr()
    printed = strict_json(captured.out)
    # "say so": the user is told that the file lacks q3 and how trec_eval gets the printed figure
    assert "1 evaluated query has no hits and no line in" in captured.err and "trec_eval -c" in captured.err
    ds = load_dataset(nohit_beir)
    run = bm25_search(ds.corpus, ds.queries, 100)
    assert run["q3"] == {} and "q3" not in read_run(path)  # no hits: no line in the run file
    oracle = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10"}).evaluate(run)
    assert set(oracle) == set(ds.queries)  # pytrec_eval counts the empty query (as 0)
    mean = sum(v["ndcg_cut_10"] for v in oracle.values()) / len(oracle)
    assert math.isclose(printed["ndcg@10"], mean, abs_tol=1e-12) and printed["num_queries"] == 4
    # trec_eval without -c reads only the file's queries and would average higher
    without_c = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10"}).evaluate(read_run(path))
    assert len(without_c) == 3


# ---------------------------------------------------------------- tracebacks -> densekit: error

def test_truncated_or_non_gzip_corpus_is_a_clean_error(tiny_beir, capsys):
    data = (tiny_beir / "corpus.jsonl").read_bytes()
    (tiny_beir / "corpus.jsonl").unlink()
    gz = tiny_beir / "corpus.jsonl.gz"
    for content in (gzip.compress(data * 20)[:80], data):
        gz.write_bytes(content)
        err = exits_2(["eval", "--data", str(tiny_beir)], capsys)
        assert f"{gz}: not a valid gzip file or truncated" in err


def test_mistyped_model_path_is_a_clean_error(tiny_beir, tmp_path, capsys, monkeypatch):
    (tmp_path / "runs" / "mw" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    err = exits_2(["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", "runs/mw/modle"], capsys)
    assert "'runs/mw/modle': no such folder" in err and "did you mean 'runs/mw/model'" in err
    err = exits_2(["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", "runs/mw/model"], capsys)
    assert "densekit: error:" in err  # an empty folder: transformers' OSError/ValueError, no traceback


def test_save_run_to_a_folder_fails_before_any_work(tiny_beir, tmp_path, capsys, monkeypatch):
    from densekit.retriever import first_stage as stage

    monkeypatch.setattr(stage, "first_stage", lambda *a, **k: pytest.fail("work started"))
    assert "is a folder" in exits_2(["eval", "--data", str(tiny_beir), "--save-run", str(tmp_path)], capsys)
    assert "is a folder" in exits_2(["eval", "--data", str(tiny_beir), "--run", str(tmp_path)], capsys)


def test_main_keeps_tracebacks_of_genuine_bugs(tiny_beir, monkeypatch):
    from densekit.retriever import first_stage as stage

    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(stage, "first_stage", bug)
    with pytest.raises(TypeError, match="a bug"):
        main(["eval", "--data", str(tiny_beir)])


# ---------------------------------------------------------------- finite checks: metrics refuse NaN scores

def test_metrics_refuse_nan_scores(nohit_beir, capsys, monkeypatch):
    """A NaN score (a diverged reranker) ranked d1 first and printed nDCG 1.0, AUC 1.0, exit 0."""
    run, qrels = {"q1": {"d1": float("nan"), "d2": 1.0}}, {"q1": {"d1": 1, "d2": 0}}
    for call in (lambda: evaluate(run, qrels, auc_k=10), lambda: M.compute(qrels, run, ["ndcg@10"]),
                 lambda: M.roc_auc(qrels, run, 10)):
        with pytest.raises(ValueError, match="score of doc 'd1' for query 'q1' is NaN"):
            call()
    assert M.compute(qrels, {"q9": {"d1": float("nan")}, "q1": {"d2": 1.0}}, ["ndcg@10"]) == {"q1": {"ndcg@10": 0.0}}

    class NaNReranker(StubReranker):
        def rerank(self, run, *args, **kwargs):
            return {qid: {doc: float("nan") for doc in docs} for qid, docs in run.items()}

    stub_kind(monkeypatch, NaNReranker, modes=())
    err = exits_2(["eval", "--data", str(nohit_beir), "--json", "--reranker", "stub:x"], capsys)
    assert "densekit: error: score of doc" in err and "is NaN" in err


# ---------------------------------------------------------------- item 7: reranker folder kinds, through the CLI

def test_eval_reranker_refuses_an_encoder_or_a_folder_of_another_kind(tiny_beir, tiny_bert, tiny_causal_lm, tmp_path, capsys):
    """`--reranker <an encoder folder>` reranked with a random head, exit 0; `blockrank:<a pointwise folder>`
    silently ran the pointwise reranker; `blockrank:<an encoder folder>` was a traceback."""
    from densekit.reranker.pointwise import LLMReranker

    base = ["eval", "--data", str(tiny_beir), "--rerank-top-k", "3", "--json"]
    for spec in (str(tiny_bert), f"blockrank:{tiny_bert}"):
        err = exits_2(base + ["--reranker", spec], capsys)
        assert "densekit: error:" in err and "not a causal LM" in err, spec
    LLMReranker.from_pretrained(str(tiny_causal_lm)).save(tmp_path / "pw")
    err = exits_2(base + ["--reranker", f"blockrank:{tmp_path / 'pw'}"], capsys)
    assert "holds a 'pointwise' reranker, not 'blockrank'" in err
