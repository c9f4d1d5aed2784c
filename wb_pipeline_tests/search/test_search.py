"""The search group: the faiss index (exact vs ANN, save/load, incremental add), the duplicate graph
on hand-built vectors, the report's scores, queries and their errors, and the assets + checks + CLI
on a tiny materialized run (tiny random text encoder, real default image encoder)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wb_pipeline.core.data import storage
from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.search import duplicates as dup
from wb_pipeline.core.search import scoring
from wb_pipeline.core.search.index import (
    IndexConfig,
    VectorIndex,
    code_ladder,
    exact_search,
    hits_at_k,
    hnsw_bytes,
    index_recall,
    iter_neighbours,
    ivf_bytes,
    knn,
    neighbours_of_all,
    recall_at_k,
)
from wb_pipeline.core.search.query import QueryError, Searcher, clean_query_text, format_results, read_image_file
from wb_pipeline.core.search.spaces import (
    QUERYABLE_SPACES,
    SPACES,
    choose_index_space,
    query_vector,
    space_vectors,
    stored_space_vectors,
)
from wb_pipeline.core.search.store import (
    INDEX_FILE,
    MANIFEST_FILE,
    PRODUCTS_FILE,
    load_build,
    plan_update,
    update_index,
    vector_hashes,
)
from wb_pipeline.defs.resources import WBStorage

REPO_ROOT = Path(__file__).resolve().parents[2]


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _clustered(n: int, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, dim)))
    return _unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32))


HNSW = IndexConfig(exact_below=0, hnsw_m=16, ef_construction=100, ef_search=64, recall_queries=300)


# --- the index ------------------------------------------------------------------------------------


def test_exact_index_equals_brute_force():
    vectors = _clustered(800)
    index = VectorIndex.build(vectors, IndexConfig())
    assert index.kind == "exact" and index.size == 800
    sims, positions = index.search(vectors[:50], 10)
    brute = vectors[:50] @ vectors.T
    np.testing.assert_allclose(sims, -np.sort(-brute, axis=1)[:, :10], atol=1e-5)
    assert (positions[:, 0] == np.arange(50)).all()  # each vector finds itself first


def test_ann_agrees_with_exact_search():
    vectors = _clustered(6000, dim=48)
    ann = VectorIndex.build(vectors, HNSW)
    assert ann.kind == "hnsw"
    queries = vectors[::60]
    exact_sims, exact_positions = exact_search(queries, vectors, 10)
    ann_sims, ann_positions = ann.search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ann_positions, exact_positions)])
    assert overlap >= 0.95
    assert (ann_positions[:, 0] == exact_positions[:, 0]).mean() >= 0.98
    assert recall_at_k(ann, vectors, 10, 500, seed=0) >= 0.95
    # the similarities the ANN reports are the true cosines of what it returns
    np.testing.assert_allclose(ann_sims, np.einsum("qd,qkd->qk", queries, vectors[ann_positions]), atol=1e-5)
    assert recall_at_k(VectorIndex.build(vectors, IndexConfig()), vectors, 10, 100, 0) == 1.0


def test_recall_counts_ties_between_identical_vectors_as_hits():
    base = _clustered(300)
    vectors = np.concatenate([base, base])  # every vector twice: which copy comes back is arbitrary
    ann = VectorIndex.build(vectors, HNSW)
    assert recall_at_k(ann, vectors, 10, 200, seed=0) >= 0.95


def test_neighbours_exclude_the_product_itself():
    vectors = _clustered(500)
    index = VectorIndex.build(vectors, IndexConfig())
    sims, positions = neighbours_of_all(index, 5)
    assert positions.shape == (500, 5)
    assert not (positions == np.arange(500)[:, None]).any()
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first
    twice = np.concatenate([vectors[:3], vectors[:3]])  # identical twins: each finds the other, never itself
    _, twin_positions = knn(twice, 1, IndexConfig())
    assert twin_positions[:, 0].tolist() == [3, 4, 5, 0, 1, 2]


def test_saved_in_faiss_format_and_reloaded(tmp_path):
    vectors = _clustered(400)
    nm = np.array([f"n{i}" for i in range(400)], dtype=object)
    build, stats = update_index(tmp_path, None, nm, vectors, nm, HNSW, info={"space_note": "x"})
    assert stats.mode == "full" and build.index.kind == "hnsw"
    raw = (build.folder / INDEX_FILE).read_bytes()
    assert raw[:4] == b"IHNf"  # faiss's own HNSW-flat header, not a pickle
    assert not raw.startswith(b"\x80")
    manifest = json.loads((build.folder / MANIFEST_FILE).read_text())
    assert manifest["size"] == 400 and manifest["library"] == "faiss-cpu" and manifest["space_note"] == "x"
    assert manifest["kind"] == "hnsw" and manifest["params"]["hnsw_m"] == 16
    products = pd.read_parquet(build.folder / PRODUCTS_FILE)
    assert products["nm"].tolist() == nm.tolist()
    again = load_build(build.folder)
    assert again.index.ef_search == 64
    np.testing.assert_array_equal(again.index.search(vectors[:20], 5)[1], build.index.search(vectors[:20], 5)[1])
    exact, _ = update_index(tmp_path / "exact", None, nm, vectors, nm, IndexConfig())
    assert (exact.folder / INDEX_FILE).read_bytes()[:4] == b"IxFI"


def test_load_build_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable manifest.json"):
        load_build(tmp_path)
    nm = np.array(["a", "b", "c"], dtype=object)
    build, _ = update_index(tmp_path / "i", None, nm, _clustered(3), nm, IndexConfig())
    (build.folder / INDEX_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="index.faiss is missing"):
        load_build(build.folder)


@pytest.mark.parametrize("config", [IndexConfig(recall_queries=100), HNSW], ids=["exact", "hnsw"])
def test_incremental_add_extends_the_previous_build(tmp_path, config):
    vectors = _clustered(3000)
    nm = np.array([str(10_000 + i) for i in range(3000)], dtype=object)
    first, stats = update_index(tmp_path, None, nm[:2900], vectors[:2900], nm[:2900], config)
    assert stats.mode == "full" and first.index.size == 2900
    # a drop of 100 new products, the old ones unchanged (and shuffled: order does not matter)
    order = np.random.default_rng(1).permutation(3000)
    second, stats = update_index(tmp_path, str(first.folder), nm[order], vectors[order], nm[order], config)
    assert stats.mode == "incremental" and stats.added == 100 and second.index.size == 3000
    assert second.folder != first.folder and first.folder.exists()  # copy-on-write: the old build stays
    assert second.products["nm"].tolist()[:2900] == nm[:2900].tolist()  # old positions kept
    assert set(second.products["nm"].tolist()[2900:]) == set(nm[2900:])
    stored = second.index.vectors()
    expected = pd.DataFrame(vectors, index=nm).loc[second.products["nm"]].to_numpy()
    np.testing.assert_array_equal(stored, expected)
    # the same search as a full rebuild (identical for exact; recall-level for HNSW)
    rebuilt = VectorIndex.build(expected, config)
    a, b = second.index.search(expected[:100], 10)[1], rebuilt.search(expected[:100], 10)[1]
    agreement = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)])
    assert agreement == 1.0 if config.exact_below else agreement >= 0.95
    # nothing new: the same build, nothing rewritten
    third, stats = update_index(tmp_path, str(second.folder), nm, vectors, nm, config)
    assert stats.mode == "unchanged" and third.folder == second.folder


def test_a_changed_or_removed_product_or_other_parameters_rebuild(tmp_path):
    vectors = _clustered(200)
    nm = np.array([f"p{i}" for i in range(200)], dtype=object)
    build, _ = update_index(tmp_path, None, nm, vectors, nm, IndexConfig())
    hashes = vector_hashes(vectors)
    changed = vectors.copy()
    changed[7] = -changed[7]
    plan = plan_update(build, nm, vector_hashes(changed), build.manifest["params"])
    assert plan.mode == "full" and "1 indexed products have other vectors" in plan.reason
    plan = plan_update(build, nm[1:], hashes[1:], build.manifest["params"])
    assert plan.mode == "full" and "1 indexed products are gone" in plan.reason
    _, stats = update_index(tmp_path, str(build.folder), nm, vectors, nm, IndexConfig(space="text"))
    assert stats.mode == "full" and "space" in stats.reason
    _, stats = update_index(tmp_path, str(build.folder), nm, vectors, nm, HNSW)  # exact -> HNSW
    assert stats.mode == "full" and "kind" in stats.reason
    _, stats = update_index(tmp_path, str(tmp_path / "gone"), nm, vectors, nm, IndexConfig())
    assert stats.mode == "full" and stats.reason == "no previous index"


def test_old_builds_are_pruned(tmp_path):
    nm = np.array([f"p{i}" for i in range(50)], dtype=object)
    folders = []
    for step in range(5):
        vectors = _clustered(50, seed=step)
        build, _ = update_index(
            tmp_path, str(folders[-1]) if folders else None, nm, vectors, nm, IndexConfig(keep_builds=2)
        )
        folders.append(build.folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in folders[-2:])


def test_index_config_validation():
    with pytest.raises(ValueError, match="space must be one of"):
        IndexConfig(space="audio")
    with pytest.raises(ValueError, match="hnsw_m"):
        IndexConfig(hnsw_m=0)
    with pytest.raises(ValueError, match="NaN"):
        VectorIndex.build(np.full((3, 4), np.nan, np.float32), IndexConfig())
    with pytest.raises(ValueError, match="dimension 8, the index holds 4"):
        VectorIndex.build(_unit(np.eye(4)), IndexConfig()).search(np.ones((1, 8), np.float32), 1)
    with pytest.raises(ValueError, match="ivf_codes must be 'auto' or a faiss code spec"):
        IndexConfig(ivf_codes="IVF64,Flat")  # only the code part: the lists are the index's own
    with pytest.raises(ValueError, match="nprobe"):
        IndexConfig(nprobe=0)


# --- the index to a memory budget ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "dim", "m"), [(3000, 64, 16), (5000, 24, 8)])
def test_hnsw_memory_estimate_matches_the_built_index(n, dim, m):
    index = VectorIndex.build(_clustered(n, dim=dim), IndexConfig(exact_below=0, hnsw_m=m, ef_construction=40))
    assert index.kind == "hnsw"
    assert abs(hnsw_bytes(n, dim, m) / index.memory_bytes() - 1) < 0.03


def test_the_memory_budget_picks_the_kind_and_the_finest_codes_that_fit():
    config = IndexConfig(exact_below=1000, memory_budget_mib=1)
    assert config.kind_for(999, 64) == "exact"
    fits = max(n for n in range(1000, 5000) if hnsw_bytes(n, 64, config.hnsw_m) <= 2**20)  # HNSW in 1 MiB
    assert config.kind_for(fits, 64) == "hnsw" and config.kind_for(fits + 1, 64) == "ivf"
    assert code_ladder(64) == [("SQ8", 64), ("SQ4", 32), ("PQ16", 16), ("PQ8", 8), ("PQ4", 4), ("PQ2", 2)]
    assert [codes for codes, _ in code_ladder(896)][:3] == ["SQ8", "SQ4", "PQ224"]  # m divides the dimension
    chosen = {n: config.codes_for(n, 64) for n in (8_000, 20_000, 30_000, 40_000, 60_000)}
    assert chosen == {8_000: "SQ8", 20_000: "SQ4", 30_000: "PQ16", 40_000: "PQ8", 60_000: "PQ4"}
    for n, codes in chosen.items():  # the finest that fits: the next finer one would not
        ladder = [c for c, _ in code_ladder(64)]
        assert ivf_bytes(n, 64, dict(code_ladder(64))[codes], config.lists_for(n)) <= 2**20
        if codes != "SQ8":
            finer = ladder[ladder.index(codes) - 1]
            assert ivf_bytes(n, 64, dict(code_ladder(64))[finer], config.lists_for(n)) > 2**20
    with pytest.raises(ValueError, match="memory_budget_mib is 1"):
        config.codes_for(100_000, 64)  # 2 bytes a vector + its id + the lists' centroids: over 1 MiB
    assert IndexConfig(ivf_codes="PQ8").codes_for(10**9, 64) == "PQ8"  # pinned codes: no budget search
    assert IndexConfig(ivf_lists=0, train_sample=100_000).lists_for(1_000_000) == 2564  # ~39 points per list
    assert IndexConfig().lists_for(1_000) == 25 and IndexConfig(ivf_lists=7).lists_for(10) == 7


def test_an_index_over_the_budget_is_a_compressed_ivf_that_still_finds_the_neighbours(tmp_path):
    vectors = _clustered(6000, dim=48)
    nm = np.array([str(i) for i in range(6000)], dtype=object)
    config = IndexConfig(exact_below=0, memory_budget_mib=1, recall_queries=300, train_sample=3000)
    build, stats = update_index(tmp_path, None, nm[:5800], vectors[:5800], nm[:5800], config)
    assert build.index.kind == "ivf" and build.manifest["params"]["ivf_codes"] == "SQ8"
    assert build.index.memory_bytes() <= 2**20 < hnsw_bytes(5800, 48, config.hnsw_m)
    assert stats.recall_at_k >= 0.9
    raw = (build.folder / INDEX_FILE).read_bytes()
    assert raw[:4] == b"IwSq"  # faiss's own IVF scalar-quantizer header, not a pickle
    again = load_build(build.folder)
    assert again.index.kind == "ivf" and again.index.nprobe == config.nprobe
    assert load_build(build.folder, nprobe=2).index.nprobe == 2
    # decoded vectors are close to the originals (8-bit codes), in position order
    cosines = np.einsum("nd,nd->n", _unit(again.index.vectors()), vectors[:5800])
    assert np.quantile(cosines, 0.99) > 0.999 and cosines.min() > 0.9
    # a drop is added to the trained index, not rebuilt
    second, stats = update_index(tmp_path, str(build.folder), nm, vectors, nm, config)
    assert stats.mode == "incremental" and stats.added == 200 and second.index.kind == "ivf"
    assert stats.recall_at_k >= 0.9


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_neighbours_in_blocks_equal_one_pass_over_all(kind):
    vectors = _clustered(1000, dim=24)
    index = VectorIndex.build(vectors, IndexConfig(exact_below=0, train_sample=1000), kind)
    whole_sims, whole_positions = neighbours_of_all(index, 5, block_rows=5000)
    blocks = list(iter_neighbours(index, 5, block_rows=300))
    assert [len(rows) for rows, _, _ in blocks] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate([rows for rows, _, _ in blocks]), np.arange(1000))
    np.testing.assert_array_equal(np.concatenate([p for _, _, p in blocks]), whole_positions)
    np.testing.assert_allclose(np.concatenate([s for _, s, _ in blocks]), whole_sims, atol=1e-6)
    assert not (whole_positions == np.arange(1000)[:, None]).any()
    # each block's queries are read from the index a block at a time (decoded codes for ivf)
    np.testing.assert_allclose(index.vectors(300, 600), index.vectors()[300:600], atol=1e-7)


def test_stored_space_vectors_equal_the_in_memory_ones_for_every_space(tmp_path):
    rng = np.random.default_rng(0)
    nm = np.array([f"{100 + i}" for i in range(30)], dtype=object)
    text = EmbeddingTable(nm=nm, vectors=_unit(rng.standard_normal((30, 8))))
    image = EmbeddingTable(nm=nm[::-1].copy(), vectors=_unit(rng.standard_normal((30, 6))))  # another order
    joint = pd.DataFrame({"nm": nm[rng.permutation(30)]})
    for column in ("text_joint", "image_joint", "heads_joint", "combined_joint"):
        joint[column] = list(_unit(rng.standard_normal((30, 4))))
    paths = {name: storage.as_upath(tmp_path / f"{name}.parquet") for name in ("text", "image", "joint")}
    storage.write_parquet(text.to_arrow(), paths["text"])
    storage.write_parquet(image.to_arrow(), paths["image"])
    storage.write_parquet(joint, paths["joint"])
    for space in SPACES:
        expected_nm, expected = space_vectors(space, text, image, joint)
        got_nm, got = stored_space_vectors(space, paths["text"], paths["image"], paths["joint"])
        assert got_nm.tolist() == expected_nm.tolist() == nm.tolist()
        np.testing.assert_allclose(got, expected, atol=1e-7, err_msg=space)
    paths["image"].unlink()  # a joint space never reads the encoders' vectors
    stored_space_vectors("joint", paths["text"], paths["image"], paths["joint"])
    with pytest.raises(FileNotFoundError):
        stored_space_vectors("image", paths["text"], paths["image"], paths["joint"])


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_index_recall_in_blocks_equals_recall_over_all_stored_vectors(kind):
    vectors = _clustered(2000, dim=24)
    index = VectorIndex.build(vectors, IndexConfig(exact_below=0, train_sample=2000, hnsw_m=4, ef_construction=8), kind)
    index.set_effort(4, 1)  # little search effort: recall well below 1, so a wrong merge would show
    whole = recall_at_k(index, index.vectors(), 10, 300, seed=3)
    assert 0.3 < whole < 0.99
    assert index_recall(index, 10, 300, seed=3, block_rows=170) == pytest.approx(whole, abs=1e-12)
    assert index_recall(VectorIndex.build(vectors, IndexConfig()), 10, 300, seed=3) == 1.0


def test_recall_is_judged_on_the_true_similarity_of_what_was_found():
    vectors = _clustered(200, dim=16)
    queries = vectors[:5]
    exact_sims, exact_positions = exact_search(queries, vectors, 3)
    assert hits_at_k(queries, vectors, exact_positions, exact_sims) == 1.0
    wrong = exact_positions.copy()
    wrong[:, 2] = np.argmin(queries @ vectors.T, axis=1)  # the least similar vector instead of the 3rd
    assert hits_at_k(queries, vectors, wrong, exact_sims) == pytest.approx(2 / 3)
    missing = exact_positions.copy()
    missing[:, 1:] = -1  # nothing found
    assert hits_at_k(queries, vectors, missing, exact_sims) == pytest.approx(1 / 3)


# --- the duplicate graph on hand-built vectors ------------------------------------------------------


def _angle_vectors(angles_deg) -> np.ndarray:
    """Unit vectors in the plane at these angles (cosine between two = cos of the angle between)."""
    radians = np.deg2rad(np.asarray(angles_deg, float))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def _hand_built():
    """Seven products: A/B same text (image differs), C/D same image (text differs), E weakly like F
    in both modalities (a floor case), G unlike anything. Cosines by construction:
    text A·B = 1, image C·D = 1, E·F text cos 15° = 0.966 and image cos 25° = 0.906."""
    text = _angle_vectors([0, 0, 60, 120, 200, 215, 300])
    image = _angle_vectors([0, 90, 180, 180, 45, 70, 260])
    return text, image


def test_threshold_graph_on_hand_built_vectors():
    text, image = _hand_built()
    pairs = dup.candidate_pairs(text, image, k=6, index_config=IndexConfig())
    assert len(pairs) == 21  # every pair of 7 is a candidate with k=6
    ab = pairs[(pairs["i"] == 0) & (pairs["j"] == 1)].iloc[0]
    assert ab["text_sim"] == pytest.approx(1.0) and ab["image_sim"] == pytest.approx(0.0, abs=1e-6)
    strict = dup.DuplicateConfig(text_threshold=0.99, image_threshold=0.99, text_floor=2.0, image_floor=2.0)
    groups, edges = dup.group_products(pairs, 7, strict)
    assert edges.sum() == 2  # A–B by text, C–D by image: one modality is enough
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]
    assert len({groups[4], groups[5], groups[6]}) == 3 and groups[4] not in groups[:4]
    # the floors: E and F matched nothing, but both cosines reach the floors -> each keeps the other
    floors = dup.DuplicateConfig(text_threshold=0.99, image_threshold=0.99, text_floor=0.95, image_floor=0.9)
    groups, edges = dup.group_products(pairs, 7, floors)
    assert groups[4] == groups[5] and groups[6] not in (groups[4], groups[0], groups[2])
    assert edges.sum() == 3
    # one modality above its floor is not enough for the fallback
    text_only = dup.DuplicateConfig(text_threshold=0.99, image_threshold=0.99, text_floor=0.95, image_floor=0.95)
    groups, _ = dup.group_products(pairs, 7, text_only)
    assert groups[4] != groups[5]
    frame = dup.groups_frame(np.array(list("ABCDEFG"), dtype=object), groups)
    assert frame["group_size"].tolist() == [2, 2, 2, 2, 1, 1, 1]


def test_floor_fallback_keeps_only_the_best_candidate_of_a_lonely_product():
    # P is near Q and (slightly less) near R in both modalities; Q and R are far apart. The fallback
    # gives P one neighbour (the best), Q and R each keep their best (P) too.
    text = _angle_vectors([0, 10, -14, 180])
    image = _angle_vectors([0, 12, -16, 90])
    pairs = dup.candidate_pairs(text, image, k=3, index_config=IndexConfig())
    edges = dup.match_edges(pairs, 4, 0.999, 0.999, 0.9, 0.9)
    kept = {(int(i), int(j)) for i, j in zip(pairs["i"][edges], pairs["j"][edges])}
    assert kept == {(0, 1), (0, 2)}  # P–Q is P's best (and Q's); P–R is R's best; Q–R (24°) never
    groups = dup.components(4, *np.array(sorted(kept)).T)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_a_text_shared_by_many_products_matches_by_image_only():
    # 0..6 share one generic text (7 products, all text cosines 1.0); 1 and 2 also share a photo;
    # 7 and 8 share a specific text; 6 is a weak look-alike of 0 in both modalities (a floor case)
    rows = [(a, b, 1.0, 0.5) for a in range(7) for b in range(a + 1, 7)] + [(7, 8, 1.0, 0.3)]
    pairs = pd.DataFrame(rows, columns=["i", "j", "text_sim", "image_sim"])
    pairs.loc[(pairs["i"] == 1) & (pairs["j"] == 2), "image_sim"] = 0.995
    pairs.loc[(pairs["i"] == 0) & (pairs["j"] == 6), "image_sim"] = 0.96
    assert dup.generic_text(pairs, 9, 0.99, 5).tolist() == [True] * 7 + [False, False]
    assert dup.generic_text(pairs, 9, 0.99, 7).tolist() == [False] * 9
    groups, edges = dup.group_products(pairs, 9, dup.DuplicateConfig())
    assert groups[1] == groups[2] and groups[7] == groups[8]  # the shared photo; the specific text
    assert len(set(groups[[0, 1, 3, 4, 5, 6, 7]].tolist())) == 7 and edges.sum() == 2  # no floor fallback either
    unguarded = dup.match_edges(pairs, 9, 0.99, 0.99, 0.97, 0.95)
    assert unguarded.sum() == len(pairs)  # without the guard, one text glues all seven together
    assert dup.group_products(pairs, 9, dup.DuplicateConfig(max_title_products=7))[0][:7].tolist() == [0] * 7
    with pytest.raises(ValueError, match="max_title_products"):
        dup.DuplicateConfig(max_title_products=0)


def test_components_chain_transitively_and_number_by_first_appearance():
    groups = dup.components(6, np.array([4, 1]), np.array([5, 4]))
    assert groups.tolist() == [0, 1, 2, 3, 1, 1]


def test_duplicate_config_validation():
    with pytest.raises(ValueError, match="vectors"):
        dup.DuplicateConfig(vectors="clip")
    with pytest.raises(ValueError, match="cosine"):
        dup.DuplicateConfig(text_threshold=3.0)


# --- the report's scores ------------------------------------------------------------------------------


def test_group_scores_against_a_hand_count():
    truth = np.array([0, 0, 0, 1, 1, 2])  # true pairs: 3 + 1 = 4
    predicted = np.array([0, 0, 1, 1, 1, 2])  # predicted pairs: 1 + 3 = 4; correct: (0,1) and (3,4) = 2
    scores = scoring.group_scores(predicted, truth)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    # per product: F1 of its predicted set vs its true set (both including itself)
    per = [2 * 2 / (2 + 3), 2 * 2 / (2 + 3), 2 * 1 / (3 + 3), 2 * 2 / (3 + 2), 2 * 2 / (3 + 2), 1.0]
    assert scores["product_f1"] == pytest.approx(np.mean(per))
    assert scores["product_f1_dup"] == pytest.approx(np.mean(per[:5]))
    assert scores["largest_group"] == 3 and scores["groups"] == 2
    perfect = scoring.group_scores(truth, truth)
    assert perfect["f1"] == perfect["product_f1"] == 1.0
    edges = scoring.edge_scores(np.array([0, 3, 2]), np.array([1, 4, 3]), truth)
    assert edges["precision"] == pytest.approx(2 / 3) and edges["recall"] == pytest.approx(2 / 4)


def test_sweep_purity_and_candidate_recall():
    text, image = _hand_built()
    pairs = dup.candidate_pairs(text, image, k=6, index_config=IndexConfig())
    truth = np.array([0, 0, 1, 1, 2, 3, 4])
    sweep = scoring.threshold_sweep(pairs, 7, {"t": truth}, [0.99, 2.0], [0.99, 2.0], dup.OFF, dup.OFF)
    assert len(sweep) == 4
    both = sweep[(sweep["text_threshold"] == 0.99) & (sweep["image_threshold"] == 0.99)].iloc[0]
    assert both["f1"] == 1.0
    text_only = sweep[(sweep["text_threshold"] == 0.99) & (sweep["image_threshold"] == 2.0)].iloc[0]
    assert text_only["precision"] == 1.0 and text_only["recall"] == 0.5
    assert scoring.candidate_recall(pairs, truth) == 1.0
    purity = scoring.neighbour_purity(np.array([[1, 2], [0, -1], [0, 1]]), ["a", "a", None])
    assert purity["purity"] == 1.0 and purity["neighbours_counted"] == 2  # unlabelled / missing neighbours skipped


# --- spaces and queries ------------------------------------------------------------------------------


def _tables(n: int = 30):
    rng = np.random.default_rng(0)
    nm = np.array([str(100 + i) for i in range(n)], dtype=object)
    text = EmbeddingTable(nm, _unit(rng.standard_normal((n, 6))))
    image = EmbeddingTable(nm[::-1], _unit(rng.standard_normal((n, 4))))  # another row order
    return nm, text, image


def test_spaces_and_query_vectors():
    nm, text, image = _tables()
    got_nm, concat = space_vectors("early_concat", text, image)
    assert got_nm.tolist() == nm.tolist() and concat.shape == (30, 10)
    np.testing.assert_allclose(np.linalg.norm(concat, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(concat[:, 6:] * np.sqrt(2), image.subset(nm).vectors, atol=1e-6)
    query = query_vector("early_concat", text_vector=text.vectors[:1], text_dim=6, image_dim=4)
    assert query.shape == (1, 10) and (query[0, 6:] == 0).all()
    ranking = np.argsort(-(concat @ query[0]))
    np.testing.assert_array_equal(ranking, np.argsort(-(text.vectors @ text.vectors[0])))  # ranks like text alone
    with pytest.raises(QueryError, match="only take a image query"):
        query_vector("image", text_vector=text.vectors[:1])
    with pytest.raises(QueryError, match="exactly one"):
        query_vector("text")
    with pytest.raises(ValueError, match="joint_embeddings"):
        space_vectors("joint", text, image)
    # the joint spaces: a text query enters `joint` (combined vectors [text, image]) as [q, q]/√2 and
    # `joint_text` as the head's vector itself; both rank products by what the text head sees
    from wb_pipeline.core.models.contrastive import ContrastiveConfig, JointSpaceModel, joint_embedding_frame

    torch.manual_seed(0)
    model = JointSpaceModel(6, 4, ContrastiveConfig(joint_dim=3, closed_form_dim=0)).eval()
    joint = joint_embedding_frame(nm, model.project_text(text.vectors), model.project_image(image.subset(nm).vectors))
    _, combined = space_vectors("joint", text, image, joint)
    query = query_vector("joint", text_vector=text.vectors[:1], joint_model=model)
    one_side = query_vector("joint_text", text_vector=text.vectors[:1], joint_model=model)
    assert combined.shape == (30, 6) and query.shape == (1, 6) and one_side.shape == (1, 3)
    np.testing.assert_allclose(query[0, :3], query[0, 3:], atol=1e-6)
    text_joint, image_joint = combined[:, :3] * np.sqrt(2), combined[:, 3:] * np.sqrt(2)
    np.testing.assert_allclose(
        combined @ query[0], (text_joint @ one_side[0] + image_joint @ one_side[0]) / 2, atol=1e-5
    )


def _image_searcher(tmp_path, space: str = "image"):
    nm, text, image = _tables()
    _, vectors = space_vectors(space, text, image)
    build, _ = update_index(
        tmp_path,
        None,
        nm,
        vectors,
        np.array([f"товар\t{i}\n" for i in range(30)], dtype=object),
        IndexConfig(space=space),
        info={"encoder_dims": {"text": 6, "image": 4}},
    )

    class FakeImageEncoder:  # the colour of the photo, as a 4-d vector
        min_decode_side = None

        def encode(self, photos):
            return _unit(np.array([[*np.asarray(p, np.float32).mean(axis=(0, 1)), 1.0] for p in photos]))

    class FakeTextEncoder:
        def encode(self, texts):
            return _unit(np.ones((len(texts), 6)))

    return Searcher(build, text_encoder=FakeTextEncoder(), image_encoder=FakeImageEncoder()), image


def test_bad_queries_give_clear_errors(tmp_path):
    searcher, _ = _image_searcher(tmp_path)
    for empty in ("", "   ", "\n\t", None):
        with pytest.raises(QueryError, match="empty text query"):
            clean_query_text(empty)
    with pytest.raises(QueryError, match="empty text query"):
        searcher.search_text("  ")
    with pytest.raises(QueryError, match="'image' space: it can only take a image query, not a text"):
        searcher.search_text("платье")
    with pytest.raises(QueryError, match="no such file"):
        searcher.search_image(tmp_path / "missing.jpg")
    with pytest.raises(QueryError, match="it is a folder"):
        searcher.search_image(tmp_path)
    garbage = tmp_path / "not-a-photo.jpg"
    garbage.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(QueryError, match=r"cannot be decoded \(corrupt"):
        searcher.search_image(garbage)
    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(QueryError, match="cannot be decoded"):
        searcher.search_image(truncated)
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    with pytest.raises(QueryError, match="cannot be decoded"):
        searcher.search_image(empty_file)
    with pytest.raises(QueryError, match="--top must be >= 1"):
        searcher.top(np.ones((1, 4), np.float32), 0)


def test_an_auto_index_follows_the_equal_k_evidence_among_queryable_spaces():
    # the photo carries the structure: the concatenation beats the joint space; "image" is not queryable by text
    assert choose_index_space({"image": 0.60, "early_concat": 0.58, "joint": 0.30}, 0.02)[0] == "early_concat"
    assert choose_index_space({"early_concat": 0.71, "joint": 0.70}, 0.02)[0] == "joint"  # inside the margin
    space, reason = choose_index_space({}, 0.02)
    assert space == "joint" and "no known classes" in reason
    assert IndexConfig(space="auto").space == "auto"


def test_image_query_and_output_format(tmp_path):
    searcher, _ = _image_searcher(tmp_path)
    photo = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (250, 5, 5)).save(photo)
    results = searcher.search_image(photo, k=5)
    assert len(results) == 5 and results["score"].is_monotonic_decreasing
    lines = format_results(results).split("\n")
    assert len(lines) == 5 and all(len(line.split("\t")) == 3 for line in lines)  # tabs in titles are flattened
    assert lines[0].split("\t")[2].startswith("товар ")
    assert read_image_file(photo).size == (32, 32)


# --- the assets, checks and CLI on a tiny materialized run ------------------------------------------------

SEARCH_SELECTION = dg.AssetSelection.groups("search").upstream().required_multi_asset_neighbors()


@pytest.fixture(scope="module")
def tiny_search_run(small_sample_dir, shared_models_dir, tiny_st_folder, tmp_path_factory):
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource

    root = tmp_path_factory.mktemp("search_run")
    (root / "home").mkdir()
    text_encoder = TextEncoderResource(model=str(tiny_st_folder), max_seq_length=32, cache_dir=str(shared_models_dir))
    defs = build_definitions(
        raw_dir=str(small_sample_dir),
        storage_dir=str(root / "storage"),
        incoming_dir=str(root / "incoming"),
        models_dir=str(shared_models_dir),
        text_encoder=text_encoder,
    )
    with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
        selection = sorted(SEARCH_SELECTION.resolve(defs.resolve_asset_graph()))
        result = defs.resolve_job_def("full_pipeline").execute_in_process(
            instance=instance, asset_selection=selection, raise_on_error=False
        )
        yield {"defs": defs, "instance": instance, "result": result, "root": root, "storage": root / "storage"}


def _meta(run, key: str) -> dict:
    event = run["instance"].get_latest_materialization_event(dg.AssetKey(key))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.mark.slow
def test_search_assets_and_checks_on_a_tiny_run(tiny_search_run):
    run = tiny_search_run
    result = run["result"]
    assert result.success, [e.message for e in result.all_events if e.is_failure][:3]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["product_index_size_matches_space"] and checks["duplicate_groups_partition_products"]
    assert checks["product_index_recall"]
    load = lambda key: run["defs"].load_asset_value(key, instance=run["instance"])  # noqa: E731
    text = load("text_embeddings")
    index_table = load("product_index")
    assert sorted(index_table["nm"]) == sorted(text.nm) and index_table["index_folder"].nunique() == 1
    meta = _meta(run, "product_index")
    assert meta["size"] == len(text) and meta["kind"] == "exact"
    # "auto": the space follows the clustering report's equal-k evidence, among the spaces both queries reach
    evidence = _meta(run, "product_clusters")["space_mean_equal_k_ami"]
    assert (meta["space"], meta["space_reason"]) == choose_index_space(evidence, 0.02)
    assert meta["space"] in QUERYABLE_SPACES
    assert meta["build_mode"] == "full" and meta["recall_at_10"] == 1.0 and meta["index_mib"] > 0
    similar = load("similar_products")
    assert len(similar) == 10 * len(text) and (similar["nm"] != similar["neighbour_nm"]).all()
    assert similar.groupby("nm")["rank"].apply(list).map(lambda r: r == list(range(1, 11))).all()
    groups = load("duplicate_groups")
    assert sorted(groups["nm"]) == sorted(text.nm)
    group_meta = _meta(run, "duplicate_groups")
    assert group_meta["groups_with_duplicates"] >= 1  # the sample has identical photos and titles
    assert "contact_sheet" in group_meta and group_meta["contact_sheet"].startswith(
        "![duplicate groups](data:image/png"
    )
    report = load("duplicate_report")
    configured = report[(report["section"] == "configured") & (report["level"] == "groups")]
    assert set(configured["truth"]) == {"same_title_or_image", "colour_variants", "any_known"}  # the sample's truth
    assert configured["f1"].between(0, 1).all()
    assert {"sweep", "floors", "purity", "variants", "variant_sweep"} <= set(report["section"])
    assert "same_model_other_colour" in _meta(run, "duplicate_report")
    purity = report[report["section"] == "purity"]
    assert {"joint", "text", "image", "early_concat"} <= set(purity["space"])


@pytest.mark.slow
def test_the_joint_model_unchanged_makes_a_drop_an_incremental_add(tiny_search_run, tmp_path):
    """`refresh_search_index` keeps the joint model: when one more product appears (here: one product
    hidden from the first index build, then shown), the index grows by it instead of being rebuilt."""
    from wb_pipeline.core.search.store import update_index as update

    run = tiny_search_run
    build = load_build(run["defs"].load_asset_value("product_index", instance=run["instance"])["index_folder"].iloc[0])
    vectors, nm = build.index.vectors(), build.products["nm"].to_numpy()
    config = IndexConfig(recall_queries=50)
    first, _ = update(tmp_path, None, nm[1:], vectors[1:], nm[1:], config)
    second, stats = update(tmp_path, str(first.folder), nm, vectors, nm, config)
    assert stats.mode == "incremental" and stats.added == 1 and second.index.size == len(nm)
    # and the real job: a second refresh with nothing new is a no-op on the index
    result = run["defs"].resolve_job_def("refresh_search_index").execute_in_process(instance=run["instance"])
    assert result.success
    assert _meta(run, "product_index")["build_mode"] == "unchanged"


@pytest.mark.slow
def test_cli_prints_nm_score_title_lines(tiny_search_run, capsys, monkeypatch):
    from wb_pipeline import search

    run = tiny_search_run
    monkeypatch.setattr(search, "_definitions_for", lambda storage_dir, models_dir: run["defs"])
    code = search.main(["платье женское", "--top", "5", "--storage", str(run["storage"]), "--timing"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().split("\n")
    assert len(lines) == 5
    nms = set(run["defs"].load_asset_value("product_index", instance=run["instance"])["nm"])
    scores = []
    for line in lines:
        nm, score, _title = line.split("\t")
        assert nm in nms
        scores.append(float(score))
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    # the index's own space (`auto` picks joint or early_concat from the clustering evidence of this run)
    index_space = _meta(run, "product_index")["space"]
    assert index_space in ("joint", "early_concat")
    assert "results in" in err and f"space {index_space}," in err
    # a photo of the catalogue finds products too
    photo = run["root"] / "query.jpg"
    Image.new("RGB", (300, 300), (30, 60, 200)).save(photo, format="JPEG", quality=90)
    assert search.main(["--image", str(photo), "--top", "3", "--storage", str(run["storage"])]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 3
    # bad queries: clear errors, exit status 2, no traceback
    assert search.main(["   ", "--storage", str(run["storage"])]) == 2
    assert "empty text query" in capsys.readouterr().err
    assert search.main(["--image", str(run["root"] / "nope.jpg"), "--storage", str(run["storage"])]) == 2
    assert "no such file" in capsys.readouterr().err
    assert search.main(["x", "--image", str(photo), "--storage", str(run["storage"])]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_refuses_another_text_encoder_than_the_index_was_built_with(
    tiny_search_run, capsys, monkeypatch, tiny_st_folder, shared_models_dir
):
    from wb_pipeline import search
    from wb_pipeline.definitions import build_definitions
    from wb_pipeline.defs.embeddings.resources import TextEncoderResource

    run = tiny_search_run
    other_encoder = TextEncoderResource(model=str(tiny_st_folder), max_seq_length=16, cache_dir=str(shared_models_dir))
    other = build_definitions(
        storage_dir=str(run["storage"]), models_dir=str(shared_models_dir), text_encoder=other_encoder
    )
    monkeypatch.setattr(search, "_definitions_for", lambda storage_dir, models_dir: other)
    assert search.main(["платье", "--storage", str(run["storage"])]) == 1
    assert "built from text vectors of encoder" in capsys.readouterr().err


def test_cli_without_a_materialized_index_says_so(tmp_path):
    env = {**os.environ, "WB_PIPELINE_STORAGE_DIR": str(tmp_path / "empty-storage")}
    done = subprocess.run(
        [sys.executable, "-m", "wb_pipeline.search", "женские зимние ботинки", "--top", "10"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 1
    assert "no product index materialized under" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "wb_pipeline.search", ""],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 2 and "empty text query" in done.stderr


# --- the checks, called directly on good and bad inputs -------------------------------------------------


def _index_table(build) -> pd.DataFrame:
    return build.products.assign(position=np.arange(len(build.products)), index_folder=str(build.folder))


def _stored_text(folder, text: EmbeddingTable) -> WBStorage:
    """A storage dir holding `text` as the text_embeddings table (the checks read its ids from there)."""
    pipeline_storage = WBStorage(base_dir=str(folder))
    storage.write_parquet(text.to_arrow(), pipeline_storage.layout.asset_file("text_embeddings"))
    return pipeline_storage


def test_index_size_check_fails_when_the_index_and_the_space_differ(tmp_path):
    from wb_pipeline.defs.search.checks import product_index_size_matches_space

    nm, text, _ = _tables()
    build, _ = update_index(tmp_path, None, nm, text.vectors, nm, IndexConfig())
    stored = _stored_text(tmp_path / "storage", text)
    assert product_index_size_matches_space(product_index=_index_table(build), pipeline_storage=stored).passed
    extra = EmbeddingTable(np.append(nm, "999"), np.vstack([text.vectors, text.vectors[:1]]))
    stored_extra = _stored_text(tmp_path / "storage-extra", extra)
    result = product_index_size_matches_space(product_index=_index_table(build), pipeline_storage=stored_extra)
    assert not result.passed and result.metadata["missing"].value == 1


def test_recall_check_warns_on_a_poor_hnsw(tmp_path):
    from wb_pipeline.defs.search.checks import product_index_recall

    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((3000, 128)))  # no structure: the hardest case for a graph index
    nm = np.array([str(i) for i in range(3000)], dtype=object)
    poor = IndexConfig(exact_below=0, hnsw_m=2, ef_construction=2, ef_search=1, recall_queries=100)
    build, stats = update_index(tmp_path / "poor", None, nm, vectors, nm, poor)
    result = product_index_recall(product_index=_index_table(build))
    assert stats.recall_at_k < 0.95 and not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    good, _ = update_index(tmp_path / "good", None, nm, vectors, nm, IndexConfig())  # exact at this size
    assert product_index_recall(product_index=_index_table(good)).passed


def test_partition_check_catches_a_product_in_two_groups_or_none(tmp_path):
    from wb_pipeline.defs.search.checks import duplicate_groups_partition_products

    nm, text, _ = _tables(4)
    stored = _stored_text(tmp_path, text)
    good = dup.groups_frame(nm, np.array([0, 0, 1, 2]))
    assert duplicate_groups_partition_products(duplicate_groups=good, pipeline_storage=stored).passed
    twice = pd.concat([good, good.iloc[[0]].assign(group_id=2)], ignore_index=True)
    assert not duplicate_groups_partition_products(duplicate_groups=twice, pipeline_storage=stored).passed
    assert not duplicate_groups_partition_products(duplicate_groups=good.iloc[1:], pipeline_storage=stored).passed
    wrong_size = good.assign(group_size=[2, 2, 2, 1])
    result = duplicate_groups_partition_products(duplicate_groups=wrong_size, pipeline_storage=stored)
    assert not result.passed and result.metadata["wrong_group_size"].value == 1


def test_report_table_on_hand_built_products():
    from wb_pipeline.core.search import report

    text, image = _hand_built()
    nm = np.array(list("ABCDEFG"), dtype=object)
    products = pd.DataFrame({"nm": nm, "title": ["t1", "t1", "t2", "t3", "t4", "t5", "t6"], "description": ""})
    image_index = pd.DataFrame({"nm": nm, "content_hash": ["h1", "h2", "h3", "h3", "h4", "h5", "h6"]})
    truths = report.known_duplicates(nm, products, image_index, {"E": "m1", "F": "m1"})
    assert truths["same_title_or_image"].tolist() == [0, 0, 1, 1, 2, 3, 4]  # A/B same title, C/D same photo
    assert truths["colour_variants"][4] == truths["colour_variants"][5]
    settings = {
        "vectors": "encoders",
        "candidates": 6,
        "text_threshold": 0.99,
        "image_threshold": 0.99,
        "text_floor": 0.95,
        "image_floor": 0.9,
    }
    pairs = dup.candidate_pairs(text, image, 6, IndexConfig())
    groups, _ = dup.group_products(pairs, 7, dup.DuplicateConfig(**{k: v for k, v in settings.items()}))
    labels = pd.DataFrame({"category": ["x", "x", "y", "y", None, None, "z"], "sub_category": None})
    table = report.duplicate_report(
        nm,
        groups,
        {"encoders": pairs},
        truths,
        settings,
        report.ReportGrids([0.99, 2.0], [0.99, 2.0], [0.95], [0.9]),
        {"text": text, "image": image},
        labels,
        pd.DataFrame({"nm": ["A"], "neighbour_nm": ["B"]}),
        "text",
        1,
        IndexConfig(),
    )
    configured = table[(table["section"] == "configured") & (table["level"] == "groups")].set_index("truth")
    assert configured.at["same_title_or_image", "precision"] == pytest.approx(2 / 3)  # E–F is not a title/photo twin
    assert configured.at["any_known", "f1"] == 1.0  # ... but a colour variant: every known pair found, nothing else
    assert len(table[table["section"] == "sweep"]) == 4 * 3 and len(table[table["section"] == "floors"]) == 3
    purity = table[table["section"] == "purity"].set_index("space")
    assert set(purity.index) == {"text", "image", "text (similar_products)"}  # sub_category unknown: no rows
    assert purity.at["text (similar_products)", "purity"] == 1.0
    # "same model, other colour": E–F (image cos 0.906, text 0.966) is the one variant pair; C–D's
    # identical photo (cos 1) is an exact duplicate, above the variant matcher's ceiling
    variant = table[table["section"] == "variants"].set_index("level")
    assert (
        variant.at["match edges", "vectors"] == "encoders" and variant.at["match edges", "truth"] == "colour_variants"
    )
    assert variant.at["match edges", "predicted_pairs"] == 1 and variant.at["match edges", "f1"] == 1.0
    assert variant.at["groups", "f1"] == 1.0 and variant.at["match edges", "exact_image_threshold"] == 0.99
    assert len(table[table["section"] == "variant_sweep"]) == 0  # no variant grids given
    without = report.duplicate_report(
        nm,
        groups,
        {"encoders": pairs},
        {"same_title_or_image": truths["same_title_or_image"]},
        settings,
        report.ReportGrids([0.99], [0.99], [0.95], [0.9]),
        {"text": text},
        labels,
        pd.DataFrame(),
        "text",
        1,
        IndexConfig(),
    )
    assert not {"variants", "variant_sweep"} & set(without["section"])  # no variant truth, no variant rows


def test_variant_matcher_pairs_mutual_nearest_photos_below_the_exact_level():
    from wb_pipeline.core.search import variants

    # 0-1 a colour variant (each among the other's 2 nearest photos, text 0.93); 2-3 the same photo (an exact
    # duplicate); 4-5 mutual nearest photos of unrelated products (text 0.3); 6-7 a variant whose texts
    # are further apart; 0-4 photos not near each other
    pairs = pd.DataFrame(
        {
            "i": [0, 2, 4, 6, 0],
            "j": [1, 3, 5, 7, 4],
            "text_sim": [0.93, 1.0, 0.3, 0.85, 0.95],
            "image_sim": [0.83, 0.995, 0.9, 0.8, 0.6],
            "image_rank": [2, 1, 1, 3, 9],
        }
    )
    config = variants.VariantConfig(neighbours=4, exact_image_threshold=0.99, text_floor=0.9)
    assert variants.variant_edges(pairs, config).tolist() == [True, False, False, False, False]
    truth = variants.variant_truth([str(i) for i in range(9)], {"0": "m", "1": "m", "6": "k", "7": "k", "8": "x"})
    assert truth[0] == truth[1] and truth[6] == truth[7] and len(set(truth.tolist())) == 7
    edges, groups = variants.variant_scores(pairs, 9, truth, config)
    assert (edges["level"], groups["level"]) == ("match edges", "groups")
    assert edges["precision"] == 1.0 and edges["recall"] == 0.5 and edges["f1"] == pytest.approx(2 / 3)
    assert edges["candidate_recall"] == 1.0 and groups["f1"] == pytest.approx(2 / 3)
    loose = variants.VariantConfig(neighbours=4, exact_image_threshold=0.99, text_floor=-1.0)
    assert variants.variant_edges(pairs, loose).tolist() == [True, False, True, True, False]
    sweep = variants.variant_sweep(pairs, 9, truth, [1, 4], [-1.0, 0.8], 0.99)
    by_setting = sweep.set_index(["neighbours", "variant_text_floor"])["f1"]
    assert len(sweep) == 4 and by_setting[(4, -1.0)] == pytest.approx(0.8)  # 2 of 3 right, both found
    assert by_setting[(4, 0.8)] == 1.0  # the floor keeps 6-7 (text 0.85) and drops 4-5 (text 0.3)
    assert sweep.loc[sweep["neighbours"] == 1, "predicted_pairs"].tolist() == [1, 0]  # only 4-5 is mutual nearest
    with pytest.raises(ValueError, match="neighbours"):
        variants.VariantConfig(neighbours=0)


def test_candidate_pairs_carry_the_mutual_image_rank():
    positions = np.array([[1, 2], [2, 0], [1, -1], [0, 1]])  # row r: its neighbours, nearest first
    ranks = dup.mutual_rank(positions, np.array([0, 0, 1, 0, 2]), np.array([1, 2, 2, 3, 3]))
    # 0-1: 1 in 0's list at 1, 0 in 1's at 2 -> 2; 0-2: 0 not in 2's list -> k + 1; 1-2: 1 and 1; 0-3: 3 not in 0's
    assert ranks.tolist() == [2, 3, 1, 3, 3]
    text, image = _hand_built()
    pairs = dup.candidate_pairs(text, image, k=6, index_config=IndexConfig())
    ef = pairs[(pairs["i"] == 4) & (pairs["j"] == 5)].iloc[0]
    assert ef["image_rank"] == 2  # F is E's nearest photo; E is F's second (B is 20 degrees from F)
    cd = pairs[(pairs["i"] == 2) & (pairs["j"] == 3)].iloc[0]
    assert cd["image_rank"] == 1 and pairs["image_rank"].between(1, 6).all()


def test_colour_variant_table_conflicts_and_gaps_are_left_out_and_counted():
    from wb_pipeline.core.search.variants import models_from_table

    table = pd.DataFrame(
        {
            "nm": ["1", "2", "3", "3", "4", "4", None, "5", "6"],
            "model_code": ["a", "a", "b", "c", "d", "d", "e", None, " "],
        }
    )
    models, counts = models_from_table(table)
    assert models == {"1": "a", "2": "a", "4": "d"}  # 3 is under two models: known as nothing
    assert counts == {
        "rows": 9,
        "products": 3,
        "models_with_several_products": 1,
        "rows_without_nm_or_model": 3,
        "products_with_conflicting_models": 1,
    }


def test_variant_truth_comes_from_the_raw_folder_then_the_sample_manifest(tmp_path):
    from wb_pipeline.defs.resources import WBRawData
    from wb_pipeline.defs.search.assets import read_variant_truth

    raw = WBRawData(raw_dir=str(tmp_path), incoming_dir=str(tmp_path / "incoming"))
    assert read_variant_truth(raw) == (
        None,
        {"source": "none (no usable colour_variants.parquet, not a generated sample)"},
    )
    (tmp_path / "sample_manifest.json").write_text(json.dumps({"ground_truth": {"colour_variant_models": [[7, 8]]}}))
    assert read_variant_truth(raw)[0] == {"7": "model-0", "8": "model-0"}
    pd.DataFrame({"nm": [1, 2, 3], "code": ["m", "m", "k"]}).to_parquet(tmp_path / "colour_variants.parquet")
    models, info = read_variant_truth(raw)  # a malformed file: reported, and the manifest still serves
    assert models == {"7": "model-0", "8": "model-0"} and "model_code" in info["problem"]
    pd.DataFrame({"nm": [1, 2, 3], "model_code": ["m", "m", "k"], "product_type": "Skirt"}).to_parquet(
        tmp_path / "colour_variants.parquet"
    )
    models, info = read_variant_truth(raw)
    assert models == {"1": "m", "2": "m", "3": "k"} and info["source"] == "colour_variants.parquet"
    assert info["models_with_several_products"] == 1
