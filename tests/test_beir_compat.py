"""densekit's DualEncoder inside the ``beir`` library: beir's ``DenseRetrievalExactSearch`` +
``EvaluateRetrieval`` against densekit's own ``dense_search`` (FAISS Flat index) + ``densekit.eval.metrics.evaluate``,
on the tiny BEIR fixture of conftest.py with the tiny random models.

The beir contract (beir 2.2.0, read from its installed source):

- ``DenseRetrievalExactSearch(model, batch_size, corpus_chunk_size)`` calls
  ``model.encode_queries(list[str], batch_size=, show_progress_bar=, convert_to_tensor=True)`` once, then
  sorts the corpus by ``len(title + text)`` (longest first), cuts it into ``corpus_chunk_size`` pieces and
  calls ``model.encode_corpus(list[{"title", "text"}], same kwargs)`` per piece. Both must return rows in
  input order (array or tensor). ``DualEncoder`` itself provides both methods (retriever/encoder.py),
  encoding through ``DualEncoder.encode`` with the query / document prefix and ``text.doc_text``
  (title + " " + text), i.e. exactly as ``dense_search`` encodes.
- ``score_function``: ``"dot"`` is ``q @ d``, ``"cos_sim"`` normalises both first. densekit's index is inner
  product, so ``"dot"`` always matches it and ``"cos_sim"`` only for a normalising encoder (the default).
- ``search`` takes ``top_k + 1`` per chunk and ALWAYS drops a hit whose doc id equals the query id (no switch)
  before keeping ``top_k``; densekit's ``dense_search`` keeps such hits and ``evaluate`` drops them afterwards
  (``ignore_identical_ids``). The main test's ids cannot collide (q* vs d*, asserted); the collision case is
  tested on its own below, at a depth covering the whole corpus (where both conventions give the same run).
- ``EvaluateRetrieval.evaluate(qrels, results, k_values)`` pops identical ids from ``results`` IN PLACE (we
  pass copies), runs pytrec_eval and returns four dicts keyed ``NDCG@k``, ``MAP@k``, ``Recall@k``, ``P@k``:
  means over the judged queries present in ``results``, rounded to 5 decimals.
"""
import copy

import pytest

from beir.datasets.data_loader import GenericDataLoader
from beir.retrieval.evaluation import EvaluateRetrieval
from beir.retrieval.search.dense import DenseRetrievalExactSearch

from densekit.eval.data import load_dataset, load_queries, write_beir
from densekit.eval.metrics import drop_identical_ids, evaluate
from densekit.retriever.encoder import DualEncoder
from densekit.core.runs import rank
from densekit.retriever.search import dense_search

K_VALUES = [1, 3, 5]  # depth 5 < 6 docs: the top-k cut matters
BEIR_KEYS = {"ndcg": "NDCG@{}", "map": "MAP@{}", "recall": "Recall@{}", "p": "P@{}"}
TOL = 1e-4


def beir_retrieve(encoder, corpus, queries, score_function, chunk, k_values=K_VALUES):
    """beir's own exact search with the DualEncoder as its model."""
    search = DenseRetrievalExactSearch(encoder, batch_size=2, corpus_chunk_size=chunk, show_progress_bar=False)
    return EvaluateRetrieval(search, k_values=k_values, score_function=score_function).retrieve(corpus, queries)


def beir_means(qrels, run, k_values=K_VALUES) -> dict[str, float]:
    """beir's metrics of ``run``, renamed to densekit's names (``NDCG@5`` -> ``ndcg@5`` ...)."""
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, copy.deepcopy(run), k_values)
    merged = {**ndcg, **_map, **recall, **precision}
    return {f"{m}@{k}": merged[key.format(k)] for m, key in BEIR_KEYS.items() for k in k_values}


def densekit_means(qrels, run, k_values=K_VALUES) -> dict[str, float]:
    return evaluate(run, qrels, [f"{m}@{k}" for m in BEIR_KEYS for k in k_values])[1]


def assert_same_run(theirs, ours):
    assert set(theirs) == set(ours), "both runs must hold every query"
    for qid in ours:
        assert rank(theirs[qid]) == rank(ours[qid]), f"query {qid}: beir ranks {rank(theirs[qid])}, densekit {rank(ours[qid])}"
        for doc, score in ours[qid].items():
            assert theirs[qid][doc] == pytest.approx(score, abs=TOL), f"query {qid}, doc {doc}"


def assert_distinct_scores(run):
    """The comparison of rankings is meaningful only when no two scores of a query are within TOL."""
    for qid, docs in run.items():
        scores = sorted(docs.values())
        gaps = [b - a for a, b in zip(scores, scores[1:])]
        assert not gaps or min(gaps) > TOL, f"fixture problem: near-tied scores for {qid}: {scores}"


@pytest.mark.parametrize("model,overrides,score_function,chunk", [
    ("tiny_bert", {}, "cos_sim", 4),  # mean pooling, normalised; corpus in 2 chunks (4 + 2 docs)
    ("tiny_bert", {"normalize": False, "query_prefix": "query: ", "doc_prefix": "passage: "}, "dot", 4),
    ("tiny_llama", {}, "dot", 50000),  # decoder, last-token pooling, one chunk
], ids=["bert-cos-chunked", "bert-dot-unnormalized-prefixed", "llama-dot"])
def test_beir_search_and_metrics_equal_densekit(model, overrides, score_function, chunk, tiny_beir, request):
    encoder = DualEncoder.from_pretrained(str(request.getfixturevalue(model)), **overrides)
    ds = load_dataset(tiny_beir, "test")
    # every query of the folder, also the train-only q3 and the unjudged q9: neither may enter the means
    queries = load_queries(tiny_beir / "queries.jsonl")
    assert not set(queries) & set(ds.corpus), "query and doc ids must not collide (beir's search drops such hits)"

    # beir reads the folder with its own loader to the same dicts
    b_corpus, b_queries, b_qrels = GenericDataLoader(str(tiny_beir)).load(split="test")
    assert (b_corpus, b_qrels) == (ds.corpus, ds.qrels) and b_queries == ds.queries

    k = max(K_VALUES)
    theirs = beir_retrieve(encoder, ds.corpus, queries, score_function, chunk)
    ours = dense_search(ds.corpus, queries, k, encoder=encoder, batch_size=2, show_progress=False)
    assert all(len(docs) == k for docs in ours.values())
    assert_distinct_scores(ours)
    assert_same_run(theirs, ours)

    expected = densekit_means(ds.qrels, ours)
    assert set(expected) == {f"{m}@{k}" for m in BEIR_KEYS for k in K_VALUES}
    assert beir_means(ds.qrels, theirs) == pytest.approx(expected, abs=TOL)
    # the evaluators alone agree too (beir's on densekit's run), independently of the retrievers
    assert beir_means(ds.qrels, ours) == pytest.approx(expected, abs=TOL)
    assert densekit_means(ds.qrels, theirs) == pytest.approx(expected, abs=TOL)


def test_identical_query_and_doc_ids(tmp_path, tiny_bert):
    """A doc whose id equals a query id: beir's search never returns it for that query; densekit's
    ``dense_search`` does and ``evaluate`` drops it. Searching the whole corpus (depth 6 = corpus size) both
    give the same run once the identical hit is dropped, and the same metrics. (At a depth below the corpus
    size they differ by design: beir fills the slot with the next doc, densekit evaluates one doc fewer.)"""
    corpus = {
        "q1": {"title": "Cats", "text": "cats purr and sleep all day"},  # collides with query q1 (and judged for it)
        "d2": {"title": "Dogs", "text": "dogs bark at the mailman"},
        "q2": {"title": "Fish", "text": "fish swim in the sea"},  # collides with query q2
        "d4": {"title": "Birds", "text": "birds fly south in winter"},
        "d5": {"title": "", "text": "the sea is full of salt water and fish"},
        "d6": {"title": "Mice", "text": "cats chase mice"},
    }
    queries = {"q1": "why do cats purr", "q2": "where do fish swim", "q3": "birds in winter"}
    qrels = {"q1": {"q1": 1, "d6": 2}, "q2": {"q2": 2, "d5": 1, "d2": 0}, "q3": {"d4": 1, "q1": 1}}
    folder = write_beir(tmp_path / "collide", corpus, queries, {"test": qrels})
    ds = load_dataset(folder, "test")
    encoder = DualEncoder.from_pretrained(str(tiny_bert))
    k_values = [1, 3, 6]

    theirs = beir_retrieve(encoder, ds.corpus, ds.queries, "dot", 4, k_values)
    ours = dense_search(ds.corpus, ds.queries, 6, encoder=encoder, batch_size=2, show_progress=False)
    assert "q1" not in theirs["q1"] and "q2" not in theirs["q2"] and "q1" in theirs["q3"]
    assert "q1" in ours["q1"] and "q2" in ours["q2"]
    assert_distinct_scores(ours)
    assert_same_run(theirs, drop_identical_ids(ours))
    assert beir_means(ds.qrels, theirs, k_values) == pytest.approx(densekit_means(ds.qrels, ours, k_values), abs=TOL)
