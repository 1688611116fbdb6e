import gzip
import socket

import pytest

from densekit.eval.data import (DataError, available_splits, download, load_corpus, load_dataset, load_qrels,
                       resolve_dataset, select_queries)


def test_load_beir_folder(tiny_beir):
    ds = load_dataset(tiny_beir, "test")
    assert len(ds.corpus) == 6 and ds.corpus["d5"] == {"title": "", "text": "the sea is full of salt water and fish"}
    assert ds.queries == {"q1": "why do cats purr", "q2": "where do fish swim"}  # only the split's queries
    assert ds.qrels["q2"] == {"d3": 2, "d5": 1, "d2": 0}
    assert available_splits(tiny_beir) == ["test", "train"]


def test_gzipped_corpus_equals_plain(tiny_beir):
    plain = load_corpus(tiny_beir / "corpus.jsonl")
    with open(tiny_beir / "corpus.jsonl", "rb") as src, gzip.open(tiny_beir / "corpus.jsonl.gz", "wb") as dst:
        dst.write(src.read())
    (tiny_beir / "corpus.jsonl").unlink()
    assert load_dataset(tiny_beir).corpus == plain


def test_msmarco_style_folder(tmp_path):
    (tmp_path / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n")
    (tmp_path / "queries.dev.tsv").write_text("100\twhat is first\n101\tno qrels\n")
    (tmp_path / "qrels.dev.tsv").write_text("100 0 0 1\n")  # TREC qrels
    ds = load_dataset(tmp_path, "dev")
    assert ds.corpus["1"] == {"title": "", "text": "second passage"}
    assert ds.queries == {"100": "what is first"}
    assert ds.qrels == {"100": {"0": 1}}


def test_malformed_jsonl_names_file_and_line(tiny_beir):
    path = tiny_beir / "corpus.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"_id": "d3", "text": "broken'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: malformed JSON"):
        load_dataset(tiny_beir)


@pytest.mark.parametrize("row,field", [('{"title": "x", "text": "y"}', "_id"), ('{"_id": "d9", "title": "x"}', "text")])
def test_missing_field_names_file_and_line(tiny_beir, row, field):
    path = tiny_beir / "corpus.jsonl"
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(DataError, match=rf"corpus\.jsonl:7: missing field\(s\) '{field}'"):
        load_dataset(tiny_beir)


def test_missing_query_text(tiny_beir):
    path = tiny_beir / "queries.jsonl"
    path.write_text('{"_id": "q1"}\n' + path.read_text())
    with pytest.raises(DataError, match=r"queries\.jsonl:1: missing field\(s\) 'text'"):
        load_dataset(tiny_beir)


def test_non_utf8_line(tiny_beir):
    path = tiny_beir / "corpus.jsonl"
    path.write_bytes(path.read_bytes() + b'{"_id": "d9", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"corpus\.jsonl:7: not valid UTF-8"):
        load_dataset(tiny_beir)


def test_unknown_ids_warn_once_with_count(tiny_beir):
    path = tiny_beir / "qrels" / "test.tsv"
    path.write_text(path.read_text() + "q1\tnope1\t1\nq2\tnope2\t1\nqX\td1\t1\n")
    with pytest.warns(UserWarning, match=r"2 row\(s\) name doc ids absent.*1 row\(s\) name query ids absent") as rec:
        ds = load_dataset(tiny_beir)
    assert len(rec) == 1
    assert ds.qrels["q1"]["nope1"] == 1  # evaluation continues with the full qrels


def test_empty_corpus(tiny_beir):
    (tiny_beir / "corpus.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty corpus"):
        load_dataset(tiny_beir)


def test_no_queries_for_split(tiny_beir):
    (tiny_beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nzz\td1\t1\n")
    with pytest.raises(DataError, match="no queries for split 'dev'"):
        load_dataset(tiny_beir, "dev")


def test_unknown_split_lists_existing(tiny_beir):
    with pytest.raises(DataError, match="unknown split 'dev'; splits found: test, train"):
        load_dataset(tiny_beir, "dev")


def test_bad_qrels_row(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\tx\n")
    with pytest.raises(DataError, match=r"q\.tsv:2: relevance 'x'"):
        load_qrels(path)


def test_select_queries_sorted_prefix():
    assert list(select_queries({"b": "", "a": "", "c": ""}, 2)) == ["a", "b"]
    assert len(select_queries({"b": "", "a": ""}, None)) == 2


def test_resolver(tiny_beir, monkeypatch):
    assert resolve_dataset(tiny_beir) == tiny_beir
    monkeypatch.setenv("DENSEKIT_DATA", str(tiny_beir.parent))
    assert resolve_dataset("tiny") == tiny_beir
    with pytest.raises(DataError, match="not in \\$DENSEKIT_DATA"):
        resolve_dataset("nope")


def test_download_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSEKIT_OFFLINE", "1")
    with pytest.raises(DataError, match="offline mode"):
        download("scifact", tmp_path)
    assert not any(tmp_path.iterdir())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_unreachable_is_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DENSEKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    url = f"http://127.0.0.1:{_free_port()}/x.zip"  # nothing listens there
    with pytest.raises(DataError, match="cannot download"):
        download("x", tmp_path, url=url, timeout=2)
    assert not (tmp_path / "x").exists()


@pytest.fixture
def zip_server(tiny_beir, serve_zip):
    return serve_zip(tiny_beir, "tiny")


def test_download_checks_md5_and_unpacks(tmp_path, zip_server, monkeypatch):
    monkeypatch.delenv("DENSEKIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    url, md5 = zip_server
    out = tmp_path / "downloads"
    with pytest.raises(DataError, match="does not match"):
        download("tiny", out, url=url, md5="0" * 32)
    assert list(out.iterdir()) == []  # nothing half-written
    target = download("tiny", out, url=url, md5=md5)
    assert target == out / "tiny"
    assert len(load_dataset(target).corpus) == 6
