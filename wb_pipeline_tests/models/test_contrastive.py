"""Joint text–image space: retrieval metrics, duplicate-aware batching/splitting, CLIP training,
persistence, zero-shot, and the Dagster assets on small synthetic embeddings."""

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from upath import UPath

from wb_pipeline.core.embeddings.vectors import EmbeddingTable
from wb_pipeline.core.model_selection.retrieval_metrics import (
    chance_metrics,
    partner_ranks,
    recall_at_k,
    retrieval_metrics,
)
from wb_pipeline.core.models.contrastive import (
    JOINT_COLUMNS,
    ContrastiveConfig,
    DuplicateFreeBatchSampler,
    JointSpaceModel,
    ResidualHead,
    combine_joint,
    group_split,
    joint_matrix,
    load_joint_model,
    neighbourhood_distillation,
    one_sided_in_combined,
    product_keys,
    regularised_cca,
    save_joint_model,
    train_joint_space,
    training_rows,
    zero_shot_scores,
)
from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager

FAST = ContrastiveConfig(
    joint_dim=16, batch_size=32, max_steps=150, eval_every_steps=5, patience_evals=6, learning_rate=5e-3
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def paired_vectors(
    n: int = 240, latent: int = 6, text_dim: int = 24, image_dim: int = 40, noise: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Text and image vectors that share latent factors through two different random maps (real signal)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    text = z @ rng.normal(size=(latent, text_dim)) + noise * rng.normal(size=(n, text_dim))
    image = z @ rng.normal(size=(latent, image_dim)) + noise * rng.normal(size=(n, image_dim))
    return _unit(text), _unit(image)


def unique_keys(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --- retrieval metrics ------------------------------------------------------------------------


def test_partner_ranks_hand_computed():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # query 0: scores [1, 1, 0], partner 0 tied with 1 -> rank 1 (ties never push down)
    # query 1: scores [0, 0, 1], partner 1 scores 0, one strictly higher -> rank 2
    # query 2: scores [1, 1, 1], partner 2 tied -> rank 1
    assert partner_ranks(queries, gallery).tolist() == [1, 2, 1]
    assert partner_ranks(queries, gallery, block_rows=1).tolist() == [1, 2, 1]


def test_recall_and_median_rank_hand_computed():
    ranks = np.array([1, 3, 7, 12])
    assert recall_at_k(ranks, 1) == 0.25
    assert recall_at_k(ranks, 5) == 0.5
    assert recall_at_k(ranks, 10) == 0.75
    identity = np.eye(4, dtype=np.float32)
    reversed_gallery = identity[::-1].copy()
    metrics = retrieval_metrics(identity, identity)
    assert metrics["text_to_image"] == {"recall_at_1": 1.0, "recall_at_5": 1.0, "recall_at_10": 1.0, "median_rank": 1.0}
    # each query's partner scores 0 while one other row scores 1 -> rank 2 everywhere
    shifted = retrieval_metrics(identity, reversed_gallery)
    assert shifted["image_to_text"]["recall_at_1"] == 0.0
    assert shifted["image_to_text"]["median_rank"] == 2.0


def test_chance_metrics_and_bad_shapes():
    chance = chance_metrics(20)
    assert chance["text_to_image"]["recall_at_5"] == 0.25
    assert chance["image_to_text"]["median_rank"] == 10.5
    with pytest.raises(ValueError, match="must both be"):
        partner_ranks(np.zeros((3, 2)), np.zeros((3, 4)))


# --- groups, split, batches --------------------------------------------------------------------


def test_group_split_keeps_groups_on_one_side():
    groups = np.repeat(np.arange(30), 3)
    train, validation = group_split(groups, 0.2, seed=1)
    assert set(groups[train]).isdisjoint(groups[validation])
    assert len(train) + len(validation) == len(groups)
    with pytest.raises(ValueError, match="duplicate group"):
        group_split(np.zeros(5, dtype=int), 0.2, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    text=st.lists(st.integers(0, 6), min_size=1, max_size=60),
    data=st.data(),
    batch_size=st.integers(1, 9),
    epoch=st.integers(0, 3),
)
def test_duplicates_never_share_a_batch(text, data, batch_size, epoch):
    image = data.draw(st.lists(st.integers(0, 8), min_size=len(text), max_size=len(text)))
    sampler = DuplicateFreeBatchSampler(text, image, batch_size, seed=3)
    batches = list(sampler.epoch(epoch))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(text)))  # every row exactly once
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({text[i] for i in batch}) == len(batch)
        assert len({image[i] for i in batch}) == len(batch)


def test_sampler_shuffles_per_epoch_and_repeats_per_seed():
    sampler = DuplicateFreeBatchSampler(unique_keys(50, "t"), unique_keys(50, "i"), 10, seed=0)
    first = np.concatenate(list(sampler.epoch(0)))
    assert not np.array_equal(first, np.concatenate(list(sampler.epoch(1))))
    again = DuplicateFreeBatchSampler(unique_keys(50, "t"), unique_keys(50, "i"), 10, seed=0)
    assert np.array_equal(first, np.concatenate(list(again.epoch(0))))


# --- training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    text, image = paired_vectors()
    model, report = train_joint_space(text, image, unique_keys(len(text), "t"), unique_keys(len(text), "i"), FAST)
    return text, image, model, report


def test_training_decreases_loss_and_beats_untrained_heads(trained):
    _, _, _, report = trained
    assert report.best_validation_loss < report.validation_curve[0][1] * 0.8
    train_losses = [loss for _, loss in report.train_curve]
    assert np.mean(train_losses[-5:]) < np.mean(train_losses[:5])
    before, after = report.metrics["before"], report.metrics["after"]
    for direction in ("text_to_image", "image_to_text"):
        assert after[direction]["recall_at_1"] > before[direction]["recall_at_1"] + 0.2
        assert after[direction]["recall_at_10"] > 0.8
        assert after[direction]["median_rank"] < before[direction]["median_rank"]
    assert report.n_train_pairs + report.n_validation_pairs == 240
    assert set(report.metrics_frame()["stage"]) == {"chance", "before", "closed_form", "heads", "after"}
    # The joint vectors (CCA part + trained head) retrieve at least as well as the heads alone.
    for direction in ("text_to_image", "image_to_text"):
        assert after[direction]["recall_at_10"] >= report.metrics["heads"][direction]["recall_at_10"] - 0.05


def test_regularised_cca_finds_the_shared_factor_and_heads_only_mode_works():
    rng = np.random.default_rng(5)
    shared = rng.normal(size=(400, 3))
    text = np.hstack([shared @ rng.normal(size=(3, 6)), rng.normal(size=(400, 10))]).astype(np.float32)
    image = np.hstack([rng.normal(size=(400, 8)), shared @ rng.normal(size=(3, 5))]).astype(np.float32)
    text_mean, text_map, image_mean, image_map = regularised_cca(text[:300], image[:300], 3, 0.01)
    a, b = (text[300:] - text_mean) @ text_map, (image[300:] - image_mean) @ image_map
    correlations = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(3)]
    assert min(correlations) > 0.9, correlations  # held-out pairs: the shared factor, not noise
    assert text_map.shape == (16, 3) and image_map.shape == (13, 3)
    heads_only = dataclasses.replace(FAST, closed_form_dim=0, max_steps=20)
    model, report = train_joint_space(text, image, unique_keys(400, "t"), unique_keys(400, "i"), heads_only)
    assert model.output_dim == heads_only.joint_dim and model.project_text(text).shape == (400, heads_only.joint_dim)
    assert set(report.metrics) == {"chance", "before", "after"}


def test_early_stopping_restores_best_state(trained):
    text, image, model, report = trained
    assert 0 < report.best_step <= report.steps
    best = min(loss for _, loss in report.validation_curve)
    assert report.best_validation_loss == pytest.approx(best)
    if report.stopped_early:
        assert report.steps >= report.best_step + FAST.eval_every_steps * FAST.patience_evals


def test_the_kept_model_is_refit_on_all_pairs(trained):
    text, image, model, report = trained
    # the same number of epochs on all pairs as the best validation state took on the training part
    assert report.refit_steps == round(report.best_step * len(text) / report.n_train_pairs) > report.best_step
    # the CCA part of the kept model is fitted on every pair, not on the training part alone
    text_mean, text_map, _, _ = regularised_cca(text, image, model.closed_form_dim, FAST.closed_form_regularization)
    np.testing.assert_allclose(model.text_cca_mean.numpy(), text_mean, atol=1e-6)
    np.testing.assert_allclose(model.text_cca_map.numpy(), text_map, atol=1e-5)
    # without the refit the kept model is the early-stopping state: other weights, the same held-out figures
    no_refit = dataclasses.replace(FAST, refit_on_all_pairs=False)
    stopped, stopped_report = train_joint_space(
        text, image, unique_keys(len(text), "t"), unique_keys(len(text), "i"), no_refit
    )
    assert stopped_report.refit_steps == 0 and stopped_report.metrics == report.metrics
    assert not torch.equal(_head_weights(stopped), _head_weights(model))
    assert not np.allclose(stopped.text_cca_mean.numpy(), text_mean, atol=1e-6)
    # the refit model still aligns the pairs (it has seen them all: R@1 on all pairs above held-out)
    ranks = (model.project_text(text) @ model.project_image(image).T).argmax(axis=1)
    assert (ranks == np.arange(len(text))).mean() >= report.metrics["after"]["text_to_image"]["recall_at_1"]


def _head_weights(model: JointSpaceModel) -> torch.Tensor:
    return torch.cat([parameter.detach().flatten() for parameter in model.text_head.parameters()])


def test_same_seed_same_metrics_and_weights(trained):
    text, image, model, report = trained
    again_model, again = train_joint_space(text, image, unique_keys(len(text), "t"), unique_keys(len(text), "i"), FAST)
    assert again.metrics == report.metrics
    assert again.validation_curve == report.validation_curve
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again_model.state_dict()[name]), name
    other_model, _ = train_joint_space(
        text,
        image,
        unique_keys(len(text), "t"),
        unique_keys(len(text), "i"),
        dataclasses.replace(FAST, seed=7, max_steps=5),
    )
    assert not torch.equal(_head_weights(other_model), _head_weights(model))


def test_training_refuses_bad_input():
    text, image = paired_vectors(n=20)
    keys = unique_keys(20, "k")
    with pytest.raises(ValueError, match="all must be equal"):
        train_joint_space(text, image[:10], keys, keys, FAST)
    broken = text.copy()
    broken[3, 0] = np.nan
    with pytest.raises(ValueError, match="1 text vector row"):
        train_joint_space(broken, image, keys, keys, FAST)
    with pytest.raises(ValueError, match="duplicate group"):
        train_joint_space(text, image, ["same"] * 20, keys, FAST)


def test_unfreezing_encoder_layers_is_refused_clearly():
    with pytest.raises(ValueError, match="precomputed"):
        ContrastiveConfig(unfreeze_text_layers=2)
    with pytest.raises(ValueError, match="validation_fraction"):
        ContrastiveConfig(validation_fraction=1.0)


def test_mlp_head_trains_too():
    text, image = paired_vectors(n=120, seed=4)
    config = dataclasses.replace(FAST, head="mlp", mlp_hidden_dim=32, max_steps=60)
    model, report = train_joint_space(text, image, unique_keys(120, "t"), unique_keys(120, "i"), config)
    assert isinstance(model.text_head, torch.nn.Sequential)
    assert report.best_validation_loss < report.validation_curve[0][1]


def test_residual_head_starts_at_the_text_geometry_and_trains_away_from_it():
    text, image = paired_vectors(n=200, seed=5)  # text 24-d, image 40-d
    config = dataclasses.replace(FAST, head="residual", joint_dim=text.shape[1], closed_form_dim=0)
    untrained = JointSpaceModel(text.shape[1], image.shape[1], config)
    assert isinstance(untrained.text_head, ResidualHead) and isinstance(untrained.image_head, torch.nn.Linear)
    np.testing.assert_allclose(untrained.project_text(text), text, atol=1e-6)  # the identity before training
    model, report = train_joint_space(text, image, unique_keys(200, "t"), unique_keys(200, "i"), config)
    assert float(model.text_head.residual.weight.abs().max()) > 0  # the residual is trained, not frozen
    assert (
        report.metrics["after"]["text_to_image"]["recall_at_1"]
        > report.metrics["chance"]["text_to_image"]["recall_at_1"]
    )
    # text neighbourhoods survive: each product's nearest text neighbour is mostly the same as in the input
    before = (text @ text.T - 2 * np.eye(200)).argmax(axis=1)
    joint = model.project_text(text)
    after = (joint @ joint.T - 2 * np.eye(200)).argmax(axis=1)
    assert (before == after).mean() > 0.5
    # a side whose input dimension differs from joint_dim falls back to a linear head
    other = JointSpaceModel(text.shape[1] + 1, image.shape[1], config)
    assert isinstance(other.text_head, torch.nn.Linear)


def test_neighbourhood_distillation_is_zero_at_the_teacher_and_teaches_only_the_heads():
    rng = np.random.default_rng(3)
    raw = torch.from_numpy(_unit(rng.normal(size=(12, 8))))
    # heads whose similarities equal the raw text's (a rotation of it) match the teacher: no loss
    rotation = torch.from_numpy(np.linalg.qr(rng.normal(size=(8, 8)))[0].astype(np.float32))
    assert float(neighbourhood_distillation(raw, raw @ rotation, raw.clone(), 0.05)) == pytest.approx(0.0, abs=1e-5)
    # heads that scramble the neighbourhoods pay for it, and only the heads get a gradient
    raw.requires_grad_(True)
    scrambled = torch.from_numpy(_unit(rng.normal(size=(12, 8)))).requires_grad_(True)
    loss = neighbourhood_distillation(raw, scrambled, scrambled, 0.05)
    loss.backward()
    assert float(loss) > 0.1 and float(scrambled.grad.abs().sum()) > 0 and raw.grad is None


def test_the_neighbourhood_term_keeps_the_image_side_near_the_text_neighbourhoods():
    text, image = paired_vectors(n=200, seed=7)
    keys_t, keys_i = unique_keys(200, "t"), unique_keys(200, "i")
    on = dataclasses.replace(FAST, closed_form_dim=0)
    off = dataclasses.replace(on, neighbourhood_weight=0.0)
    nearest_text = (text @ text.T - 2 * np.eye(200)).argmax(axis=1)

    def agreement(config: ContrastiveConfig) -> float:
        model, report = train_joint_space(text, image, keys_t, keys_i, config)
        assert (
            report.metrics["after"]["image_to_text"]["recall_at_1"]
            > report.metrics["chance"]["image_to_text"]["recall_at_1"]
        )
        joint = model.project_image(image)
        return float(((joint @ joint.T - 2 * np.eye(200)).argmax(axis=1) == nearest_text).mean())

    assert agreement(on) > agreement(off)  # photos' nearest neighbours follow the text encoder's more often
    with pytest.raises(ValueError, match="neighbourhood"):
        ContrastiveConfig(neighbourhood_temperature=0.0)


# --- persistence, projection, zero-shot --------------------------------------------------------


def test_save_load_round_trip(tmp_path, trained):
    text, image, model, report = trained
    folder = tmp_path / "model"
    save_joint_model(model, folder, {"text": "t-fp", "image": "i-fp"}, report)
    loaded, info = load_joint_model(folder)
    assert info["encoder_fingerprints"] == {"text": "t-fp", "image": "i-fp"}
    assert info["report"]["metrics"] == report.metrics
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.project_text(text), model.project_text(text))
    np.testing.assert_array_equal(loaded.project_image(image), model.project_image(image))
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]


def test_load_rejects_missing_or_mismatched_files(tmp_path, trained):
    _, _, model, _ = trained
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_joint_model(tmp_path / "nothing")
    folder = tmp_path / "model"
    save_joint_model(model, folder)
    other = JointSpaceModel(5, 7, model.config)
    from safetensors.torch import save_file

    save_file(dict(other.state_dict()), str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="do not match"):
        load_joint_model(folder)


def _identity_model(dim: int) -> JointSpaceModel:
    """Both inputs have `joint_dim` dimensions, so both get the residual head: the identity until trained."""
    return JointSpaceModel(dim, dim, ContrastiveConfig(joint_dim=dim, closed_form_dim=0, head="residual"))


def test_zero_shot_scores_are_cosines_in_the_joint_space():
    model = _identity_model(3)
    names = {"для женщин": [1.0, 0.0, 0.0], "зима": [0.0, 2.0, 0.0]}  # unnormalised on purpose

    def encode(texts):
        return np.array([names[t] for t in texts])

    products = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]], dtype=np.float32)
    scores = zero_shot_scores(list(names), products, encode, model)
    np.testing.assert_allclose(scores, [[1.0, 0.0], [0.0, 0.6]], atol=1e-6)
    assert scores.argmax(axis=1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="expected"):
        zero_shot_scores(["зима"], products, lambda texts: np.zeros((1, 5)), model)
    # combined product vectors: a class name is scored against the mean of the two sides' cosines
    image_side = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    combined_scores = zero_shot_scores(list(names), combine_joint(products, image_side), encode, model)
    np.testing.assert_allclose(combined_scores, [[0.5, 0.5], [0.0, 0.3]], atol=1e-6)
    with pytest.raises(ValueError, match="combined"):
        zero_shot_scores(list(names), np.zeros((2, 4), np.float32), encode, model)


def test_combine_joint_concatenates_and_keeps_each_side():
    text, image = _unit(np.array([[1.0, 0.0], [0.0, 1.0]])), _unit(np.array([[0.0, 1.0], [0.0, 1.0]]))
    combined = combine_joint(text, image)
    assert combined.shape == (2, 4)
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(combined[0], np.sqrt(0.5) * np.array([1.0, 0.0, 0.0, 1.0]), atol=1e-6)
    # opposite sides do not cancel (a sum would give the zero vector here)
    opposite = combine_joint(_unit(np.array([[1.0, 0.0]])), _unit(np.array([[-1.0, 0.0]])))
    np.testing.assert_allclose(opposite, np.sqrt(0.5) * np.array([[1.0, 0.0, -1.0, 0.0]]), atol=1e-6)
    # a one-sided query scores a product by the mean of its cosines with the product's two sides
    query = _unit(np.array([[0.6, 0.8]]))
    expected = (query @ text.T + query @ image.T) / 2
    np.testing.assert_allclose(one_sided_in_combined(query) @ combined.T, expected, atol=1e-6)


# --- Dagster assets on a small synthetic catalogue ---------------------------------------------


def synthetic_catalogue(n: int = 150, n_categories: int = 5, seed: int = 0) -> dict:
    """Upstream asset values with real shared signal: category centres drive both modalities.
    Every 10th product repeats the previous one's title and image (duplicates)."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, n_categories, size=n)
    centres = rng.normal(size=(n_categories, 6)) * 3
    z = centres[category] + rng.normal(size=(n, 6))
    text = _unit(z @ rng.normal(size=(6, 24)) + 0.3 * rng.normal(size=(n, 24)))
    image = _unit(z @ rng.normal(size=(6, 40)) + 0.3 * rng.normal(size=(n, 40)))
    nm = np.array([str(100000 + i) for i in range(n)], dtype=object)
    titles = [f"товар {i}" for i in range(n)]
    hashes = [f"h{i:05d}" for i in range(n)]
    for i in range(10, n, 10):
        titles[i], hashes[i] = titles[i - 1], hashes[i - 1]
    clean = pd.DataFrame({"nm": nm, "split": "test", "title": titles, "description": ["описание"] * n})
    labels = pd.DataFrame(
        {
            "nm": nm,
            "split": "test",
            "category": pd.Categorical([f"cat{c}" for c in category]),
            "sub_category": pd.Categorical([f"sub{c}-{i % 2}" for i, c in enumerate(category)]),
        }
    )
    return {
        "text_embeddings": EmbeddingTable(nm=nm, vectors=text),
        "image_embeddings": EmbeddingTable(nm=nm[::-1].copy(), vectors=image[::-1].copy()),  # another row order
        "clean_products": clean,
        "image_index": pd.DataFrame({"nm": nm, "content_hash": hashes}),
        "product_labels": labels,
    }


def stub_assets(values: dict) -> list:
    """Assets with the upstream keys that just return the given values (embeddings record a fingerprint)."""
    stubs = []
    for name, value in values.items():

        def make(value=value, name=name):
            @dg.asset(name=name)
            def stub() -> dg.MaterializeResult:
                return dg.MaterializeResult(value=value, metadata={"encoder_fingerprint": f"fp-{name}"})

            return stub

        stubs.append(make())
    return stubs


def storage_resources(base: str, n_shards: int = 1) -> dict:
    from wb_pipeline.defs.sharding import SHARD_RESULTS_IO_MANAGER, ShardingSettings, ShardResultsIOManager

    return {
        "io_manager": WBStorageIOManager(base_dir=base),
        "pipeline_storage": WBStorage(base_dir=base),
        "sharding": ShardingSettings(n_shards=n_shards),
        SHARD_RESULTS_IO_MANAGER: ShardResultsIOManager(base_dir=base),
    }


def write_embedding_shards(base: str, values: dict, n_shards: int) -> None:
    """The embedding stages' per-shard outputs, as their shard steps leave them (joint_embeddings reads them)."""
    from wb_pipeline.core.data import storage

    layout = storage.StorageLayout(base)
    for stage in ("text_embeddings", "image_embeddings"):
        table = values[stage]
        shard_of = storage.product_shards(list(table.nm), n_shards)
        for index, key in enumerate(storage.shard_keys(n_shards)):
            part = EmbeddingTable(nm=table.nm[shard_of == index], vectors=table.vectors[shard_of == index])
            storage.write_parquet(part.to_arrow(), layout.shard_output(stage, n_shards, key))


FAST_RUN_CONFIG = {"joint_dim": 8, "batch_size": 32, "max_steps": 80, "eval_every_steps": 5, "learning_rate": 0.005}


def test_contrastive_assets_materialize(tmp_path, instance):
    from wb_pipeline.defs.contrastive import assets, checks

    values = synthetic_catalogue()
    write_embedding_shards(str(tmp_path), values, 1)
    result = dg.materialize(
        [
            *stub_assets(values),
            assets.contrastive_model,
            assets.joint_embeddings,
            checks.joint_embeddings_valid,
            checks.training_beats_untrained_heads,
        ],
        resources=storage_resources(str(tmp_path)),
        instance=instance,
        run_config={"ops": {"contrastive_model": {"config": FAST_RUN_CONFIG}}},
    )
    assert result.success
    table = result.asset_value("contrastive_model")
    assert set(table["stage"]) == {"chance", "before", "closed_form", "heads", "after"}
    after = table[table["stage"] == "after"].set_index("direction")
    before = table[table["stage"] == "before"].set_index("direction")
    assert (after["recall_at_5"] > before["recall_at_5"]).all()
    loaded, info = load_joint_model(UPath(table["artifact"].iloc[0]))
    assert info["encoder_fingerprints"] == {"text": "fp-text_embeddings", "image": "fp-image_embeddings"}
    assert loaded.config.joint_dim == 8

    joint = result.asset_value("joint_embeddings")
    assert joint["nm"].tolist() == values["text_embeddings"].nm.tolist()
    combined = joint_matrix(joint, "combined_joint")
    assert combined.shape == (150, 2 * loaded.output_dim) and loaded.output_dim == 8 + loaded.closed_form_dim > 8
    # the image column follows nm, not the image table's own (reversed) order
    expected_image = loaded.project_image(values["image_embeddings"].subset(joint["nm"]).vectors)
    np.testing.assert_allclose(joint_matrix(joint, "image_joint"), expected_image, atol=1e-6)

    materialization = result.asset_materializations_for_node("contrastive_model")[0]
    assert materialization.metadata["loss_curve"].value.startswith("![CLIP loss per step](data:image/png;base64,")
    assert materialization.metadata["pairs_used"].value == 150
    checks_passed = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks_passed == {"joint_embeddings_valid": True, "training_beats_untrained_heads": True}
    assert materialization.metadata["training_products"].value == materialization.metadata["catalogue_products"].value


def test_a_large_catalogue_trains_on_a_bounded_sample_and_every_shard_is_projected_alike(tmp_path, instance):
    from wb_pipeline.defs.contrastive import assets

    values = synthetic_catalogue()
    joints = {}
    for n_shards in (1, 4):
        base = str(tmp_path / f"{n_shards}-shards")
        write_embedding_shards(base, values, n_shards)
        result = dg.materialize(
            [*stub_assets(values), assets.contrastive_model, assets.joint_embeddings],
            resources=storage_resources(base, n_shards),
            instance=instance,
            run_config={"ops": {"contrastive_model": {"config": {**FAST_RUN_CONFIG, "max_training_pairs": 100}}}},
        )
        assert result.success
        metadata = result.asset_materializations_for_node("contrastive_model")[0].metadata
        assert (metadata["training_products"].value, metadata["catalogue_products"].value) == (100, 150)
        assert metadata["pairs_used"].value == 100
        joints[n_shards] = result.asset_value("joint_embeddings")
        assert joints[n_shards]["nm"].tolist() == values["text_embeddings"].nm.tolist()  # every product, in order
    for column in JOINT_COLUMNS:  # the same model projects each shard exactly as the whole catalogue
        np.testing.assert_array_equal(joint_matrix(joints[4], column), joint_matrix(joints[1], column))


def test_training_rows_are_all_or_a_seeded_sample():
    assert training_rows(5, 0, 0).tolist() == [0, 1, 2, 3, 4] == training_rows(5, 5, 3).tolist()
    sample = training_rows(1000, 100, 7)
    assert len(sample) == 100 == len(set(sample.tolist())) and (np.diff(sample) > 0).all() and sample[-1] < 1000
    assert sample.tolist() == training_rows(1000, 100, 7).tolist() != training_rows(1000, 100, 8).tolist()
    with pytest.raises(ValueError, match="max_training_pairs"):
        training_rows(10, -1, 0)


def test_product_keys_normalise_and_keep_every_row():
    products = pd.DataFrame(
        {"nm": ["1", "2", "3"], "title": ["Платье  Красное", "платье красное", None], "description": ["a", "b", None]}
    )
    index = pd.DataFrame({"nm": ["1", "3"], "content_hash": ["h1", "h3"]})
    keys = product_keys(["3", "1", "2", "9"], products, index)
    assert keys["nm"].tolist() == ["3", "1", "2", "9"]
    assert keys["title_key"].tolist() == [None, "платье красное", "платье красное", None]
    assert keys["text_key"].tolist()[1:3] == ["платье красное a", "платье красное b"]
    assert keys["image_key"].tolist() == ["h3", "h1", None, None]


def test_product_keys_leave_a_generic_title_out():
    # seven products under one title made of attribute fields: not duplicates of each other
    products = pd.DataFrame(
        {
            "nm": [str(i) for i in range(9)],
            "title": ["Negro grey P-PLANA SHE"] * 7 + ["Платье красное"] * 2,
            "description": [""] * 6 + ["long", "", ""],
        }
    )
    index = pd.DataFrame({"nm": products["nm"], "content_hash": [f"h{i}" for i in range(9)]})
    keys = product_keys(products["nm"], products, index)
    assert keys["title_key"].tolist() == [None] * 7 + ["платье красное"] * 2
    # title + description: the six with no description share it, the one with a description does not
    assert keys["text_key"].tolist() == [None] * 6 + ["negro grey p-plana she long"] + ["платье красное"] * 2
    wider = product_keys(products["nm"], products, index, max_title_products=7)
    assert wider["title_key"].tolist()[:7] == ["negro grey p-plana she"] * 7


def test_model_fingerprint_changes_with_config_encoders_and_data():
    from wb_pipeline.core.models.contrastive import model_fingerprint

    text, image = paired_vectors(n=10)
    base = model_fingerprint(FAST, {"text": "a"}, text, image)
    assert base == model_fingerprint(FAST, {"text": "a"}, text.copy(), image.copy())
    assert base != model_fingerprint(dataclasses.replace(FAST, seed=1), {"text": "a"}, text, image)
    assert base != model_fingerprint(FAST, {"text": "b"}, text, image)
    changed = text.copy()
    changed[0, 0] += 1e-3
    assert base != model_fingerprint(FAST, {"text": "a"}, changed, image)
