import pytest

from densekit.core.runs import normalise
from densekit.eval.fusion import fuse, tune_weight

FIRST = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}, "q2": {"x": 10.0, "y": 10.0}}
RERANKED = {"q1": {"a": -3.0, "b": -1.0, "c": -2.0, "d": -9.0}, "q2": {"x": 1.0, "y": 2.0}}


def test_z_score_fusion_equals_hand_computation():
    # q1 top 3: first (3, 2, 1) -> z = (1.2247, 0, -1.2247); reranker (-3, -1, -2) -> z = (-1.2247, 1.2247, 0)
    # final: a = 0.75 z - 0.25 z = 0.61, b = 0.25 z = 0.31, c = -0.75 z = -0.92 -> a, b, c, then d (not reranked)
    out = fuse(FIRST, RERANKED, 0.25, top_k=3)
    assert out["q1"] == {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    # w = 0.75: a = 0.25 z - 0.75 z = -0.61, b = 0.75 z = 0.92, c = -0.25 z = -0.31 -> b, c, a
    out = fuse(FIRST, RERANKED, 0.75, top_k=3)
    assert sorted(out["q1"], key=out["q1"].get, reverse=True) == ["b", "c", "a", "d"]
    # q2: first-stage scores are constant -> z = 0; reranker (1, 2) -> (-1, 1): y first at any w > 0
    assert fuse(FIRST, RERANKED, 0.25, top_k=2)["q2"] == {"y": 2.0, "x": 1.0}
    # an exact fused tie (mirrored scores at w = 0.5) falls back to first-stage order
    tie = fuse({"q": {"a": 2.0, "b": 1.0}}, {"q": {"a": 1.0, "b": 2.0}}, 0.5, top_k=2)
    assert tie["q"] == {"a": 2.0, "b": 1.0}


def test_minmax_and_extreme_weights():
    assert normalise({"a": 1.0, "b": 3.0, "c": 2.0}, "minmax") == {"a": 0.0, "b": 1.0, "c": 0.5}
    keep = fuse(FIRST, RERANKED, 0.0, top_k=4)
    assert sorted(keep["q1"], key=keep["q1"].get, reverse=True) == ["a", "b", "c", "d"]
    only = fuse(FIRST, RERANKED, 1.0, top_k=4, norm="minmax")
    assert sorted(only["q1"], key=only["q1"].get, reverse=True) == ["b", "c", "a", "d"]


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_weight_outside_unit_interval_refused(weight):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fuse(FIRST, RERANKED, weight, top_k=3)


def test_tune_weight_uses_only_the_qrels_it_is_given():
    tuning_qrels = {"q1": {"b": 1}}
    w, curve = tune_weight(FIRST, RERANKED, tuning_qrels, top_k=4)
    assert w == min(k for k, v in curve.items() if v == max(curve.values()))
    assert curve[0.0] < curve[1.0] and w > 0  # b is first only when the reranker has weight
    with pytest.raises(ValueError, match="judged queries"):
        tune_weight(FIRST, RERANKED, {}, top_k=4)


def _eval_json(args, capsys):
    import json

    from densekit.eval.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")], captured.err


def test_cli_fuse_zero_keeps_the_first_stage_ranking(tiny_beir, tiny_causal_lm, capsys, tmp_path):
    base = ["eval", "--data", str(tiny_beir), "--top-k", "6", "--json"]
    _, plain, _ = _eval_json(base + ["--save-run", str(tmp_path / "a.trec")], capsys)
    code, fused, _ = _eval_json(base + ["--reranker", f"qlm:{tiny_causal_lm}", "--rerank-top-k", "6", "--fuse", "0",
                                        "--save-run", str(tmp_path / "b.trec")], capsys)
    assert code == 0 and fused[0]["fuse"] == {"weight": 0.0, "norm": "z", "tuned_on": None, "tune_queries": None, "curve": None}
    from densekit.eval.runfile import read_run
    from densekit.core.runs import rank

    a, b = read_run(tmp_path / "a.trec"), read_run(tmp_path / "b.trec")
    assert {q: rank(d) for q, d in a.items()} == {q: rank(d) for q, d in b.items()}
    assert fused[0]["ndcg@10"] == plain[0]["ndcg@10"]


def test_cli_fuse_auto_tunes_on_another_split_never_the_evaluated_qrels(tiny_beir, tiny_causal_lm, capsys):
    base = ["eval", "--data", str(tiny_beir), "--top-k", "6", "--json", "--reranker", f"qlm:{tiny_causal_lm}",
            "--rerank-top-k", "6", "--fuse", "auto"]
    code, first, err = _eval_json(base, capsys)
    assert code == 0 and first[0]["fuse"]["tuned_on"] == "train" and "chosen on split 'train'" in err
    # change the evaluated split's judgments completely: the chosen weight cannot move
    qrels = tiny_beir / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td4\t1\nq2\td2\t2\n")
    code, second, _ = _eval_json(base, capsys)
    assert code == 0 and second[0]["fuse"]["weight"] == first[0]["fuse"]["weight"]
    assert second[0]["ndcg@10"] != first[0]["ndcg@10"]
    # the weight is the tuning curve's best (smallest on ties), and the curve is the tuning split's: new train
    # judgments move it (fails on a fixed weight, or on a curve read from anything but the tuning qrels). The new
    # train judgments are of q2, a query whose BM25 candidates differ in order from the reranker's.
    for row in (first[0], second[0]):
        curve = dict(row["fuse"]["curve"])
        assert row["fuse"]["weight"] == min(w for w, v in curve.items() if v == max(curve.values()))
    (tiny_beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td5\t2\nq2\td3\t0\n")
    code, third, _ = _eval_json(base, capsys)
    assert code == 0 and third[0]["fuse"]["curve"] != first[0]["fuse"]["curve"]
    curve = dict(third[0]["fuse"]["curve"])
    assert len(set(curve.values())) > 1  # q2's BM25 order puts the judged d5 second; the reranker can lift it
    assert third[0]["fuse"]["weight"] == min(w for w, v in curve.items() if v == max(curve.values()))


def test_cli_fuse_auto_without_a_tuning_split_names_the_splits(tiny_beir, tiny_causal_lm, capsys):
    (tiny_beir / "qrels" / "train.tsv").unlink()
    code, _, err = _eval_json(["eval", "--data", str(tiny_beir), "--reranker", f"qlm:{tiny_causal_lm}", "--fuse", "auto"],
                              capsys)
    assert code == 2 and "needs a tuning split other than 'test'" in err and "has only test" in err


@pytest.mark.parametrize("extra, message", [(["--fuse", "1.5"], "[0, 1]"), (["--fuse", "0.5"], "without --reranker"),
                                            (["--tune-split", "train"], "without --fuse")])
def test_cli_fuse_arguments_validated(tiny_beir, capsys, extra, message):
    from densekit.eval.cli import main

    try:  # argparse (exit 2) or jobs.check_evaluate (densekit: error, 2): both before any work
        code = main(["eval", "--data", str(tiny_beir)] + extra)
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
