"""Tests of wb_pipeline.core.data.images: hostile zips and bad images end as reasons, never crashes."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from upath import UPath

from wb_pipeline.core.data import images
from wb_pipeline.core.data.images import (
    INDEX_COLUMNS,
    REJECTED_COLUMNS,
    ImageConfig,
    ImageDecodeError,
    archive,
    build_image_index,
    decode_image,
    member_name_rejection,
    nm_from_member_name,
    open_zip,
    read_member,
)
from wb_pipeline.core.data.images import index as image_index

CONFIG = ImageConfig()
SIZE_RULE = ImageConfig(empty_image_rule="size")  # the seed's rule: every image under the size cut is empty


# --- image and zip builders -----------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), quality=90)


def solid_png(mode: str, size: tuple[int, int], color: object) -> bytes:
    return encode(Image.new(mode, size, color), "PNG")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels (a decompression bomb shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def padded_to(data: bytes, total_bytes: int) -> bytes:
    """JPEG bytes padded after the end-of-image marker to an exact size (decoders ignore the tail)."""
    assert len(data) <= total_bytes
    return data + b"\0" * (total_bytes - len(data))


def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns when we write duplicate names
        with zipfile.ZipFile(buffer, "w", compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buffer.getvalue()


def open_members(members: list[tuple[str, bytes]], **kwargs: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(zip_bytes(members, **kwargs)))


def decode_reason(data: bytes, config: ImageConfig = CONFIG) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, config)
    return caught.value.reason


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    return tuple(np.asarray(image)[xy[1], xy[0]].tolist())


# --- member names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "nm"), [("123.jpg", "123"), ("0.jpg", "0"), ("ab_c-9.jpg", "ab_c-9")])
def test_valid_member_names_give_their_nm(name: str, nm: str) -> None:
    assert nm_from_member_name(name) == nm
    assert member_name_rejection(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.jpg", "path_traversal"),
        ("a/../../evil.jpg", "path_traversal"),
        ("/abs.jpg", "absolute_path"),
        ("C:evil.jpg", "absolute_path"),
        ("dir/1.jpg", "nested_path"),
        ("dir/", "directory"),
        ("..\\evil.jpg", "backslash_in_name"),
        ("1\\2.jpg", "backslash_in_name"),
        ("notes.txt", "not_jpg_name"),
        ("1.JPG", "not_jpg_name"),
        ("1.jpeg", "not_jpg_name"),
        ("1.jpg.exe", "not_jpg_name"),
        (".jpg", "bad_nm"),
        ("..jpg", "bad_nm"),
        (" 1.jpg", "bad_nm"),
        ("1 2.jpg", "bad_nm"),
        ("١٢.jpg", "bad_nm"),  # non-ASCII digits are not WB ids
    ],
)
def test_unsafe_or_foreign_member_names_are_refused(name: str, reason: str) -> None:
    assert nm_from_member_name(name) is None
    assert member_name_rejection(name) == reason


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_accepted_name_is_a_plain_root_jpg(name: str) -> None:
    nm = nm_from_member_name(name)
    if nm is not None:
        assert name == nm + ".jpg"
        assert nm and not set(nm) & set("/\\. \0")


# --- decode_image ---------------------------------------------------------------------------------


def test_decodes_a_plain_jpeg_to_rgb() -> None:
    image = decode_image(noise_jpeg(64, 48), CONFIG)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_corrupt_bytes_are_reported_as_corrupt() -> None:
    assert decode_reason(b"this is not an image at all" * 10) == "corrupt"
    # A valid JPEG start with garbage after the header.
    good = noise_jpeg()
    assert decode_reason(good[:200] + bytes(range(256)) * 4) in {"corrupt", "truncated"}


def test_truncated_jpeg_is_reported_as_truncated() -> None:
    data = noise_jpeg(256, 256)
    assert decode_reason(data[: len(data) // 2]) == "truncated"


def test_truncated_png_is_reported_as_truncated() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    assert decode_reason(data[: len(data) // 2]) == "truncated"


def test_zero_bytes_are_reported() -> None:
    assert decode_reason(b"") == "zero_bytes"


def test_cmyk_jpeg_comes_back_as_rgb() -> None:
    red_in_cmyk = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    image = decode_image(red_in_cmyk, CONFIG)
    assert image.mode == "RGB"
    red, green, blue = pixel(image, (8, 8))
    assert red > 230 and green < 25 and blue < 25


def test_grayscale_jpeg_comes_back_as_rgb_with_equal_channels() -> None:
    image = decode_image(encode(Image.new("L", (16, 16), 100), quality=95), CONFIG)
    assert image.mode == "RGB"
    red, green, blue = pixel(image, (8, 8))
    assert red == green == blue and abs(red - 100) <= 2


def test_rgba_png_named_jpg_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    image = decode_image(encode(rgba, "PNG"), CONFIG)
    assert image.mode == "RGB"
    assert pixel(image, (0, 0)) == (255, 255, 255)  # fully transparent -> white, not black
    assert pixel(image, (1, 0)) == (10, 20, 30)


def test_half_transparent_la_and_palette_transparency_are_composited_on_white() -> None:
    half_black = decode_image(solid_png("LA", (2, 2), (0, 128)), CONFIG)
    assert all(abs(channel - 127) <= 1 for channel in pixel(half_black))
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.putpixel((1, 1), 1)
    data = encode(palette, "PNG", transparency=0)
    image = decode_image(data, CONFIG)
    assert pixel(image, (0, 0)) == (255, 255, 255)
    assert pixel(image, (1, 1)) == (200, 0, 0)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_image(data, CONFIG)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255]


def test_thirty_two_bit_integer_mode_is_scaled_as_sixteen_bit() -> None:
    wide = Image.new("I", (3, 1))
    for x, value in enumerate([0, 128 * 257, 70000]):  # above 65535 clips to white
        wide.putpixel((x, 0), value)
    data = encode(wide, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert np.asarray(decode_image(data, CONFIG))[0, :, 1].tolist() == [0, 128, 255]


def test_unsupported_mode_is_reported() -> None:
    assert decode_reason(encode(Image.new("F", (4, 4), 0.5), "TIFF")) == "unsupported_mode"


def test_formats_outside_the_allow_list_are_not_opened() -> None:
    ppm = encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PPM")
    assert decode_reason(ppm) == "corrupt"
    assert decode_image(ppm, ImageConfig(allowed_formats=("PPM",))).size == (4, 4)
    with pytest.raises(ValueError, match="NOPE"):
        ImageConfig(allowed_formats=("JPEG", "NOPE"))


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (20, 10), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    image = decode_image(encode(upright, quality=95, exif=exif.tobytes()), CONFIG)
    assert image.size == (10, 20)
    red, _, blue = pixel(image, (5, 2))  # the stored left half is on top after the turn
    assert red > 200 and blue < 60


def test_bgr_channel_order_swaps_red_and_blue() -> None:
    data = solid_png("RGB", (4, 4), (255, 0, 0))
    assert pixel(decode_image(data, ImageConfig(channel_order="RGB"))) == (255, 0, 0)
    assert pixel(decode_image(data, ImageConfig(channel_order="BGR"))) == (0, 0, 255)
    with pytest.raises(ValueError, match="channel_order"):
        ImageConfig(channel_order="GBR")  # type: ignore[arg-type]


def test_huge_declared_size_is_a_decompression_bomb() -> None:
    assert decode_reason(png_declaring(100_000, 100_000)) == "too_many_pixels"  # beyond PIL's own guard
    assert decode_reason(png_declaring(8_500, 8_500)) == "too_many_pixels"  # 72M: only our 64M guard


def test_bomb_warning_turned_into_an_error_is_still_a_reason() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode_reason(png_declaring(10_000, 10_000)) == "too_many_pixels"


def test_bomb_guard_follows_the_config_per_call_without_touching_pil_globals() -> None:
    before = Image.MAX_IMAGE_PIXELS
    small = ImageConfig(max_image_pixels=100)
    assert decode_reason(noise_jpeg(11, 10), small) == "too_many_pixels"
    assert decode_image(noise_jpeg(10, 10), small).size == (10, 10)
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_to_run_when_truncated_images_are_allowed_globally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(noise_jpeg(), CONFIG)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=2000))
def test_mangled_bytes_never_escape_as_other_errors(garbage: bytes, cut: int) -> None:
    for data in (garbage, noise_jpeg(32, 32)[:cut] + garbage, solid_png("RGBA", (8, 8), (1, 2, 3, 4))[:cut] + garbage):
        try:
            decode_image(data, CONFIG)
        except ImageDecodeError as error:
            assert error.reason in {"zero_bytes", "corrupt", "truncated", "too_many_pixels", "unsupported_mode"}


# --- read_member ----------------------------------------------------------------------------------


def test_read_member_by_exact_name() -> None:
    data = noise_jpeg()
    zf = open_members([("1.jpg", data), ("dir/2.jpg", data)])
    assert read_member(zf, "1.jpg", max_bytes=10**6) == data
    for name in ("2.jpg", "./1.jpg", "dir/2.jpg", "1"):
        with pytest.raises(ImageDecodeError) as caught:
            read_member(zf, name, max_bytes=10**6)
        assert caught.value.reason == "missing_member"


def test_read_member_refuses_oversize_and_duplicates() -> None:
    data = noise_jpeg()
    zf = open_members([("1.jpg", data), ("2.jpg", b"a"), ("2.jpg", b"b")])
    assert read_member(zf, "1.jpg", max_bytes=len(data)) == data
    with pytest.raises(ImageDecodeError) as too_large:
        read_member(zf, "1.jpg", max_bytes=len(data) - 1)
    assert too_large.value.reason == "too_large"
    with pytest.raises(ImageDecodeError) as duplicate:
        read_member(zf, "2.jpg", max_bytes=10)
    assert duplicate.value.reason == "duplicate_name"


def test_damaged_and_encrypted_members_are_reasons() -> None:
    data = noise_jpeg()
    raw = bytearray(zip_bytes([("1.jpg", data), ("2.jpg", data)], compression=zipfile.ZIP_STORED))
    first = raw.index(data)
    raw[first + 100] ^= 0xFF  # damage the stored bytes of 1.jpg: CRC mismatch
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        headers = [i for i in range(len(raw)) if raw.startswith(signature, i)]
        raw[headers[1] + flag_offset] |= 0x01  # mark 2.jpg encrypted (local and central headers)
    zf = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    reasons = {}
    for name in ("1.jpg", "2.jpg"):
        with pytest.raises(ImageDecodeError) as caught:
            read_member(zf, name, max_bytes=10**6)
        reasons[name] = caught.value.reason
    assert reasons == {"1.jpg": "bad_zip_member", "2.jpg": "encrypted"}
    index, _ = build_image_index(zf, None, CONFIG)
    assert index.set_index("nm")["reason"].to_dict() == {"1": "bad_zip_member", "2": "encrypted"}


# --- build_image_index ----------------------------------------------------------------------------


def test_index_of_a_hostile_zip_accounts_for_every_member() -> None:
    good = noise_jpeg(64, 48)
    truncated = noise_jpeg(256, 256, seed=2)
    cmyk = encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)))
    members = [
        ("1.jpg", good),
        ("2.jpg", truncated[: len(truncated) // 2]),
        ("3.jpg", b""),
        ("4.jpg", b"\xff\xd8 definitely not a jpeg"),
        ("5.jpg", cmyk),
        ("6.jpg", solid_png("RGBA", (5, 7), (0, 0, 0, 0))),
        ("7.jpg", encode(Image.fromarray(np.zeros((3, 9), dtype=np.uint16)), "PNG")),
        ("8.jpg", png_declaring(100_000, 100_000)),
        ("10.jpg", png_declaring(8_500, 8_500)),
        ("../evil.jpg", good),
        ("/abs.jpg", good),
        ("dir/1.jpg", good),
        ("dir/", b""),
        ("notes.txt", b"hello"),
        ("9.jpg", good),
        ("9.jpg", b"a different payload"),
    ]
    zf = open_members(members)
    index, rejected = build_image_index(zf, None, CONFIG)

    assert tuple(index.columns) == INDEX_COLUMNS and tuple(rejected.columns) == REJECTED_COLUMNS
    assert len(index) + len(rejected) == len(members)  # nothing silently dropped
    rows = index.set_index("nm")
    assert rows.index.tolist() == ["1", "2", "3", "4", "5", "6", "7", "8", "10"]
    assert rows["decodable"].to_dict() == {
        "1": True,
        "2": False,
        "3": False,
        "4": False,
        "5": True,
        "6": True,
        "7": True,
        "8": False,
        "10": False,
    }
    assert rows.loc[["2", "3", "4", "8", "10"], "reason"].tolist() == [
        "truncated",
        "zero_bytes",
        "corrupt",
        "too_many_pixels",
        "too_many_pixels",
    ]
    assert rows.loc["1", ["width", "height", "mode"]].tolist() == [64, 48, "RGB"]
    assert rows.loc["2", ["width", "height"]].tolist() == [256, 256]  # the header was readable
    assert rows.loc["10", ["width", "height"]].tolist() == [8_500, 8_500]  # our guard: size known
    assert rows.loc["8", ["width", "height"]].isna().all()  # PIL's own guard fired inside open()
    assert rows.loc[["5", "6", "7"], "mode"].tolist() == ["CMYK", "RGBA", "I;16"]
    assert rows.loc["1", "byte_size"] == len(good)
    assert rows["size_from_image_df"].isna().all()

    assert dict(zip(rejected["member"], rejected["reason"])) == {
        "../evil.jpg": "path_traversal",
        "/abs.jpg": "absolute_path",
        "dir/1.jpg": "nested_path",
        "dir/": "directory",
        "notes.txt": "not_jpg_name",
        "9.jpg": "duplicate_name",
    }
    assert (rejected["member"] == "9.jpg").sum() == 2  # both copies: which one is real is unknown
    assert set(rejected["source"]) == {"zip"}


def test_index_dtypes_hold_for_an_empty_zip() -> None:
    index, rejected = build_image_index(open_members([]), None, CONFIG)
    assert index.empty and rejected.empty
    assert tuple(index.columns) == INDEX_COLUMNS and tuple(rejected.columns) == REJECTED_COLUMNS
    assert str(index["byte_size"].dtype) == "int64"
    assert str(index["width"].dtype) == "Int64" and str(index["size_from_image_df"].dtype) == "Int64"
    assert index["decodable"].dtype == bool


def test_empty_image_threshold_boundary_on_member_size() -> None:
    limit = CONFIG.empty_image_max_bytes
    assert limit == 25 * 1024 - 1
    base = noise_jpeg(32, 32)
    zf = open_members([("1.jpg", padded_to(base, limit)), ("2.jpg", padded_to(base, limit + 1))])
    rows = build_image_index(zf, None, SIZE_RULE)[0].set_index("nm")
    assert rows["byte_size"].tolist() == [limit, limit + 1]
    assert rows["decodable"].all()
    assert rows["is_empty"].to_dict() == {"1": True, "2": False}
    assert rows.loc["1", "reason"] == "empty" and pd.isna(rows.loc["2", "reason"])
    assert rows.loc["1", "empty_rule"] == "size" and rows.loc["1", "empty_detail"].startswith("size: ")
    bigger_limit = ImageConfig(empty_image_max_bytes=limit + 1, empty_image_rule="size")
    assert build_image_index(zf, None, bigger_limit)[0]["is_empty"].tolist() == [True, True]
    # the trigger decides which images the content check looks at: only the one under it
    content = build_image_index(zf, None, CONFIG)[0].set_index("nm")
    assert content["pixel_std"].notna().to_dict() == {"1": True, "2": False}
    assert not content["is_empty"].any()  # random noise is no placeholder


def test_image_df_sizes_are_recorded_and_used_for_the_empty_rule() -> None:
    limit = CONFIG.empty_image_max_bytes
    big = padded_to(noise_jpeg(32, 32), limit + 10)
    zf = open_members([("1.jpg", big), ("2.jpg", big), ("3.jpg", big)])
    sizes = pd.DataFrame({"nm": [1, 2, 3], "size": [len(big), limit, limit + 1]})
    rows = build_image_index(zf, sizes, SIZE_RULE)[0].set_index("nm")
    assert rows["size_from_image_df"].tolist() == [len(big), limit, limit + 1]
    assert rows["size_mismatch"].to_dict() == {"1": False, "2": True, "3": True}
    assert rows["is_empty"].to_dict() == {"1": False, "2": True, "3": False}
    # 'empty' outranks 'size_mismatch' in `reason`; both flags stay visible.
    assert rows["reason"].fillna("-").to_dict() == {"1": "-", "2": "empty", "3": "size_mismatch"}
    assert "image_df size" in rows.loc["3", "detail"]


def test_bad_image_df_rows_are_recorded_not_dropped() -> None:
    data = noise_jpeg()
    zf = open_members([("1.jpg", data), ("2.jpg", data), ("3.jpg", data), ("4.jpg", data)])
    sizes = pd.DataFrame(
        {
            "nm": [" 1 ", "2", "2", "3", "3", None, "5", "4", "42"],
            "size": [len(data), len(data), len(data), 10, 11, 5, -1, len(data), 7],
        },
    )
    index, rejected = build_image_index(zf, sizes, CONFIG)
    rows = index.set_index("nm")
    assert rows["size_from_image_df"].tolist() == [len(data), len(data), pd.NA, len(data)]
    assert not rows["size_mismatch"].any()
    from_image_df = rejected[rejected["source"] == "image_df.parquet"]
    assert sorted(zip(from_image_df["reason"], from_image_df["nm"].fillna("-"))) == [
        ("image_df_bad_nm", "-"),
        ("image_df_bad_size", "5"),
        ("image_df_conflicting_sizes", "3"),
        ("image_df_conflicting_sizes", "3"),
        ("image_df_duplicate_nm", "2"),
        ("not_in_zip", "42"),
    ]


def test_image_df_nm_as_float_matches_string_members() -> None:
    data = noise_jpeg()
    sizes = pd.DataFrame({"nm": [1.0, np.nan], "size": [len(data), 1]}, index=[10, 20])
    index, rejected = build_image_index(open_members([("1.jpg", data)]), sizes, CONFIG)
    assert index["size_from_image_df"].tolist() == [len(data)]
    assert rejected["reason"].tolist() == ["image_df_bad_nm"]
    with pytest.raises(ValueError, match=r"image_df.parquet.*nm"):
        build_image_index(open_members([]), pd.DataFrame({"nm": [2.5], "size": [1]}), CONFIG)


def test_image_df_without_required_columns_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"image_df.parquet.*size"):
        build_image_index(open_members([]), pd.DataFrame({"nm": ["1"]}), CONFIG)


def test_index_decode_check_agrees_with_full_decode() -> None:
    data = noise_jpeg(640, 480, seed=3)
    cases = [data, data[: len(data) - 500], data[:300], solid_png("RGB", (3, 3), (0, 0, 0))]
    zf = open_members([(f"{i}.jpg", case) for i, case in enumerate(cases)])
    index = build_image_index(zf, None, ImageConfig(empty_image_max_bytes=0))[0]
    for case, decodable in zip(cases, index["decodable"]):
        try:
            decode_image(case, CONFIG)
            fully_decodable = True
        except ImageDecodeError:
            fully_decodable = False
        assert decodable == fully_decodable


def test_oversize_member_is_indexed_as_too_large() -> None:
    data = noise_jpeg()
    zf = open_members([("1.jpg", data)])
    row = build_image_index(zf, None, ImageConfig(max_member_bytes=len(data) - 1))[0].iloc[0]
    assert not row["decodable"] and row["reason"] == "too_large"


# --- open_zip -------------------------------------------------------------------------------------


@pytest.fixture
def zip_on_disk(tmp_path: Path) -> Path:
    path = tmp_path / "wb_school_horizcv_images.zip"
    path.write_bytes(zip_bytes([("1.jpg", noise_jpeg()), ("../x.jpg", b"")]))
    return path


def test_open_zip_from_paths(zip_on_disk: Path) -> None:
    for source in (zip_on_disk, str(zip_on_disk), UPath(zip_on_disk), f"file://{zip_on_disk}"):
        with open_zip(source) as zf:
            assert zf.namelist() == ["1.jpg", "../x.jpg"]
    assert not any(zip_on_disk.parent.glob("x.jpg")) and not (zip_on_disk.parent / "1.jpg").exists()


def test_open_zip_from_binary_file_objects(zip_on_disk: Path) -> None:
    with open_zip(io.BytesIO(zip_on_disk.read_bytes())) as zf:
        assert build_image_index(zf, None, CONFIG)[0]["nm"].tolist() == ["1"]
    with fsspec.open(f"file://{zip_on_disk}", "rb") as file_object:
        with open_zip(file_object) as zf:
            assert read_member(zf, "1.jpg", 10**6)[:2] == b"\xff\xd8"
        assert not file_object.closed  # the caller's file object stays the caller's


def test_open_zip_through_an_fsspec_filesystem_url(zip_on_disk: Path) -> None:
    memory = fsspec.filesystem("memory")
    memory.pipe("/wb_test_images/images.zip", zip_on_disk.read_bytes())
    try:
        with open_zip("memory://wb_test_images/images.zip") as zf:
            assert build_image_index(zf, None, CONFIG)[0]["decodable"].tolist() == [True]
    finally:
        memory.rm("/wb_test_images", recursive=True)


def test_a_zip_over_a_file_this_module_opened_closes_that_file(zip_on_disk: Path) -> None:
    file_object = zip_on_disk.open("rb")
    archive._OwningZipFile(file_object).close()
    assert file_object.closed
    bad = io.BytesIO(b"not a zip")
    with pytest.raises(zipfile.BadZipFile):
        archive._OwningZipFile(bad)
    assert bad.closed  # no leak when the file is not a zip


def test_open_zip_errors_name_the_input(tmp_path: Path) -> None:
    not_a_zip = tmp_path / "images.zip"
    not_a_zip.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="images.zip.*not a valid zip"):
        open_zip(not_a_zip)

    class NonSeekable(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="seekable"):
        open_zip(NonSeekable())
    with pytest.raises(TypeError, match="int"):
        open_zip(42)  # type: ignore[arg-type]


# --- the member table and zips opened from it -----------------------------------------------------


def _zip_with_table(members: list[tuple[str, bytes]], **kwargs: int) -> tuple[io.BytesIO, pd.DataFrame]:
    data = zip_bytes(members, **kwargs)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return io.BytesIO(data), images.zip_member_table(zf, len(data))


def test_member_table_lists_every_directory_record_with_where_it_lies() -> None:
    members = [("1.jpg", noise_jpeg(seed=1)), ("../x.jpg", b"e"), ("2.jpg", noise_jpeg(seed=2)), ("2.jpg", b"dup")]
    handle, table = _zip_with_table(members)
    assert list(table.columns) == list(images.MEMBER_TABLE_COLUMNS)
    assert table["member"].tolist() == ["1.jpg", "../x.jpg", "2.jpg", "2.jpg"]  # every copy, zip order
    assert table["shard_key"].tolist() == ["1", "../x.jpg", "2", "2"]
    assert table["zip_position"].tolist() == [0, 1, 2, 3]
    assert table["crc32"].tolist() == [zlib.crc32(data) for _, data in members]
    assert table["file_size"].tolist() == [len(data) for _, data in members]
    assert set(table["zip_bytes"]) == {len(handle.getvalue())}


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_zip_opened_from_some_rows_reads_exactly_those_members(compression: int) -> None:
    members = [(f"{nm}.jpg", noise_jpeg(seed=nm)) for nm in range(6)]
    handle, table = _zip_with_table(members, compression=compression)
    rows = table.iloc[[1, 4]]
    with images.open_listed_zip(handle, rows) as listed:
        assert listed.namelist() == ["1.jpg", "4.jpg"] and listed.zip_positions.tolist() == [1, 4]
        assert read_member(listed, "4.jpg", 10**6) == members[4][1]
        with pytest.raises(ImageDecodeError) as caught:
            read_member(listed, "2.jpg", 10**6)  # in the zip, but not in this shard's rows
        assert caught.value.reason == images.REASON_MISSING_MEMBER
        index, _ = build_image_index(listed, None, CONFIG)
    assert index["nm"].tolist() == ["1", "4"] and index["decodable"].all()


def test_a_member_table_that_does_not_fit_the_zip_is_refused() -> None:
    members = [(f"{nm}.jpg", noise_jpeg(seed=nm)) for nm in range(3)]
    handle, table = _zip_with_table(members)
    with pytest.raises(ValueError, match="changed since"):  # another zip (size) than the table's
        images.open_listed_zip(io.BytesIO(handle.getvalue() + b"\0"), table)
    with pytest.raises(ValueError, match="lacks column"):
        images.open_listed_zip(handle, table.drop(columns=["crc32"]))
    forged = table.copy()
    forged.loc[2, "header_offset"] = forged.loc[0, "header_offset"]  # points at another member's bytes
    with images.open_listed_zip(handle, forged) as listed:
        with pytest.raises(ImageDecodeError) as caught:
            read_member(listed, "2.jpg", 10**6)
    assert caught.value.reason == images.REASON_BAD_ZIP_MEMBER and "differ" in caught.value.detail
    wrong_crc = table.copy()
    wrong_crc.loc[1, "crc32"] = wrong_crc.loc[1, "crc32"] ^ 1
    with images.open_listed_zip(handle, wrong_crc) as listed:
        with pytest.raises(ImageDecodeError) as caught:
            read_member(listed, "1.jpg", 10**6)
    assert caught.value.reason == images.REASON_BAD_ZIP_MEMBER


def test_module_does_not_import_dagster() -> None:
    check = "import sys, wb_pipeline.core.data.images; print('dagster' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- incremental index (previous=...) -------------------------------------------------------------


def test_index_with_previous_reuses_unchanged_members_without_reading_them(monkeypatch) -> None:
    limit = CONFIG.empty_image_max_bytes
    members = [
        ("1.jpg", noise_jpeg(seed=1)),
        ("2.jpg", b"not an image"),
        ("3.jpg", padded_to(noise_jpeg(seed=3), limit + 5)),
    ]
    sizes = pd.DataFrame({"nm": [1, 2, 3], "size": [len(members[0][1]), 12, limit + 99]})
    first, _ = build_image_index(open_members(members), sizes, CONFIG)
    assert first["crc32"].tolist() == [zlib.crc32(data) for _, data in members]

    reads: list[str] = []
    real_read = archive._read_info
    monkeypatch.setattr(
        image_index, "_read_info", lambda zf, info, cap: reads.append(info.filename) or real_read(zf, info, cap)
    )
    again, _ = build_image_index(open_members(members), sizes, CONFIG, previous=first)
    assert reads == []
    pd.testing.assert_frame_equal(again, first)

    # One member changed, one added: only those two are read; flags follow the new image_df.
    changed = [("1.jpg", noise_jpeg(seed=11)), members[1], members[2], ("4.jpg", noise_jpeg(seed=4))]
    new_sizes = pd.DataFrame({"nm": [1, 2, 3, 4], "size": [len(changed[0][1]), 12, limit + 5, len(changed[3][1])]})
    grown, _ = build_image_index(open_members(changed), new_sizes, CONFIG, previous=again)
    assert sorted(reads) == ["1.jpg", "4.jpg"]
    fresh, _ = build_image_index(open_members(changed), new_sizes, CONFIG)
    pd.testing.assert_frame_equal(grown, fresh)
    assert fresh.set_index("nm").loc["3", "size_mismatch"] == False  # noqa: E712 - numpy bool
    assert first.set_index("nm").loc["3", "reason"] == "size_mismatch"


def test_index_previous_without_crc_column_is_refused() -> None:
    first, _ = build_image_index(open_members([("1.jpg", noise_jpeg())]), None, CONFIG)
    with pytest.raises(ValueError, match="crc32"):
        build_image_index(open_members([("1.jpg", noise_jpeg())]), None, CONFIG, previous=first.drop(columns="crc32"))


def test_decode_check_key_changes_with_settings_that_change_the_check() -> None:
    assert images.decode_check_key(CONFIG) == images.decode_check_key(ImageConfig())
    assert images.decode_check_key(CONFIG) != images.decode_check_key(ImageConfig(max_image_pixels=10))
    assert images.decode_check_key(CONFIG) != images.decode_check_key(ImageConfig(max_member_bytes=10))
    # the empty-image rule is recomputed on every run, so it is not part of the key
    assert images.decode_check_key(CONFIG) == images.decode_check_key(ImageConfig(empty_image_max_bytes=1))
    for thresholds in (
        dict(empty_image_rule="size"),
        dict(empty_max_pixel_std=9.0),
        dict(empty_min_repeats=2),
        dict(empty_min_informative_share=0.5),
        dict(empty_min_edge_sharpness=0.9),
        dict(empty_min_body_share=0.5),
        dict(empty_min_ink_spread=20.0),
    ):
        assert images.decode_check_key(CONFIG) == images.decode_check_key(ImageConfig(**thresholds))
    # ... but what the content signals are measured with is
    assert images.decode_check_key(CONFIG) != images.decode_check_key(ImageConfig(empty_analysis_pixels=4096))
    assert images.decode_check_key(CONFIG) != images.decode_check_key(ImageConfig(empty_informative_delta=8))


# --- empty images by content ----------------------------------------------------------------------
# Small product shots that must be KEPT and placeholder kinds that must be REJECTED, drawn here
# (independently of the sample generator) at marketplace sizes, all below the 25 KB size trigger.


def product_on_white(width: int = 400, height: int = 520, colour=(40, 60, 150), outline=(20, 30, 80)) -> Image.Image:
    """A clean studio shot: one object (a bag-like shape with a handle) on a white background."""
    from PIL import ImageDraw, ImageFilter

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.25, height * 0.85, width * 0.75, height * 0.9], fill=(235, 235, 235))  # soft shadow
    draw.rounded_rectangle(
        [width * 0.22, height * 0.35, width * 0.78, height * 0.86],
        radius=width * 0.05,
        fill=colour,
        outline=outline,
        width=4,
    )
    draw.arc([width * 0.35, height * 0.15, width * 0.65, height * 0.5], 180, 360, fill=outline, width=8)
    draw.line([width * 0.3, height * 0.5, width * 0.7, height * 0.5], fill=outline, width=3)
    return image.filter(ImageFilter.SMOOTH)


def no_photo_graphic(width: int = 400, height: int = 533) -> Image.Image:
    """A "no photo" placeholder: a thin grey camera outline and a caption on a light card."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), (243, 243, 243))
    draw, grey = ImageDraw.Draw(image), (170, 170, 170)
    draw.rounded_rectangle([width * 0.35, height * 0.35, width * 0.65, height * 0.52], radius=8, outline=grey, width=3)
    draw.ellipse([width * 0.45, height * 0.39, width * 0.55, height * 0.48], outline=grey, width=3)
    draw.text((width / 2, height * 0.58), "no photo", fill=grey, font=ImageFont.load_default(size=26), anchor="mt")
    return image


def big_logo_badge(width: int = 400, height: int = 533) -> Image.Image:
    """A marketplace-logo placeholder that looks like a product to every pixel rule (a large, sharp,
    colourful badge): only its repetition over many cards gives it away."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([width * 0.2, height * 0.3, width * 0.8, height * 0.7], radius=30, fill=(203, 17, 171))
    draw.text((width / 2, height / 2), "WB", fill=(255, 255, 255), font=ImageFont.load_default(size=90), anchor="mm")
    return image


def small_product(width: int = 400, height: int = 533, colour=(220, 40, 110), backdrop=(236, 237, 239)) -> Image.Image:
    """A small swimwear-like product alone on a plain studio backdrop (under 5% of the frame, as a
    bikini or a small box in a catalogue's fixed framing): a solid body, lit from one side and
    darker towards its rim, with a knit texture, as a real photo has however small the product."""
    from PIL import ImageFilter

    w, h = int(width * 0.36), int(width * 0.16)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xx / w - 0.5, yy / h - 0.5
    inside = (u / 0.5) ** 2 + (v / 0.5) ** 2 <= 1.0
    light = -100.0 * (u**2 + v**2) + 30.0 * u + 10.0 * np.sin(xx * 1.7) * np.sin(yy * 1.3)
    pixels = np.empty((height, width, 3), np.float32)
    pixels[:] = backdrop
    patch = pixels[int(height * 0.45) : int(height * 0.45) + h, int(width * 0.32) : int(width * 0.32) + w]
    patch[inside] = (np.asarray(colour, np.float32) + light[:, :, None])[inside]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


def bold_caption(width: int = 400, height: int = 533) -> Image.Image:
    """A "no image" placeholder in bold letters: strokes thick enough to have a body, one flat ink."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), (240, 240, 240))
    ImageDraw.Draw(image).text(
        (width / 2, height / 2),
        "NO IMAGE",
        fill=(160, 160, 160),
        anchor="mm",
        font=ImageFont.load_default(size=44),
        stroke_width=2,
        stroke_fill=(160, 160, 160),
    )
    return image


def filled_camera_icon(width: int = 400, height: int = 533) -> Image.Image:
    """A placeholder with a filled (not outlined) grey camera silhouette: a solid body of one flat ink."""
    from PIL import ImageDraw

    image = Image.new("RGB", (width, height), (242, 242, 242))
    draw, grey = ImageDraw.Draw(image), (185, 185, 185)
    draw.rounded_rectangle([width * 0.35, height * 0.40, width * 0.65, height * 0.54], radius=6, fill=grey)
    draw.rectangle([width * 0.45, height * 0.37, width * 0.55, height * 0.41], fill=grey)
    draw.ellipse([width * 0.45, height * 0.42, width * 0.55, height * 0.52], fill=(242, 242, 242))
    return image


def small_jpeg(image: Image.Image, quality: int = 85) -> bytes:
    data = encode(image, quality=quality)
    assert len(data) <= CONFIG.empty_image_max_bytes, "a test image meant to be small is not"
    return data


def test_content_rule_keeps_small_clean_shots_and_rejects_each_placeholder_kind() -> None:
    from PIL import ImageFilter

    shot = product_on_white()
    kept = {
        "shot": small_jpeg(shot),
        "white_on_white": small_jpeg(product_on_white(colour=(236, 236, 238), outline=(180, 180, 185))),
        "thin_object": small_jpeg(product_on_white(width=120, height=520, colour=(230, 40, 120))),
        "grayscale_shot": small_jpeg(shot.convert("L")),
    }
    placeholders = {
        "uniform_white": (small_jpeg(Image.new("RGB", (600, 800), (255, 255, 255))), "near_uniform"),
        "uniform_beige": (small_jpeg(Image.new("RGB", (600, 800), (242, 236, 224))), "near_uniform"),
        "no_photo": (small_jpeg(no_photo_graphic()), "tiny_informative_area"),
        "blurred": (small_jpeg(shot.filter(ImageFilter.GaussianBlur(max(shot.size) * 0.03)), 70), "blurred"),
    }
    names = list(kept) + list(placeholders)
    members = [(f"{i}.jpg", data) for i, data in enumerate(list(kept.values()) + [d for d, _ in placeholders.values()])]
    rows = build_image_index(open_members(members), None, CONFIG)[0]
    rows.index = names
    assert rows["decodable"].all() and rows["pixel_std"].notna().all()
    assert not rows.loc[list(kept), "is_empty"].any(), rows.loc[
        list(kept), ["pixel_std", "informative_share", "edge_sharpness"]
    ]
    for name, (_, rule) in placeholders.items():
        assert rows.loc[name, "is_empty"] and rows.loc[name, "reason"] == "empty", name
        assert rows.loc[name, "empty_rule"] == rule and rows.loc[name, "empty_detail"].startswith(f"{rule}: "), name
    assert rows.loc[list(kept), "empty_rule"].isna().all() and rows.loc[list(kept), "reason"].isna().all()
    # the seed's size rule, still available as config, throws the good shots away too
    by_size = build_image_index(open_members(members), None, SIZE_RULE)[0]
    assert by_size["is_empty"].all() and set(by_size["empty_rule"]) == {"size"}


def test_a_small_product_on_a_plain_backdrop_is_kept_while_flat_or_thin_graphics_are_not() -> None:
    # Products that fill under 5% of the frame (what the tiny-area rule alone rejected on a real
    # catalogue's bikinis) and placeholders whose graphic has a body too (bold letters, a filled icon).
    products = {
        "pink": small_product(),
        "black": small_product(colour=(40, 40, 46)),
        "grey_backdrop_white": small_product(colour=(252, 252, 252), backdrop=(214, 214, 218)),
    }
    graphics = {"no_photo": no_photo_graphic(), "bold_caption": bold_caption(), "filled_icon": filled_camera_icon()}
    members = [(f"{i}.jpg", small_jpeg(image)) for i, image in enumerate([*products.values(), *graphics.values()])]
    rows = build_image_index(open_members(members), None, CONFIG)[0]
    rows.index = [*products, *graphics]
    assert (rows["informative_share"] < CONFIG.empty_min_informative_share).all()  # all are "tiny"
    assert not rows.loc[list(products), "is_empty"].any(), rows[["body_share", "ink_spread"]]
    assert (rows.loc[list(products), "body_share"] >= CONFIG.empty_min_body_share).all()
    assert (rows.loc[list(products), "ink_spread"] >= CONFIG.empty_min_ink_spread).all()
    assert (rows.loc[list(graphics), "empty_rule"] == "tiny_informative_area").all()
    # thin line art has (next to) no body; bold letters and a filled icon have one, in one flat ink
    assert rows.loc["no_photo", "body_share"] < CONFIG.empty_min_body_share
    assert rows.loc["no_photo", "empty_detail"].endswith(f"< {CONFIG.empty_min_body_share:.2%}")
    for name in ("bold_caption", "filled_icon"):
        assert rows.loc[name, "body_share"] >= CONFIG.empty_min_body_share, name
        assert rows.loc[name, "ink_spread"] < CONFIG.empty_min_ink_spread, name
        assert "its ink is flat (spread " in rows.loc[name, "empty_detail"], name
    # the exception is what keeps the products: demanding a body no product has rejects them again
    strict = images.apply_empty_image_rule(rows.reset_index(drop=True), ImageConfig(empty_min_body_share=0.5))
    assert strict["is_empty"].all()
    without_ink = images.apply_empty_image_rule(rows.reset_index(drop=True), ImageConfig(empty_min_ink_spread=0.0))
    assert without_ink["is_empty"].tolist() == [False] * 3 + [True, False, False]


def test_content_rule_details_carry_the_measured_value_and_the_threshold() -> None:
    zf = open_members([("1.jpg", small_jpeg(Image.new("RGB", (300, 300), (250, 250, 250))))])
    row = build_image_index(zf, None, ImageConfig(empty_max_pixel_std=3.0))[0].iloc[0]
    assert row["empty_detail"] == f"near_uniform: pixel std {row['pixel_std']:.1f} < 3.0"
    assert row["pixel_std"] < 0.5 and row["informative_share"] == 0.0


def test_a_picture_repeated_over_many_small_images_is_a_placeholder() -> None:
    badge = big_logo_badge()
    same_bytes = small_jpeg(badge)
    reencoded = small_jpeg(badge, quality=70)  # the same picture in other bytes
    assert same_bytes != reencoded
    shot = small_jpeg(product_on_white())
    members = [(f"{i}.jpg", same_bytes) for i in range(6)] + [(f"{i}.jpg", reencoded) for i in range(6, 10)]
    members += [("100.jpg", shot), ("101.jpg", shot)]  # two listings sharing one real photo
    rows = build_image_index(open_members(members), None, CONFIG)[0].set_index("nm")
    badges = [str(i) for i in range(10)]
    # a single badge passes every pixel rule: only the repetition confirms it
    assert (rows.loc[badges, "informative_share"] > CONFIG.empty_min_informative_share).all()
    assert (rows.loc[badges, "edge_sharpness"] > CONFIG.empty_min_edge_sharpness).all()
    assert rows.loc[badges, "same_image_count"].tolist() == [10] * 10
    assert rows.loc[badges, "is_empty"].all() and set(rows.loc[badges, "empty_rule"]) == {"repeated_placeholder"}
    assert rows.loc[badges[0], "empty_detail"] == "repeated_placeholder: the same picture in 10 small images >= 10"
    assert rows.loc[["100", "101"], "same_image_count"].tolist() == [2, 2]
    assert not rows.loc[["100", "101"], "is_empty"].any()
    # below the minimum repeat count, and with the rule switched off, the badges are kept
    fewer = build_image_index(open_members(members[1:]), None, CONFIG)[0]
    assert not fewer["is_empty"].any()
    off = build_image_index(open_members(members), None, ImageConfig(empty_min_repeats=0))[0]
    assert not off["is_empty"].any()


def test_repeats_count_only_images_under_the_size_trigger() -> None:
    badge = small_jpeg(big_logo_badge())
    members = [(f"{i}.jpg", badge) for i in range(10)]
    sizes = pd.DataFrame({"nm": list(range(10)), "size": [len(badge)] * 9 + [CONFIG.empty_image_max_bytes + 1]})
    rows = build_image_index(open_members(members), sizes, CONFIG)[0]
    assert rows["same_image_count"].tolist() == [9] * 9 + [pd.NA]
    assert not rows["is_empty"].any()


def test_apply_empty_image_rule_is_idempotent_and_follows_new_settings() -> None:
    members = [
        ("1.jpg", small_jpeg(Image.new("RGB", (300, 300), (240, 240, 240)))),
        ("2.jpg", small_jpeg(product_on_white())),
    ]
    index = build_image_index(open_members(members), None, CONFIG)[0]
    pd.testing.assert_frame_equal(images.apply_empty_image_rule(index, CONFIG), index)
    by_size = images.apply_empty_image_rule(index, SIZE_RULE)
    assert by_size["is_empty"].all() and by_size["reason"].tolist() == ["empty", "empty"]
    back = images.apply_empty_image_rule(by_size, CONFIG)
    pd.testing.assert_frame_equal(back, index)


def test_an_undecodable_small_member_is_not_flagged_empty_by_the_content_rule() -> None:
    rows = build_image_index(open_members([("1.jpg", b"\xff\xd8 not really"), ("2.jpg", b"")]), None, CONFIG)[0]
    assert not rows["decodable"].any() and not rows["is_empty"].any()
    assert rows["pixel_std"].isna().all() and rows["reason"].tolist() == ["corrupt", "zero_bytes"]
    assert build_image_index(open_members([("1.jpg", b"")]), None, SIZE_RULE)[0]["is_empty"].all()


def test_raising_the_size_trigger_measures_the_newly_small_members_once(monkeypatch) -> None:
    small, larger = small_jpeg(Image.new("RGB", (300, 300), (250, 250, 250))), small_jpeg(product_on_white())
    assert len(small) < len(larger)
    members = [("1.jpg", small), ("2.jpg", larger)]
    low = ImageConfig(empty_image_max_bytes=len(small))
    first, _ = build_image_index(open_members(members), None, low)
    assert first["pixel_std"].notna().tolist() == [True, False]
    reads: list[str] = []
    real_read = archive._read_info
    monkeypatch.setattr(
        image_index, "_read_info", lambda zf, info, cap: reads.append(info.filename) or real_read(zf, info, cap)
    )
    raised, _ = build_image_index(open_members(members), None, CONFIG, previous=first)
    assert reads == ["2.jpg"]  # the member that now falls under the trigger, and only it
    pd.testing.assert_frame_equal(raised, build_image_index(open_members(members), None, CONFIG)[0])
    reads.clear()
    again, _ = build_image_index(open_members(members), None, CONFIG, previous=raised)
    assert reads == [] and again["pixel_std"].notna().all()  # content signals are reused, not remeasured


def test_content_signals_of_an_array() -> None:
    flat = np.full((40, 60, 3), 200.0, np.float32)
    signals = images.content_signals(flat, informative_delta=4)
    assert signals.pixel_std == 0.0 and signals.informative_share == 0.0
    spot = flat.copy()
    spot[10:30, 20:40] = (20.0, 20.0, 200.0)  # a sharp dark square, blue kept equal
    signals = images.content_signals(spot, informative_delta=4)
    assert signals.informative_share == pytest.approx(400 / 2400)
    assert signals.edge_sharpness > 0.9 and signals.pixel_std > 50
    assert (
        images.content_signals(spot, 4).pixel_hash == signals.pixel_hash != images.content_signals(flat, 4).pixel_hash
    )
    assert signals.body_share == pytest.approx(18 * 18 / 2400)  # the square less its one-pixel rim
    assert signals.ink_spread == 0.0  # one flat colour
    shaded = flat.copy()
    shaded[10:30, 20:40, 0] = np.linspace(20.0, 120.0, 20)[None, :]  # the same square, lit from one side
    signals = images.content_signals(shaded, informative_delta=4)
    assert signals.body_share == pytest.approx(18 * 18 / 2400)
    assert signals.ink_spread > 30  # its far half (the darker 9 of the body's 18 columns) spans ~42 levels
    line = flat.copy()
    line[10:30, 20:22] = 20.0  # a 2-pixel stroke: no body at all
    assert images.content_signals(line, informative_delta=4).body_share == 0.0
    with pytest.raises(ValueError, match="RGB array"):
        images.content_signals(np.zeros((4, 4)), 4)


def test_empty_image_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="empty_image_rule"):
        ImageConfig(empty_image_rule="sizes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty_min_repeats"):
        ImageConfig(empty_min_repeats=-1)
    with pytest.raises(ValueError, match="empty_min_ink_spread"):
        ImageConfig(empty_min_ink_spread=-1.0)
    with pytest.raises(ValueError, match="empty_analysis_pixels"):
        ImageConfig(empty_analysis_pixels=10)


def _streamed(data: bytes, rows_per_table: int) -> pd.DataFrame:
    return pd.concat(images.iter_member_tables(io.BytesIO(data), rows_per_table), ignore_index=True)


@pytest.mark.parametrize("prefix", [b"", b"junk before the zip " * 50])  # a zip appended to other bytes
def test_the_streamed_directory_equals_zipfiles_own(prefix: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in [
            ("1.jpg", b"a"),
            ("../x.jpg", b"e"),
            ("d/", b""),
            ("2.jpg", b"b"),
            ("2.jpg", b"dup"),
            ("ünïcode.jpg", b"u"),
            ("C:\\evil.jpg", b"w"),
        ]:
            zf.writestr(name, data)
        zf.writestr(zipfile.ZipInfo("3.jpg"), b"stored" * 100, compress_type=zipfile.ZIP_DEFLATED)
    data = prefix + buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        expected = images.zip_member_table(zf, len(data))
    for rows_per_table in (1, 3, 1000):
        pd.testing.assert_frame_equal(_streamed(data, rows_per_table), expected)
    assert images.zip_member_count(io.BytesIO(data)) == len(expected) == 8


def test_a_zip64_directory_is_streamed_like_zipfile_reads_it() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:  # > 65,535 records: a Zip64 end
        for nm in range(70_000):
            zf.writestr(f"{nm}.jpg", b"")
    data = buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        expected = images.zip_member_table(zf, len(data))
    streamed = _streamed(data, 65_536)
    pd.testing.assert_frame_equal(streamed, expected)
    assert images.zip_member_count(io.BytesIO(data)) == 70_000
    with pytest.raises(zipfile.BadZipFile):
        list(images.iter_member_tables(io.BytesIO(b"not a zip at all")))
