"""Issue 24: a reranker teaches the retriever: teacher scores on mined examples (``mine --teacher``), denoising."""
import json

import pytest

from densekit.eval.cli import main
from densekit.reranker import kinds
from densekit.reranker.base import rerank
from densekit.reranker.teacher import denoise, teacher_scores
from densekit.retriever.examples import read_jsonl_examples

CORPUS = {"a": {"title": "", "text": "x"}, "bb": {"title": "", "text": "xx"}, "ccc": {"title": "", "text": "xxx"},
          "dddd": {"title": "", "text": "xxxx"}}


class LengthTeacher:
    """Scores a document by its length; counts the groups it scored."""

    kind = "length-test"
    calls = 0

    @classmethod
    def from_pretrained(cls, target):
        return cls()

    def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
        LengthTeacher.calls += len(groups)
        return [[float(len(d)) for d in docs] for _, docs in groups]

    def rerank(self, *args, **kwargs):
        return rerank(self, *args, **kwargs)


def test_teacher_scores_follow_their_documents_and_denoise_drops_what_outranks_every_positive():
    """Guards scores shifted between positives and negatives, and a denoiser comparing against the wrong positive."""
    rows = [{"query_id": "q", "query": "q", "positives": ["bb", "a"], "negatives": ["dddd", "a", "ccc", "ghost"]}]
    scored = teacher_scores(LengthTeacher(), rows, CORPUS, show_progress=False)
    assert scored[0]["positive_scores"] == [2.0, 1.0] and scored[0]["negative_scores"] == [4.0, 1.0, 3.0]
    assert scored[0]["negatives"] == ["dddd", "a", "ccc"]  # the id absent from the corpus is gone with its score
    kept, dropped = denoise(scored)
    assert dropped == 2 and kept[0]["negatives"] == ["a"] and kept[0]["negative_scores"] == [1.0]


def test_mine_with_a_teacher_writes_a_training_file_and_resumes_from_its_cache(tiny_beir, tmp_path, capsys, monkeypatch):
    """Guards teacher scores that the training reader cannot read, and a rerun that scores everything again."""
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    kinds.register(LengthTeacher)
    LengthTeacher.calls = 0
    out, cache = tmp_path / "mined.jsonl", tmp_path / "teacher"
    line = ["mine", "--data", str(tiny_beir), "--split", "test", "--rank-from", "0", "--rank-to", "6", "--out", str(out),
            "--teacher", "length-test:x", "--teacher-cache", str(cache), "--denoise"]
    assert main(line) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["teacher"] == "length-test:x" and result["denoised"] >= 0 and LengthTeacher.calls == result["queries"]
    from densekit.eval.data import load_dataset

    ds = load_dataset(tiny_beir, "test")
    examples = read_jsonl_examples(out, ds.corpus, ds.queries)
    for e in examples:  # texts come back with their own teacher scores: the length of each text
        assert e["positive_scores"] == [float(len(t)) for t in e["positives"]]
        assert e["negative_scores"] == [float(len(t)) for t in e["negatives"]]
        assert all(n <= max(e["positive_scores"]) for n in e["negative_scores"])  # denoised
    assert main(line + ["--overwrite"]) == 0
    capsys.readouterr()
    assert LengthTeacher.calls == result["queries"]  # the second run read every score from the cache


@pytest.mark.parametrize("extra, message", [(["--denoise"], "give --teacher"),
                                            (["--teacher-cache", "c"], "give --teacher"),
                                            (["--teacher", "bogus:x"], "unknown kind 'bogus'")])
def test_mine_refuses_teacher_flags_that_cannot_work(tiny_beir, tmp_path, capsys, extra, message):
    """Guards a --denoise that silently does nothing, or a bad teacher found only after mining."""
    code = main(["mine", "--data", str(tiny_beir), "--split", "test", "--out", str(tmp_path / "m.jsonl"), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()
