"""Issue 24: a dual encoder trained on a mixture of datasets (``train retriever --data A B --train-file FA FB --mix``)."""
import json

from densekit.eval import jobs
from densekit.eval.cli import main
from densekit.eval.data import write_beir
from densekit.retriever.config import TrainConfig


def _other_beir(tmp_path):
    """A second BEIR folder whose doc ids are tiny_beir's, with other texts: an id read against the wrong corpus shows."""
    corpus = {"d1": {"title": "", "text": "volcanoes erupt lava"}, "d2": {"title": "", "text": "glaciers carve valleys"},
              "d3": {"title": "", "text": "rivers flood plains"}}
    return write_beir(tmp_path / "other", corpus, {"g1": "what do volcanoes do", "g2": "how are valleys made"},
                      {"train": {"g1": {"d1": 1}, "g2": {"d2": 1}}})


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_each_training_file_is_read_against_its_own_corpus(tiny_beir, tiny_bert, tmp_path, monkeypatch):
    """Guards a mixture that reads every file's doc ids against the first dataset's corpus (same ids, other texts),
    and one that drops the second source."""
    other = _other_beir(tmp_path)
    fa = _write(tmp_path / "a.jsonl", [{"query_id": "q1", "positives": ["d1"], "negatives": ["d2"]}])
    fb = _write(tmp_path / "b.jsonl", [{"query_id": "g1", "positives": ["d1"], "negatives": ["d3"]},
                                       {"query_id": "g2", "positives": ["d2"], "negatives": ["d3"]}])
    seen = {}
    monkeypatch.setattr("densekit.retriever.train.train", lambda enc, examples, *a, **k: seen.setdefault("x", examples))
    result = jobs.train_retriever([str(tiny_beir), str(other)], str(tmp_path / "run"), TrainConfig(n_negatives=1),
                                  str(tiny_bert), ["test", "train"], [fa, fb], mix="even")
    by_query = {}
    for e in seen["x"]:
        by_query.setdefault(e["query"], []).append((e["positives"], e["negatives"]))
    assert by_query["why do cats purr"] == [(["Cats cats purr and sleep all day"], ["Dogs dogs bark at the mailman"])] * 2
    assert by_query["what do volcanoes do"] == [(["volcanoes erupt lava"], ["rivers flood plains"])]
    assert by_query["how are valleys made"] == [(["glaciers carve valleys"], ["rivers flood plains"])]
    assert result["examples"] == 4 and result["sources"] == [f"{tiny_beir}:test", f"{other}:train"]


def test_a_retriever_trains_on_a_mixture_through_the_cli(tiny_beir, tiny_bert, tmp_path, capsys):
    """Guards the CLI passing one dataset (or no --mix) on to the training job."""
    other = _other_beir(tmp_path)
    assert main(["train", "retriever", "--data", str(tiny_beir), str(other), "--split", "test", "train", "--mix", "even",
                 "--model", str(tiny_bert), "--batch-size", "2", "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 4  # 2 judged test queries of tiny_beir + other's 2 train queries
    assert result["sources"] == [f"{tiny_beir}:test", f"{other}:train"]
    assert (tmp_path / "run" / "model" / "modules.json").exists()


def test_a_mixture_refuses_files_that_do_not_pair_with_its_datasets(tiny_beir, tmp_path, capsys):
    """Guards a training file silently read against the wrong corpus (fewer files than datasets), and triples or crop
    pairs (one corpus) given several datasets: refused before anything loads, nothing written."""
    other = _other_beir(tmp_path)
    fa = _write(tmp_path / "a.jsonl", [{"query_id": "q1", "positives": ["d1"], "negatives": ["d2"]}])
    base = ["train", "retriever", "--data", str(tiny_beir), str(other), "--model", "no/such-model"]
    for extra, said in ((["--train-file", fa], "1 --train-file for 2 --data"),
                        (["--triples", fa], "--triples trains on one dataset"),
                        (["--unsupervised"], "--unsupervised trains on one dataset")):
        assert main(base + extra + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("densekit: error:") and said in err
    assert not (tmp_path / "o").exists()
