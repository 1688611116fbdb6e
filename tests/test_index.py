import numpy as np
import pytest

from densekit.retriever.index import BadIndexError, Index


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"doc-{i}" for i in range(500)]


def exact_top(x, q, k):
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_flat_equals_brute_force_with_string_ids(vectors):
    x, ids = vectors
    index = Index.build(x, ids, "Flat")
    got, scores = index.search(x[:7], k=5)
    expected = exact_top(x, x[:7], 5)
    assert got == [[ids[r] for r in row] for row in expected]
    np.testing.assert_allclose(scores, np.take_along_axis(x[:7] @ x.T, expected, 1), atol=1e-5)
    assert index.search_run(["a"], x[:1], 2)["a"] == {ids[expected[0, 0]]: pytest.approx(1.0), ids[expected[0, 1]]: pytest.approx(float(scores[0, 1]))}


def test_k_larger_than_index_and_empty_batch(vectors):
    x, ids = vectors
    index = Index.build(x[:3], ids[:3])
    got, scores = index.search(x[:1], k=50)
    assert len(got[0]) == 3 and scores.shape == (1, 3)
    got, scores = index.search(np.zeros((0, 16), np.float32), k=5)
    assert got == [] and scores.shape == (0, 0)


def test_bad_inputs(vectors):
    x, ids = vectors
    index = Index.build(x[:10], ids[:10])
    with pytest.raises(BadIndexError, match="dimension 8 but the index has dimension 16"):
        index.search(np.zeros((1, 8), np.float32))
    with pytest.raises(BadIndexError, match="unique"):
        index.add(x[:1], [ids[0]])
    with pytest.raises(BadIndexError, match="empty corpus"):
        Index.build(np.zeros((0, 16), np.float32), [])
    with pytest.raises(BadIndexError, match="needs training"):
        Index(dim=16, factory="IVF4,Flat").add(x, ids)
    with pytest.raises(BadIndexError, match="nprobe applies to IVF"):
        index.set_params(nprobe=4)


@pytest.mark.parametrize("factory,params,min_recall", [("HNSW32", {"ef_search": 128}, 0.95), ("IVF8,Flat", {"nprobe": 8}, 0.999),
                                                       ("IVF8,PQ4", {"nprobe": 8}, 0.2)])
def test_approximate_factories(vectors, factory, params, min_recall):
    x, ids = vectors
    index = Index.build(x, ids, factory)
    index.set_params(**params)
    got, _ = index.search(x[:50], k=10)
    expected = exact_top(x, x[:50], 10)
    recall = np.mean([len(set(g) & {ids[r] for r in e}) / 10 for g, e in zip(got, expected)])
    assert recall >= min_recall


def test_save_load_roundtrip_and_checks(vectors, tmp_path):
    x, ids = vectors
    index = Index.build(x, ids, "HNSW32", meta={"model": "m1"})
    folder = index.save(tmp_path / "idx")
    back = Index.load(folder, expect_dim=16, expect_model="m1")
    assert back.ids == ids and back.meta["model"] == "m1" and back.factory == "HNSW32"
    assert back.search(x[:3], 4)[0] == index.search(x[:3], 4)[0]
    with pytest.raises(BadIndexError, match="dimension 16 does not match the encoder's 32"):
        Index.load(folder, expect_dim=32)
    with pytest.raises(BadIndexError, match="built with model 'm1'"):
        Index.load(folder, expect_model="m2")
    (folder / "meta.json").unlink()
    with pytest.raises(BadIndexError, match="incomplete index folder"):
        Index.load(folder)


def test_failed_save_keeps_previous_index(vectors, tmp_path, monkeypatch):
    import faiss

    x, ids = vectors
    folder = Index.build(x[:10], ids[:10]).save(tmp_path / "idx")

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        Index.build(x, ids).save(folder, overwrite=True)
    assert Index.load(folder).ntotal == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_constructor_wraps_a_faiss_index_and_reconstruct_follows_add(vectors):
    """``reconstruct`` by id before and after ``add`` (fails if the id -> row map is read once and not grown with
    ``add``: the new ids would raise KeyError or map to the wrong rows)."""
    import faiss

    x, ids = vectors
    flat = faiss.IndexFlatIP(16)
    flat.add(x[:5])
    index = Index(16, "Flat", {"model": "m"}, faiss_index=flat, ids=ids[:5])
    assert index.ids == ids[:5] and index.ntotal == 5 and index.meta == {"model": "m"}
    np.testing.assert_array_equal(index.reconstruct([ids[3], ids[0]]), x[[3, 0]])
    index.add(x[5:9], ids[5:9])
    np.testing.assert_array_equal(index.reconstruct(ids[8:4:-1]), x[8:4:-1])
    np.testing.assert_array_equal(index.reconstruct(ids[:9]), x[:9])
    with pytest.raises(KeyError, match="not in the index"):
        index.reconstruct(["nope"])
    flat = faiss.IndexFlatIP(16)
    flat.add(x[:5])
    with pytest.raises(BadIndexError, match="5 vectors but 4 ids"):
        Index(16, faiss_index=flat, ids=ids[:4])
    with pytest.raises(BadIndexError, match="unique"):
        Index(16, faiss_index=flat, ids=[ids[0]] * 5)
    with pytest.raises(BadIndexError, match="dimension 16 but the index has dimension 8"):
        Index(8, faiss_index=flat, ids=ids[:5])


def test_ids_are_stored_compactly(tmp_path):
    """ids.npy holds one fixed-width UTF-8 byte array (memory-mapped on load)."""
    from densekit.retriever.index import DocIds

    ids = ["d1", "doc-2", "naïve-3", "4"]
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    Index.build(x, ids, meta={"model": "m"}).save(tmp_path / "new")
    assert (tmp_path / "new" / "ids.npy").exists() and not (tmp_path / "new" / "ids.json").exists()
    stored = np.load(tmp_path / "new" / "ids.npy")
    assert stored.dtype == np.dtype(f"S{len('naïve-3'.encode())}") and stored.nbytes == 4 * len("naïve-3".encode())
    back = Index.load(tmp_path / "new")
    assert isinstance(back.ids, DocIds) and isinstance(back.ids.array, np.memmap)
    assert back.ids == ids and list(back.ids) == ids and back.ids[1:3] == ids[1:3]
    assert "naïve-3" in back and "d9" not in back
    np.testing.assert_allclose(back.reconstruct(["naïve-3"]), x[2:3], atol=1e-6)
    assert back.search(x[2:3], 1)[0] == [["naïve-3"]]
    back.add(x[:1] * 2, ["d5"])  # adding to a loaded index
    assert list(back.ids) == ids + ["d5"] and back.search(x[:1] * 2, 1)[0] == [["d5"]]


def test_duplicate_and_nul_ids_are_refused(tmp_path):
    from densekit.retriever.index import DocIds

    x = np.eye(3, dtype=np.float32)
    Index.build(x, ["a", "b", "c"]).save(tmp_path / "i")
    np.save(tmp_path / "i" / "ids.npy", np.array([b"a", b"b", b"a"]))
    with pytest.raises(BadIndexError, match="unique"):
        Index.load(tmp_path / "i", verify=False)  # (verify would refuse the replaced ids.npy before reading it)
    with pytest.raises(BadIndexError, match="NUL"):
        DocIds.of(["a\0"])
