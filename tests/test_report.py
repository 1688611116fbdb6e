import itertools
import json

import numpy as np
import pytest
from scipy.stats import ttest_rel

from densekit.eval import report
from densekit.eval.metrics import evaluate
from densekit.eval.runfile import read_run, write_run
from densekit.eval.cli import main


def _synthetic(num_queries=40, docs=12, seed=0):
    """qrels + a baseline run, a clearly better run (relevant docs pushed up) and a noisy run."""
    rng = np.random.default_rng(seed)
    qrels, base, better, noisy = {}, {}, {}, {}
    for q in range(num_queries):
        qid = f"q{q}"
        grades = rng.integers(0, 3, size=docs)
        grades[rng.integers(docs)] = 2  # at least one relevant document
        qrels[qid] = {f"d{i}": int(g) for i, g in enumerate(grades)}
        scores = rng.standard_normal(docs)
        base[qid] = {f"d{i}": float(s) for i, s in enumerate(scores)}
        better[qid] = {f"d{i}": float(s + 1.5 * g) for i, (s, g) in enumerate(zip(scores, grades))}
        noisy[qid] = {f"d{i}": float(s + rng.standard_normal()) for i, s in enumerate(scores)}
    return qrels, {"base": base, "better": better, "noisy": noisy}


def test_pvalues_equal_scipy_ttest_rel_on_the_per_query_values():
    qrels, runs = _synthetic()
    metrics = ["ndcg@10", "mrr@10", "recall@5"]
    result = report.compare(runs, qrels, metrics, permutations=500)
    assert result["baseline"] == "base" and result["queries"] == sorted(qrels)
    for name in ("better", "noisy"):
        for m in metrics:
            per_query, _ = evaluate(runs[name], qrels, [m])
            base_values, _ = evaluate(runs["base"], qrels, [m])
            x = [per_query[q][m] for q in sorted(qrels)]
            y = [base_values[q][m] for q in sorted(qrels)]
            assert result["per_query"][name][m] == x and result["per_query"]["base"][m] == y
            expected = ttest_rel(x, y)
            test = result["systems"][name]["tests"][m]
            assert test["p_ttest"] == float(expected.pvalue) and test["t"] == float(expected.statistic)
            assert test["diff"] == pytest.approx(np.mean(x) - np.mean(y))
            assert result["systems"][name]["means"][m] == pytest.approx(np.mean(x))
    assert result["systems"]["better"]["tests"]["ndcg@10"]["p_ttest_holm"] < 1e-6
    assert "tests" not in result["systems"]["base"]


def test_holm_by_hand():
    # sorted: a 0.01, c 0.03, b 0.04 -> 3 x 0.01 = 0.03; max(0.03, 2 x 0.03) = 0.06; max(0.06, 1 x 0.04) = 0.06
    assert report.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    # capped at 1 and monotone: 3 x 0.02 = 0.06; min(1, 2 x 0.5) = 1; max(1, 0.6) = 1
    assert report.holm({"a": 0.02, "b": 0.5, "c": 0.6}) == pytest.approx({"a": 0.06, "b": 1.0, "c": 1.0})


def test_randomisation_test():
    rng = np.random.default_rng(1)
    base = rng.random(50)
    assert report.randomisation_test(base, base, 2000, seed=3) == 1.0
    assert report.randomisation_test(base + 0.1 + 0.01 * rng.standard_normal(50), base, 2000) == 1 / 2001
    # a small case against the exact sign-flip distribution (all 2^8 sign vectors)
    diff = np.array([0.3, -0.1, 0.2, 0.25, -0.05, 0.15, 0.1, -0.2])
    exact = np.mean([abs(np.dot(s, diff)) >= abs(diff.sum()) - 1e-12 for s in itertools.product((-1, 1), repeat=8)])
    estimate = report.randomisation_test(diff, np.zeros(8), 20000, seed=0)
    assert estimate == pytest.approx(exact, abs=0.01)
    assert report.randomisation_test(diff, np.zeros(8), 500, seed=7) == report.randomisation_test(diff, np.zeros(8), 500, seed=7)


def test_win_tie_loss():
    assert report.win_tie_loss([0.5, 0.3, 0.2, 0.1, 0.9], [0.4, 0.3, 0.25, 0.1, 0.2]) == {"win": 2, "tie": 2, "loss": 1}


def test_identical_system_is_a_tie_with_p_one():
    qrels, runs = _synthetic(num_queries=10)
    result = report.compare({"base": runs["base"], "same": dict(runs["base"])}, qrels, permutations=300)
    test = result["systems"]["same"]["tests"]["ndcg@10"]
    assert (test["p_ttest"], test["p_random"], test["tie"], test["win"], test["loss"]) == (1.0, 1.0, 10, 0, 0)


def test_baseline_by_name_and_missing_queries_count_zero():
    qrels, runs = _synthetic(num_queries=6)
    partial = {q: docs for q, docs in runs["better"].items() if q != "q0"}
    result = report.compare({"base": runs["base"], "partial": partial}, qrels, ["ndcg@10"], baseline="partial",
                            permutations=100)
    assert result["baseline"] == "partial" and "tests" in result["systems"]["base"]
    assert result["per_query"]["partial"]["ndcg@10"][0] == 0.0 and result["systems"]["partial"]["absent_queries"] == 1
    with pytest.raises(ValueError, match="baseline 'nope'"):
        report.compare(runs, qrels, baseline="nope")
    with pytest.raises(ValueError, match="at least two runs"):
        report.compare({"base": runs["base"]}, qrels)


def _tiny_runs(tmp_path):
    good = {"q1": {"d6": 3.0, "d1": 2.0, "d2": 1.0}, "q2": {"d3": 3.0, "d5": 2.0, "d4": 1.0}}
    bad = {"q1": {"d2": 3.0, "d1": 2.0, "d6": 1.0}, "q2": {"d4": 3.0, "d2": 2.0, "d3": 1.0}}
    paths = []
    for name, run in (("good", good), ("bad", bad), ("same", good)):
        write_run(tmp_path / f"{name}.trec", run)
        paths.append(tmp_path / f"{name}.trec")
    return paths, {"good": good, "bad": bad}


def test_cli_compare_prints_the_table_and_writes_png_and_json(tiny_beir, tmp_path, capsys):
    (good, bad, same), runs = _tiny_runs(tmp_path)
    out_json, out_png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert main(["compare", f"G={good}", str(bad), str(same), "--data", str(tiny_beir), "--split", "test",
                 "--permutations", "200", "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "| system | ndcg@10 | mrr@10 | recall@100 |" in printed and "| G (baseline) |" in printed
    assert "| bad.trec | ndcg@10 |" in printed and "| same.trec | recall@100 | +0.0000 |" in printed
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out_json.read_text())
    assert result["baseline"] == "G" and result["queries"] == ["q1", "q2"]
    qrels = {"q1": {"d1": 1, "d6": 2}, "q2": {"d3": 2, "d5": 1, "d2": 0}}
    for m in ("ndcg@10", "mrr@10"):
        x = [evaluate(runs["bad"], qrels, [m])[0][q][m] for q in ("q1", "q2")]
        y = [evaluate(runs["good"], qrels, [m])[0][q][m] for q in ("q1", "q2")]
        test = result["systems"]["bad.trec"]["tests"][m]
        assert result["per_query"]["bad.trec"][m] == x and test["p_ttest"] == float(ttest_rel(x, y).pvalue)
        assert (test["win"], test["tie"], test["loss"]) == (0, 0, 2)
    assert result["systems"]["same.trec"]["tests"]["ndcg@10"]["p_random"] == 1.0
    # outputs follow the --overwrite rule; a bad baseline or metric is a clean error
    assert main(["compare", str(good), str(bad), "--data", str(tiny_beir), "--json", str(out_json)]) == 2
    assert "file exists" in capsys.readouterr().err
    assert main(["compare", str(good), str(bad), "--data", str(tiny_beir), "--baseline", "nope"]) == 2
    assert "baseline 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["compare", str(good), str(bad), "--data", str(tiny_beir), "--metrics", "ndcg"])
    assert err.value.code == 2


@pytest.mark.slow
def test_cli_compare_three_scifact_runs(beir_data, tmp_path, capsys):
    if not (beir_data / "scifact").is_dir():
        pytest.skip("scifact not in $DENSEKIT_DATA")
    from densekit.eval.data import load_dataset
    from densekit.eval.metrics import rank

    bm25 = tmp_path / "bm25.trec"
    assert main(["eval", "--data", str(beir_data / "scifact"), "--retriever", "bm25", "--top-k", "100",
                 "--save-run", str(bm25)]) == 0
    capsys.readouterr()
    run = read_run(bm25)
    rng = np.random.default_rng(0)
    shuffled, swapped = {}, {}
    for n, (qid, docs) in enumerate(sorted(run.items())):
        ranking = rank(docs)
        top = list(ranking[:10])
        rng.shuffle(top)  # the top 10 in random order: clearly worse
        shuffled[qid] = {d: float(100 - i) for i, d in enumerate(top + ranking[10:])}
        if n % 2 == 0 and len(ranking) > 1:  # ranks 1 and 2 swapped in every other query: a small change
            ranking = [ranking[1], ranking[0], *ranking[2:]]
        swapped[qid] = {d: float(100 - i) for i, d in enumerate(ranking)}
    write_run(tmp_path / "shuffled.trec", shuffled)
    write_run(tmp_path / "swapped.trec", swapped)
    out_json, out_png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    assert main(["compare", str(bm25), str(tmp_path / "shuffled.trec"), str(tmp_path / "swapped.trec"),
                 "--data", str(beir_data / "scifact"), "--json", str(out_json), "--plot", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert "| bm25.trec (baseline) |" in printed and "| shuffled.trec | ndcg@10 |" in printed
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out_json.read_text())
    qrels = load_dataset(beir_data / "scifact", "test").qrels
    qids = result["queries"]
    assert len(qids) == 300
    base = {m: [evaluate({q: run.get(q, {}) for q in qids}, qrels, [m])[0][q][m] for q in qids] for m in result["metrics"]}
    for name, other in (("shuffled.trec", shuffled), ("swapped.trec", swapped)):
        for m in result["metrics"]:
            values = evaluate({q: other.get(q, {}) for q in qids}, qrels, [m])[0]
            x = [values[q][m] for q in qids]
            assert result["per_query"][name][m] == x
            test = result["systems"][name]["tests"][m]
            if m == "recall@100":  # the same top 100: every query ties
                assert (test["tie"], test["p_ttest"], test["p_random"]) == (300, 1.0, 1.0)
            else:
                assert test["p_ttest"] == float(ttest_rel(x, base[m]).pvalue)
    assert result["systems"]["shuffled.trec"]["tests"]["ndcg@10"]["p_ttest_holm"] < 0.01
    assert result["systems"]["shuffled.trec"]["tests"]["ndcg@10"]["p_random_holm"] < 0.01


def test_markdown_counts_absent_and_skipped_queries():
    qrels, runs = _synthetic(num_queries=5)
    partial = {q: docs for q, docs in runs["better"].items() if q != "q0"}
    partial["extra"] = {"d0": 1.0}
    text = report.to_markdown(report.compare({"base": runs["base"], "partial": partial}, qrels, permutations=50))
    assert "partial: 1 evaluated query absent from the run (counted 0), 1 run query not evaluated" in text
    assert text.count("| partial |") == 1 + 3 and "| base (baseline) |" in text


# ---------------------------------------------------------------- random_order: the chance level of a reranker

def test_random_order_of_all_relevant_candidates_is_one():
    run = {"q": {f"d{i}": float(i) for i in range(5)}}
    qrels = {"q": {f"d{i}": 1 for i in range(5)}}
    assert report.random_order(run, qrels) == {"q": pytest.approx(1.0)}


def test_random_order_of_two_documents_is_the_mean_over_both_orders():
    """d1 relevant, d2 not: order (d1, d2) has nDCG@10 = 1, (d2, d1) has 1/log2(3); each has probability 1/2."""
    run, qrels = {"q": {"d1": 2.0, "d2": 1.0}}, {"q": {"d1": 1}}
    second = 1 / np.log2(3)
    singles = [report.random_order(run, qrels, shuffles=1, seed=s)["q"] for s in range(40)]
    assert all(v == pytest.approx(1.0) or v == pytest.approx(second) for v in singles)
    assert any(v == pytest.approx(1.0) for v in singles) and any(v == pytest.approx(second) for v in singles)
    # shuffles=n, seed=s is the mean of the n single shuffles with seeds s .. s+n-1
    assert report.random_order(run, qrels, shuffles=40)["q"] == pytest.approx(np.mean(singles))
    assert report.random_order(run, qrels, shuffles=4000)["q"] == pytest.approx((1 + second) / 2, abs=0.015)


def test_random_order_is_reproducible_and_per_query():
    qrels, runs = _synthetic(num_queries=6, docs=12)
    run = runs["base"]
    first = report.random_order(run, qrels, "ndcg@10", shuffles=3)
    assert first == report.random_order(run, qrels, "ndcg@10", shuffles=3)
    alone = report.random_order({"q3": run["q3"]}, qrels, "ndcg@10", shuffles=3)
    assert alone == {"q3": first["q3"]}  # independent of the other queries
    assert first != report.random_order(run, qrels, "ndcg@10", shuffles=3, seed=7)
    with pytest.raises(ValueError, match="shuffles"):
        report.random_order(run, qrels, shuffles=0)


def test_random_order_top_k_keeps_the_rest_below_and_queries_without_qrels_are_left_out():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}, "unjudged": {"a": 1.0}}
    qrels = {"q": {"c": 1}}
    # only a and b are shuffled: c stays third, nDCG@10 = 1/log2(4) = 0.5 whatever the order of a and b
    assert report.random_order(run, qrels, shuffles=5, top_k=2) == {"q": pytest.approx(0.5)}
    # top_k = 1 keeps the first stage's order
    assert report.random_order(run, qrels, "mrr@10", shuffles=3, top_k=1) == {"q": pytest.approx(1 / 3)}


def test_probe_random_order_ndcg_is_the_mean_of_random_order_unjudged_queries_counting_zero():
    from densekit.eval.probe import random_order_ndcg

    docs, qrels = {"q": ["d2", "d1"], "unjudged": ["d1"]}, {"q": {"d1": 1}}
    expected = report.random_order({"q": {"d1": 1.0, "d2": 2.0}}, qrels, shuffles=10)["q"] / 2
    assert random_order_ndcg(docs, qrels) == pytest.approx(expected)
