"""Reranker scores on disk: a second run scores nothing, an interrupted one resumes, another model never reads them,
and `densekit eval --score-cache` gives the same run as without it."""
import json

from densekit.eval.cli import main
from densekit.reranker.score_cache import ScoreCache


class Counting:
    """A pairwise stand-in reranker: score = minus the document's length; counts the groups it scores."""

    kind, modes = "counting", ("score",)

    def __init__(self, offset=0.0):
        self.config, self.seen, self.offset = {"offset": offset}, 0, offset

    def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
        self.seen += len(groups)
        return [[-len(d) + self.offset for d in docs] for _, docs in groups]


GROUPS = [("q1", ["aa", "b"]), ("q2", ["ccc", "dd", "e"]), ("q3", ["ffff"])]


def test_a_second_run_scores_nothing_and_agrees(tmp_path):
    first = ScoreCache(Counting(), tmp_path, chunk=2)
    scores = first.score_groups(GROUPS)
    assert scores == [[-2, -1], [-3, -2, -1], [-4]] and first.inner.seen == 3
    again = ScoreCache(Counting(), tmp_path)
    assert again.score_groups(GROUPS + [("q4", ["x"])]) == scores + [[-1]] and again.inner.seen == 1
    assert again.kind == "counting"  # behaves like the reranker it wraps


def test_a_cut_line_is_scored_again_and_another_reranker_has_its_own_file(tmp_path):
    ScoreCache(Counting(), tmp_path, chunk=1).score_groups(GROUPS)
    (path,) = tmp_path.iterdir()
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # killed while writing the third line
    resumed = ScoreCache(Counting(), tmp_path)
    assert resumed.score_groups(GROUPS) == [[-2, -1], [-3, -2, -1], [-4]] and resumed.inner.seen == 1
    other = ScoreCache(Counting(offset=1.0), tmp_path)  # another config: another identity, nothing shared
    assert other.score_groups(GROUPS)[0] == [-1.0, 0.0] and other.inner.seen == 3
    assert len(list(tmp_path.iterdir())) == 2


def test_group_keys_include_every_document_and_the_mode(tmp_path):
    cache = ScoreCache(Counting(), tmp_path)
    cache.score_groups([("q", ["a", "b"])])
    cache.score_groups([("q", ["b", "a"])])  # a listwise reranker would score another prompt
    cache.score_groups([("q", ["a", "b"])], mode="other")
    assert cache.inner.seen == 3


def test_eval_with_a_score_cache_equals_eval_without(tiny_beir, tiny_causal_lm, tmp_path, capsys):
    base = ["eval", "--data", str(tiny_beir), "--reranker", f"qlm:{tiny_causal_lm}", "--rerank-top-k", "3", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    for _ in range(2):  # filled, then read
        assert main(base + ["--score-cache", str(tmp_path / "scores")]) == 0
        cached = json.loads(capsys.readouterr().out)
        assert {k: v for k, v in cached.items() if k != "seconds"} == {k: v for k, v in plain.items() if k != "seconds"}
    (path,) = (tmp_path / "scores").iterdir()
    assert path.name.startswith("qlm-") and len(path.read_text().splitlines()) == 2  # two judged test queries
