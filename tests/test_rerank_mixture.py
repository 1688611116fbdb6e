"""Issue 27: a reranker trained on a mixture of datasets (``train reranker --data A B --mix``)."""
import json

import pytest

from densekit.eval.cli import main
from densekit.eval.jobs import training_sources
from densekit.retriever.examples import mix_sources


def _examples(tag: str, n: int) -> list[dict]:
    return [{"query": f"{tag}{i}", "positives": ["p"], "negatives": ["n"]} for i in range(n)]


def test_proportional_mix_keeps_every_example_once():
    """Guards a mixture that drops or repeats examples when the user asked for the datasets' own sizes."""
    mixed = mix_sources([_examples("a", 5), _examples("b", 2)], "proportional")
    assert sorted(e["query"] for e in mixed) == sorted([f"a{i}" for i in range(5)] + ["b0", "b1"])


def test_even_mix_weighs_every_dataset_the_same():
    """Guards an 'even' mixture in which the larger dataset still dominates, or one that samples the small dataset
    unevenly (every example of the smaller one appears 2 or 3 times for a 7:3 ratio)."""
    mixed = mix_sources([_examples("a", 7), _examples("b", 3)], "even", seed=1)
    by_source = {"a": [e["query"] for e in mixed if e["query"].startswith("a")],
                 "b": [e["query"] for e in mixed if e["query"].startswith("b")]}
    assert len(by_source["a"]) == len(by_source["b"]) == 7
    assert sorted(set(by_source["a"])) == [f"a{i}" for i in range(7)]
    assert {by_source["b"].count(f"b{i}") for i in range(3)} <= {2, 3}
    assert mix_sources([_examples("a", 7), _examples("b", 3)], "even", seed=1) == mixed  # seeded


def test_sources_pair_datasets_with_splits():
    """Guards a split list silently recycled or a dataset trained on twice."""
    assert training_sources(["a", "b"], ["train"]) == [("a", "train"), ("b", "train")]
    assert training_sources(["a", "b"], ["train", "dev"]) == [("a", "train"), ("b", "dev")]
    with pytest.raises(ValueError, match="2 splits for 3 datasets"):
        training_sources(["a", "b", "c"], ["train", "dev"])
    with pytest.raises(ValueError, match="named twice"):
        training_sources(["a", "a"], ["train"])


def test_a_reranker_trains_on_two_sources_through_the_cli(tiny_beir, tiny_bert, tmp_path, capsys):
    """Guards the second dataset being ignored: the groups of both sources are trained on, and the result names them."""
    out = tmp_path / "mix"
    assert main(["train", "reranker", "--kind", "cross", "--full", "--data", str(tiny_beir), str(tiny_beir), "--split",
                 "test", "train", "--mix", "even", "--model", str(tiny_bert), "--retriever-model", str(tiny_bert),
                 "--depth", "6", "--group-size", "2", "--batch-size", "2", "--max-steps", "1", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sources"] == [f"{tiny_beir}:test", f"{tiny_beir}:train"]
    assert result["groups"] == 4  # test has 2 judged queries, train 1 (repeated twice under --mix even)


def test_a_mixture_refuses_one_index_for_several_corpora(tiny_beir, tmp_path, capsys):
    """Guards a dense index of one corpus silently used as the first stage of another."""
    code = main(["train", "reranker", "--kind", "cross", "--data", str(tiny_beir), str(tiny_beir), "--split", "test",
                 "train", "--index", str(tmp_path / "idx"), "--out", str(tmp_path / "o")])
    assert code == 2 and "a mixture of datasets" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
