import numpy as np
import pytest
from upath import UPath

from wb_pipeline.core.data import storage
from wb_pipeline.core.data.storage import content_hash
from wb_pipeline.core.embeddings.vectors import (
    EmbeddingCache,
    EmbeddingTable,
    embed_incrementally,
    read_embedding_table,
)

DIM = 4


def _vectors_for(texts):
    """A deterministic fake encoder: a unit vector from the text's hash."""
    rows = []
    for text in texts:
        seed = int(content_hash(text)[:8], 16)
        v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


class CountingEncoder:
    def __init__(self, texts, fail_on_call=None):
        self.texts, self.calls, self.encoded, self.fail_on_call = texts, 0, [], fail_on_call

    def __call__(self, rows):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt("killed")
        chunk = [self.texts[r] for r in rows]
        self.encoded += chunk
        return _vectors_for(chunk)


def test_embedding_table_roundtrip_and_subset(tmp_path):
    table = EmbeddingTable(nm=["a", "b", "c"], vectors=_vectors_for(["a", "b", "c"]))
    path = UPath(tmp_path / "t.parquet")
    storage.write_parquet(table.to_arrow(), path)  # as the IO manager writes it
    back = read_embedding_table(path)
    assert back.nm.tolist() == ["a", "b", "c"] and back.vectors.dtype == np.float32
    np.testing.assert_array_equal(back.vectors, table.vectors)
    np.testing.assert_array_equal(back.subset(["c", "a"]).vectors, table.vectors[[2, 0]])
    with pytest.raises(KeyError, match="'zz'"):
        back.subset(["zz"])


def test_embedding_table_rejects_misaligned_rows():
    with pytest.raises(ValueError, match="2 ids"):
        EmbeddingTable(nm=["a", "b"], vectors=np.zeros((3, DIM)))


def test_second_run_embeds_only_new_or_changed(tmp_path):
    texts = [f"товар {i}" for i in range(10)]
    hashes = [content_hash(t) for t in texts]
    first = CountingEncoder(texts)
    vectors, stats = embed_incrementally(hashes, first, EmbeddingCache(tmp_path, "fp", DIM), chunk_size=3)
    assert stats.embedded == 10 and stats.from_cache == 0 and first.calls == 4

    texts2 = texts + ["новый товар"]
    texts2[0] = "товар 0 изменён"
    hashes2 = [content_hash(t) for t in texts2]
    second = CountingEncoder(texts2)
    vectors2, stats2 = embed_incrementally(hashes2, second, EmbeddingCache(tmp_path, "fp", DIM), chunk_size=3)
    assert sorted(second.encoded) == sorted(["товар 0 изменён", "новый товар"])
    assert stats2.from_cache == 9 and stats2.embedded == 2
    np.testing.assert_array_equal(vectors2[1:10], vectors[1:10])  # unchanged products keep their vectors
    np.testing.assert_allclose(vectors2, _vectors_for(texts2), rtol=0, atol=0)


def test_other_fingerprint_reembeds_everything(tmp_path):
    texts = ["a", "b"]
    hashes = [content_hash(t) for t in texts]
    embed_incrementally(hashes, CountingEncoder(texts), EmbeddingCache(tmp_path, "fp1", DIM))
    other = CountingEncoder(texts)
    _, stats = embed_incrementally(hashes, other, EmbeddingCache(tmp_path, "fp2", DIM))
    assert stats.embedded == 2 and other.encoded == texts


def test_killed_run_resumes_from_finished_chunks(tmp_path):
    texts = [f"t{i}" for i in range(9)]
    hashes = [content_hash(t) for t in texts]
    dying = CountingEncoder(texts, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        embed_incrementally(hashes, dying, EmbeddingCache(tmp_path, "fp", DIM), chunk_size=3)
    assert len(dying.encoded) == 6
    resumed = CountingEncoder(texts)
    vectors, stats = embed_incrementally(hashes, resumed, EmbeddingCache(tmp_path, "fp", DIM), chunk_size=3)
    assert resumed.encoded == texts[6:] and stats.from_cache == 6
    np.testing.assert_allclose(vectors, _vectors_for(texts))
    leftovers = [p.name for p in (tmp_path / "fp").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_duplicate_inputs_encoded_once_and_concurrent_writers_deduplicated(tmp_path):
    texts = ["same", "same", "other"]
    hashes = [content_hash(t) for t in texts]
    enc = CountingEncoder(texts)
    vectors, _ = embed_incrementally(hashes, enc, EmbeddingCache(tmp_path, "fp", DIM))
    assert enc.encoded == ["same", "other"]
    np.testing.assert_array_equal(vectors[0], vectors[1])
    # a second writer that did not see the first one's shards adds the same hashes again
    late = EmbeddingCache(UPath(tmp_path), "fp", DIM)
    late.add(hashes[:1], _vectors_for(["same"]))
    reloaded = EmbeddingCache(tmp_path, "fp", DIM)
    assert len(reloaded) == 2


def test_cache_dim_mismatch_is_an_error(tmp_path):
    EmbeddingCache(tmp_path, "fp", DIM).add(["h"], np.ones((1, DIM)))
    with pytest.raises(ValueError, match="dim 4, expected 8"):
        EmbeddingCache(tmp_path, "fp", 8)


def test_prepare_chunk_runs_ahead_and_feeds_encode(tmp_path):
    texts = [f"t{i}" for i in range(7)]
    hashes = [content_hash(t) for t in texts]
    prepared = []

    def prepare(rows):
        prepared.append(list(rows))
        return [texts[r].upper() for r in rows]

    def encode(payload):
        return _vectors_for([p.lower() for p in payload])

    vectors, stats = embed_incrementally(
        hashes, encode, EmbeddingCache(tmp_path, "fp", DIM), chunk_size=3, prepare_chunk=prepare
    )
    assert prepared == [[0, 1, 2], [3, 4, 5], [6]]
    np.testing.assert_allclose(vectors, _vectors_for(texts))
