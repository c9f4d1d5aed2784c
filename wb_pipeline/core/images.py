"""Safe access to the WB images zip: member-name validation, the image index and image decoding.

The images come as `wb_school_horizcv_images.zip`, flat, `{nm}.jpg` at the root, possibly 100k+
members and possibly on object storage. Everything here treats the zip as hostile input:

- members are resolved by exact name only; a name with a directory part, `..`, an absolute path, a
  backslash or another extension is never read, it is listed in `rejected_members` with a reason;
- the zip is never extracted to disk, members are read one by one with a byte cap;
- every decode failure becomes an `ImageDecodeError` with a machine-readable `reason`, and in the
  index a row with `decodable=False` and that reason, never a crash and never a silent drop;
- PIL's decompression-bomb guard is applied per call from `ImageConfig.max_image_pixels` without
  touching PIL's global settings; `ImageFile.LOAD_TRUNCATED_IMAGES` is never changed (stays False).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import weakref
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import IO, Literal

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from wb_pipeline.core.embeddings import content_hash
from wb_pipeline.core.ingestion import normalize_nm
from wb_pipeline.core.storage import product_shards
from wb_pipeline.core.schema import IMAGE_SIZES_FILE, IMAGE_SIZES_REQUIRED_COLUMNS

# --- machine-readable reasons -------------------------------------------------------------------
# Why an image cannot be used (index `reason`, `ImageDecodeError.reason`).
REASON_ZERO_BYTES = "zero_bytes"
REASON_CORRUPT = "corrupt"  # not an image of an allowed format, or undecodable data
REASON_TRUNCATED = "truncated"
REASON_TOO_MANY_PIXELS = "too_many_pixels"  # decompression-bomb guard
REASON_UNSUPPORTED_MODE = "unsupported_mode"
REASON_TOO_LARGE = "too_large"  # member bytes above ImageConfig.max_member_bytes
REASON_ENCRYPTED = "encrypted"
REASON_BAD_ZIP_MEMBER = "bad_zip_member"  # CRC error, header/directory mismatch, bad compression
REASON_MISSING_MEMBER = "missing_member"
# Usable but flagged (index only; `decodable` stays True).
REASON_EMPTY = "empty"  # an "empty image" (placeholder) by `ImageConfig.empty_image_rule`
REASON_SIZE_MISMATCH = "size_mismatch"  # image_df.parquet size != zip member size

# Why a zip member (or an image_df row) is not in the index (`rejected_members.reason`).
REJECT_DIRECTORY = "directory"
REJECT_ABSOLUTE_PATH = "absolute_path"
REJECT_PATH_TRAVERSAL = "path_traversal"
REJECT_BACKSLASH = "backslash_in_name"
REJECT_NESTED_PATH = "nested_path"
REJECT_NOT_JPG = "not_jpg_name"
REJECT_BAD_NM = "bad_nm"  # `.jpg` at the root, but the stem is not a plain id
REJECT_DUPLICATE_NAME = "duplicate_name"
REJECT_IMAGE_DF_BAD_NM = "image_df_bad_nm"
REJECT_IMAGE_DF_BAD_SIZE = "image_df_bad_size"
REJECT_IMAGE_DF_DUPLICATE_NM = "image_df_duplicate_nm"
REJECT_IMAGE_DF_CONFLICTING_SIZES = "image_df_conflicting_sizes"
REJECT_NOT_IN_ZIP = "not_in_zip"  # image_df lists an nm the zip has no member for

IMAGE_SUFFIX = ".jpg"
# A product id: ASCII letters, digits, '_' and '-' only (WB ids are digits). No dots, so no '..'.
_NM_PATTERN = re.compile(r"[0-9A-Za-z_-]+", re.ASCII)

# Modes decode_image knows how to turn into 8-bit RGB.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
SUPPORTED_MODES = frozenset(
    {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"} | _ALPHA_MODES | _SIXTEEN_BIT_MODES
)

# Which rule of the content check confirmed an "empty image" (index `empty_rule`, the start of
# `empty_detail` and of `rejected_products.detail`), in the order they are tested.
EMPTY_RULE_SIZE = "size"  # empty_image_rule="size": the seed's size rule alone
EMPTY_RULE_NEAR_UNIFORM = "near_uniform"
EMPTY_RULE_TINY_AREA = "tiny_informative_area"
EMPTY_RULE_BLURRED = "blurred"
EMPTY_RULE_REPEATED = "repeated_placeholder"
EMPTY_RULES = (EMPTY_RULE_SIZE, EMPTY_RULE_NEAR_UNIFORM, EMPTY_RULE_TINY_AREA, EMPTY_RULE_BLURRED, EMPTY_RULE_REPEATED)

INDEX_COLUMNS = (
    "nm", "member", "byte_size", "crc32", "size_from_image_df", "content_hash", "decodable", "width",
    "height", "mode", "reason", "is_empty", "size_mismatch", "detail",
    "pixel_std", "informative_share", "body_share", "ink_spread", "edge_sharpness", "pixel_hash", "same_image_count",
    "empty_rule", "empty_detail",
)
# The content signals of the empty-image check, measured only on members under the size trigger.
CONTENT_SIGNAL_COLUMNS = ("pixel_std", "informative_share", "body_share", "ink_spread", "edge_sharpness", "pixel_hash")
# What reading + decode-checking one member found: all an index row needs besides the image_df
# size and the empty-image rule, so a re-run can take it from the previous index instead of
# reading the member again (see `build_image_index(previous=...)`).
_CHECK_RESULT_COLUMNS = ("content_hash", "decodable", "width", "height", "mode", "reason", "detail",
                         *CONTENT_SIGNAL_COLUMNS)
# Bumped when the decode check or the content signals change, so indexes made by older code are
# not reused (2: content signals of the empty-image check; 3: the drawing's body, body_share / ink_spread).
DECODE_CHECK_VERSION = 3
REJECTED_COLUMNS = ("member", "reason", "nm", "source", "detail")

_EXIF_ORIENTATION_TAG = 0x0112
_EXIF_ORIENTATIONS_SWAPPING_AXES = frozenset({5, 6, 7, 8})
# The decode check in the index only needs to prove the data decodes: ask JPEG for its smallest
# DCT scale (1/8), which still entropy-decodes the whole stream, so truncation is still caught.
_CHECK_DRAFT_SIZE = (1, 1)


@dataclass(frozen=True)
class ImageConfig:
    """Settings of image access; defaults are the WB notebook's values, and for the empty-image
    content check values chosen from principle (docs/DESIGN-NOTES.md "Empty images by content")."""

    # The WB notebook's size rule (image_df.size < 25 KB is "empty") is the TRIGGER: only an image
    # this small is looked at by the content check, and with empty_image_rule="size" it is the rule.
    empty_image_max_bytes: int = 25 * 1024 - 1
    # "content": a small image is empty only when a content rule below confirms it (a placeholder);
    # "size": every small image is empty (the seed's rule; rejects good small product shots).
    empty_image_rule: Literal["content", "size"] = "content"
    # The content signals are measured on the image scaled to about this many pixels (128 x 128).
    empty_analysis_pixels: int = 128 * 128
    # near_uniform: max over R, G, B of the pixel standard deviation below this (grey levels):
    # no more variation than a flat fill plus compression noise.
    empty_max_pixel_std: float = 2.0
    # A pixel is "informative" when a channel differs from the background (the median border
    # colour) by more than this many grey levels (~2 just-noticeable differences).
    empty_informative_delta: int = 4
    # tiny_informative_area: informative pixels below this share of the frame (a product photo
    # shows the product; a placeholder is a flat card with a thin icon or a few letters) ...
    empty_min_informative_share: float = 0.05
    # ... unless the drawing is a solid, varied body, as a small product on a plain backdrop is:
    # its body (informative pixels whose 3 x 3 analysis neighbourhood is informative too, i.e. not
    # a stroke of 1-2 px nor the anti-aliased rim of a shape) covers at least this share of the
    # frame — a 9 x 9 block at 128 x 128 analysis px, 7% of the side: the smallest product a shot
    # frames, while thin line art has a body only where its strokes cross ...
    empty_min_body_share: float = 0.005
    # ... and its "ink" varies: the half of the body farthest from the background (the drawing's
    # own colours, not their blend with the backdrop) spreads over at least this many grey levels
    # (10th-90th percentile, max over R, G, B). A glyph, icon or logo is drawn in one flat ink; a
    # photographed product has shading, fabric, print. The default is `empty_informative_delta`'s
    # 4 levels: the ink varies within itself as visibly as a pixel must differ from the background
    # to count at all. 0 drops the condition (any solid body then counts as a product).
    empty_min_ink_spread: float = 4.0
    # blurred: the sharpest edges (top 0.1% of gradient magnitudes / the value range, per channel) below
    # this; 0.25 is a step edge blurred with a Gaussian of sigma ~1.6 analysis px (1/(sigma*sqrt(2pi))),
    # three times softer than a sharp edge at the analysis scale.
    empty_min_edge_sharpness: float = 0.25
    # repeated_placeholder: at least this many small images with the same pixels (the same
    # picture, whatever its bytes); one placeholder serves many cards, while a real photo is
    # shared by the few variants of one listing. 0 turns the rule off.
    empty_min_repeats: int = 10
    # Decompression-bomb guard, PIL `Image.MAX_IMAGE_PIXELS` semantics, but an error already above
    # this value (PIL only warns up to 2x). PIL's own global guard still applies on top.
    max_image_pixels: int = 64_000_000
    # The original WB zip may be stored BGR (the seed author swapped channels in his loader).
    channel_order: Literal["RGB", "BGR"] = "RGB"
    # A member larger than this is never read (a product photo is a few hundred KB).
    max_member_bytes: int = 64 * 1024 * 1024
    # Formats PIL may try (JPEG includes multi-picture MPO files); keeps plugins that shell out or
    # parse exotic containers (EPS, PSD, ...) off.
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"ImageConfig.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.empty_image_rule not in ("content", "size"):
            raise ValueError(f"ImageConfig.empty_image_rule must be 'content' or 'size', got {self.empty_image_rule!r}")
        for name in ("empty_image_max_bytes", "max_image_pixels", "max_member_bytes", "empty_max_pixel_std",
                     "empty_informative_delta", "empty_min_informative_share", "empty_min_body_share",
                     "empty_min_ink_spread", "empty_min_edge_sharpness", "empty_min_repeats"):
            if getattr(self, name) < 0:
                raise ValueError(f"ImageConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.empty_analysis_pixels < 64:
            raise ValueError(f"ImageConfig.empty_analysis_pixels must be >= 64, got {self.empty_analysis_pixels}")
        if not self.allowed_formats:
            raise ValueError("ImageConfig.allowed_formats must name at least one format")
        Image.init()  # registers every PIL plugin, so the check below sees all format names
        unknown = [name for name in self.allowed_formats if name.upper() not in Image.OPEN]
        if unknown:
            raise ValueError(f"ImageConfig.allowed_formats: PIL cannot open format(s) {unknown}")


class ImageDecodeError(ValueError):
    """An image (or its zip member) cannot be used; `reason` is one of the REASON_* codes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        # What the header told before the failure (width, height, mode), for the index row.
        self.header: dict[str, object] = {}


# --- member names ---------------------------------------------------------------------------------


def member_name_rejection(name: str) -> str | None:
    """Why `name` is not a valid root-level `{nm}.jpg` member (a REJECT_* code), or None if valid."""
    if "\\" in name:
        return REJECT_BACKSLASH
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return REJECT_ABSOLUTE_PATH
    parts = name.split("/")
    if ".." in parts:
        return REJECT_PATH_TRAVERSAL
    if name.endswith("/"):
        return REJECT_DIRECTORY
    if len(parts) > 1:
        return REJECT_NESTED_PATH
    if not name.endswith(IMAGE_SUFFIX):
        return REJECT_NOT_JPG
    if not _NM_PATTERN.fullmatch(name[: -len(IMAGE_SUFFIX)]):
        return REJECT_BAD_NM
    return None


def nm_from_member_name(name: str) -> str | None:
    """'123.jpg' -> '123'; a directory part, '..', an absolute path, a backslash, whitespace or
    another extension (the match is exact and case-sensitive: '1.JPG' is rejected) -> None."""
    if member_name_rejection(name) is not None:
        return None
    return name[: -len(IMAGE_SUFFIX)]


# --- opening the zip and reading members ----------------------------------------------------------


class _OwningZipFile(zipfile.ZipFile):
    """A ZipFile over a file object this module opened: closing the zip closes the file too."""

    def __init__(self, owned_file: IO[bytes]) -> None:
        self._owned_file = owned_file
        try:
            super().__init__(owned_file)
        except BaseException:
            owned_file.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._owned_file.close()


def _describe(path_or_file: object) -> str:
    return str(getattr(path_or_file, "path", None) or getattr(path_or_file, "name", None) or path_or_file)


def open_zip(path_or_file: str | os.PathLike[str] | IO[bytes]) -> zipfile.ZipFile:
    """Open the images zip for reading without extracting it.

    Accepts a local path (str or PathLike), a UPath / fsspec URL string such as 's3://bucket/x.zip'
    (opened as a seekable binary file object) or an already-open seekable binary file object (the
    caller keeps ownership of that one). Raises ValueError naming the input when it is not a zip.
    """
    description = _describe(path_or_file)
    try:
        if hasattr(path_or_file, "read"):
            file_object = path_or_file
            if hasattr(file_object, "seekable") and not file_object.seekable():
                raise ValueError(f"{description}: the images zip file object must be seekable")
            return zipfile.ZipFile(file_object)  # type: ignore[arg-type]
        if isinstance(path_or_file, str) and "://" not in path_or_file:
            return zipfile.ZipFile(path_or_file)
        if isinstance(path_or_file, (str, os.PathLike)):
            from upath import UPath  # local import: only remote paths need it

            upath = path_or_file if isinstance(path_or_file, UPath) else UPath(path_or_file)
            if upath.protocol in ("", "file", "local"):
                return zipfile.ZipFile(os.fspath(upath.path))
            return _OwningZipFile(upath.open("rb"))
    except zipfile.BadZipFile as error:
        raise ValueError(f"{description}: not a valid zip archive ({error})") from error
    raise TypeError(
        f"open_zip expects a path, a UPath or a binary file object, got {type(path_or_file).__name__}"
    )


# --- the member table: the central directory read once, so shard steps need not read it -----------
# `zipfile.ZipFile` parses the whole central directory when it opens (~630 B of Python objects a
# member: ~6 GiB for 10 M members), so a shard step that opens the zip pays for the whole catalogue.
# `zip_member_table` keeps where each member lies, one catalogue-wide step writes it grouped by
# shard, and `open_listed_zip` opens the zip from a shard's rows alone.

MEMBER_TABLE_COLUMNS = ("member", "shard_key", "zip_position", "header_offset", "compress_size", "file_size",
                        "crc32", "compress_type", "flag_bits", "zip_bytes")


def member_shard_key(name: str) -> str:
    """What a member's shard is computed from: its nm, or the raw name when it names none (a rejected
    member still lands in exactly one shard, which lists it)."""
    return nm_from_member_name(name) or name


def zip_member_table(zf: zipfile.ZipFile, zip_bytes: int) -> pd.DataFrame:
    """One row per central-directory record of `zf` (every member, valid or not, in zip order; a
    duplicated name once per copy): its name, shard key (see `member_shard_key`), position, and where
    and how its bytes are stored. `zip_bytes`: the zip file's size, recorded so that
    `open_listed_zip` notices a zip that changed since the table was made."""
    infos = zf.infolist()
    return pd.DataFrame({
        "member": pd.Series([info.orig_filename for info in infos], dtype=object),
        "shard_key": pd.Series([member_shard_key(info.filename) for info in infos], dtype=object),
        "zip_position": np.arange(len(infos), dtype=np.int64),
        **{column: np.fromiter((getattr(info, attribute) for info in infos), dtype=np.int64, count=len(infos))
           for column, attribute in (("header_offset", "header_offset"), ("compress_size", "compress_size"),
                                     ("file_size", "file_size"), ("crc32", "CRC"),
                                     ("compress_type", "compress_type"), ("flag_bits", "flag_bits"))},
        "zip_bytes": np.full(len(infos), zip_bytes, dtype=np.int64),
    }, columns=list(MEMBER_TABLE_COLUMNS))


class _ListedZipFile(zipfile.ZipFile):
    """A read-only ZipFile whose directory is the given member-table rows instead of the zip's central
    directory. Reading a member is zipfile's own: the local header's name must match, the CRC-32 is
    verified, so a table that does not fit the zip gives `BadZipFile`, never other bytes."""

    def __init__(self, file: IO[bytes], members: pd.DataFrame) -> None:
        self._listed = members
        super().__init__(file)  # calls _RealGetContents below instead of parsing the directory

    def _RealGetContents(self) -> None:  # noqa: N802 (zipfile's name)
        self._comment = b""
        self.start_dir = None
        for row in self._listed.itertuples(index=False):
            info = zipfile.ZipInfo(row.member)
            info.header_offset, info.compress_size, info.file_size = row.header_offset, row.compress_size, row.file_size
            info.CRC, info.compress_type, info.flag_bits = row.crc32, row.compress_type, row.flag_bits
            self.filelist.append(info)
            self.NameToInfo[info.filename] = info
        # the members' positions in the whole zip, for `build_image_index` (its rows keep zip order)
        self.zip_positions = self._listed["zip_position"].to_numpy()


def open_listed_zip(file_object: IO[bytes], members: pd.DataFrame) -> zipfile.ZipFile:
    """The zip in `file_object` (seekable, binary; the caller keeps it) opened with only the listed
    members (rows of `zip_member_table`, typically one shard's): memory and time follow those rows,
    not the zip. Raises ValueError when the file's size is not the one the table was made from."""
    missing = [column for column in MEMBER_TABLE_COLUMNS if column not in members.columns]
    if missing:
        raise ValueError(f"member table lacks column(s) {missing}")
    if len(members):
        recorded = set(members["zip_bytes"].tolist())
        actual = file_object.seek(0, os.SEEK_END)
        if recorded != {actual}:
            raise ValueError(f"{_describe(file_object)}: the zip has {actual} bytes but its member table was "
                             f"made from {sorted(recorded)}: the zip changed since, re-read its directory")
        file_object.seek(0)
    return _ListedZipFile(file_object, members)


# Names that occur more than once in a zip's central directory, cached per ZipFile object so that
# reading 100k members stays linear.
_duplicates_cache: weakref.WeakKeyDictionary[zipfile.ZipFile, frozenset[str]] = weakref.WeakKeyDictionary()


def _duplicate_names(zf: zipfile.ZipFile) -> frozenset[str]:
    # NameToInfo keeps one entry per name, infolist() every central-directory record.
    if len(zf.infolist()) == len(zf.NameToInfo):
        return frozenset()
    cached = _duplicates_cache.get(zf)
    if cached is None:
        counts = Counter(info.filename for info in zf.infolist())
        cached = frozenset(name for name, count in counts.items() if count > 1)
        _duplicates_cache[zf] = cached
    return cached


def _read_info(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """Read one member's bytes; every zip-level failure becomes ImageDecodeError with a reason."""
    if info.flag_bits & 0x1:
        raise ImageDecodeError(REASON_ENCRYPTED, f"{info.filename} is encrypted")
    if info.file_size > max_bytes:
        raise ImageDecodeError(
            REASON_TOO_LARGE, f"{info.filename} has {info.file_size} bytes > limit {max_bytes}"
        )
    try:
        with zf.open(info) as member_file:
            # Read one byte past the cap: the declared size in the header is not trusted.
            data = member_file.read(max_bytes + 1)
    # zipfile raises NotImplementedError for compression methods it lacks, RuntimeError for
    # encrypted members: both are a bad member here, recorded with a reason, not a crash
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, ValueError) as error:
        raise ImageDecodeError(REASON_BAD_ZIP_MEMBER, f"{info.filename}: {error}") from error
    if len(data) > max_bytes:
        raise ImageDecodeError(REASON_TOO_LARGE, f"{info.filename} inflates past {max_bytes} bytes")
    return data


def read_member(zf: zipfile.ZipFile, member: str, max_bytes: int) -> bytes:
    """The bytes of the root-level `{nm}.jpg` member named exactly `member`.

    Refuses (ImageDecodeError with a reason) a name that is not a valid `{nm}.jpg`
    ('missing_member'), a name absent from the zip ('missing_member'), a name stored more than once
    ('duplicate_name': which copy is meant is ambiguous), an encrypted member ('encrypted'), and a
    member whose declared or actual size exceeds `max_bytes` ('too_large').
    """
    if nm_from_member_name(member) is None:
        raise ImageDecodeError(REASON_MISSING_MEMBER, f"{member!r} is not a valid {{nm}}.jpg member name")
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise ImageDecodeError(REASON_MISSING_MEMBER, f"{member!r} is not in the zip") from None
    if member in _duplicate_names(zf):
        raise ImageDecodeError(REJECT_DUPLICATE_NAME, f"{member!r} is stored more than once in the zip")
    return _read_info(zf, info, max_bytes)


# --- decoding -------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any supported mode -> 8-bit RGB; transparency is composited on white."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # PIL's convert('L') clips 16-bit values at 255 instead of scaling; scale 0..65535 -> 0..255.
        values = np.asarray(image, dtype=np.int64)
        scaled = (np.clip(values, 0, 65535) + 128) // 257
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")  # 2-D uint8 -> mode L
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


_OBJECT_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _classify_pil_error(error: BaseException) -> str:
    message = str(error).lower()
    if isinstance(error, EOFError) or "truncated" in message:
        return REASON_TRUNCATED
    return REASON_CORRUPT


@dataclass(frozen=True)
class _DecodeResult:
    image: Image.Image
    width: int  # as displayed, after EXIF orientation, at full resolution
    height: int
    mode: str  # the stored PIL mode


def _decode(
    data: bytes, config: ImageConfig, draft_size: tuple[int, int] | None = None, draft_pixels: int | None = None
) -> _DecodeResult:
    """`draft_size`: JPEG DCT scaling down to at least that size; `draft_pixels` instead: down to at
    least the analysis size of the content check (about that many pixels)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Somebody flipped PIL's global switch; truncated files would then decode as grey garbage.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False for safe decoding")
    header: dict[str, object] = {}
    try:
        return _decode_unchecked(data, config, draft_size, draft_pixels, header)
    except ImageDecodeError as error:
        error.header = header
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # DecompressionBombWarning only arrives here when a warnings filter turns it into an error.
        raise _with_header(ImageDecodeError(REASON_TOO_MANY_PIXELS, str(error)), header) from error
    except UnidentifiedImageError as error:
        # PIL names the BytesIO object with its memory address: keep the detail reproducible
        detail = _OBJECT_ADDRESS.sub("the image bytes", str(error))
        raise _with_header(ImageDecodeError(REASON_CORRUPT, detail), header) from error
    except Exception as error:  # noqa: BLE001 - PIL plugins raise many types on hostile bytes
        reason = _classify_pil_error(error)
        raise _with_header(ImageDecodeError(reason, f"{type(error).__name__}: {error}"), header) from error


def _with_header(error: ImageDecodeError, header: dict[str, object]) -> ImageDecodeError:
    error.header = header
    return error


def _decode_unchecked(
    data: bytes, config: ImageConfig, draft_size: tuple[int, int] | None, draft_pixels: int | None,
    header: dict[str, object],
) -> _DecodeResult:
    if len(data) == 0:
        raise ImageDecodeError(REASON_ZERO_BYTES, "the image has 0 bytes")
    image = Image.open(io.BytesIO(data), formats=list(config.allowed_formats))
    width, height = image.size
    header.update(mode=image.mode, width=width, height=height)
    pixels = max(1, width) * max(1, height)
    if pixels > config.max_image_pixels:
        raise ImageDecodeError(
            REASON_TOO_MANY_PIXELS, f"{width}x{height} = {pixels} pixels > limit {config.max_image_pixels}"
        )
    stored_mode = image.mode
    if stored_mode not in SUPPORTED_MODES:
        raise ImageDecodeError(REASON_UNSUPPORTED_MODE, f"PIL mode {stored_mode!r}")
    orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    if orientation in _EXIF_ORIENTATIONS_SWAPPING_AXES:
        width, height = height, width
    header.update(width=width, height=height)
    if draft_pixels is not None:
        draft_size = _analysis_size(*image.size, draft_pixels)  # the stored size: draft works on it
    if draft_size is not None:
        image.draft(None, draft_size)  # JPEG only; other formats ignore it
    image.load()
    if orientation not in (None, 1):
        ImageOps.exif_transpose(image, in_place=True)  # not always: without a turn it copies
    rgb = _to_rgb(image)
    if config.channel_order == "BGR":
        red, green, blue = rgb.split()
        rgb = Image.merge("RGB", (blue, green, red))
    return _DecodeResult(rgb, width, height, stored_mode)


def decode_image(data: bytes, config: ImageConfig, min_side: int | None = None) -> Image.Image:
    """Decode image bytes to an 8-bit RGB PIL image.

    Handles grayscale, CMYK JPEG, RGBA/LA/P with transparency (composited on white), 16-bit
    grayscale (scaled to 8 bit) and EXIF orientation; swaps channels when
    `config.channel_order == "BGR"`. Raises ImageDecodeError with reason 'zero_bytes', 'corrupt',
    'truncated', 'too_many_pixels' or 'unsupported_mode'.

    `min_side`: when given, a JPEG is decoded at the coarsest DCT scale (1/2, 1/4 or 1/8) that
    keeps both sides >= `min_side` pixels (PIL's `Image.draft`): several times less work for a
    large photo that a model shrinks to ~224 px anyway. Other formats, and JPEGs already near
    `min_side`, decode in full. None: always full resolution.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels or None, got {min_side}")
    draft_size = None if min_side is None else (min_side, min_side)
    return _decode(data, config, draft_size=draft_size).image


# --- content signals of the empty-image check ----------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")
_EDGE_TOP_SHARE = 0.001  # edge sharpness is read at the top 0.1% of gradient magnitudes
_PIXEL_HASH_SIDE = 16  # pixel fingerprint: a 16 x 16 difference hash with a dead zone (512 bits)
_PIXEL_HASH_DEAD_ZONE = 2  # grey levels; the box-averaged cells carry well under 1 level of JPEG noise


def _analysis_size(width: int, height: int, pixels: int) -> tuple[int, int]:
    """(width, height) scaled down (never up) to about `pixels` pixels, aspect kept."""
    scale = min(1.0, (pixels / max(1, width * height)) ** 0.5)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _analysis_pixels(image: Image.Image, pixels: int) -> np.ndarray:
    """The image as float32 RGB at about `pixels` pixels (area-averaged, so JPEG noise is too)."""
    size = _analysis_size(*image.size, pixels)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


@dataclass(frozen=True)
class ContentSignals:
    """What the empty-image check measures on a small image (see ImageConfig for the rules)."""

    pixel_std: float  # max over R, G, B of the pixel standard deviation (grey levels)
    informative_share: float  # share of pixels differing from the border colour by > delta
    body_share: float  # share of pixels that are informative with all 8 neighbours (the drawing's body)
    ink_spread: float  # p10-p90 (max over R, G, B) of the body's half farthest from the background
    edge_sharpness: float  # top-0.1% gradient magnitude / value range (p0.5..p99.5), max over R, G, B
    pixel_hash: str  # 16 x 16 difference hash (hex): equal for the same picture in other bytes


def _level_quantiles(values: np.ndarray, *qs: float) -> list[int]:
    """Nearest-rank quantiles of grey levels (0..255; a fraction is rounded down) from their
    histogram: several times cheaper than np.percentile on a few thousand pixels."""
    cumulative = np.cumsum(np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256))
    ranks = [round(q * (int(cumulative[-1]) - 1)) for q in qs]
    return [int(level) for level in np.searchsorted(cumulative, ranks, side="right")]


def content_signals(pixels: np.ndarray, informative_delta: int) -> ContentSignals:
    """The empty-image content signals of an RGB float array [h, w, 3] (the analysis image)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ValueError(f"content_signals expects an [h, w, 3] RGB array, got shape {pixels.shape}")
    planes = [np.ascontiguousarray(pixels[:, :, c]) for c in range(3)]  # reductions over [h, w, 3] are slow
    pixel_std = max(float(plane.std()) for plane in planes)
    informative = np.zeros(pixels.shape[:2], dtype=bool)
    distance = np.zeros(pixels.shape[:2], dtype=np.float32)  # from the background, max over R, G, B
    strongest = np.zeros(pixels.shape[:2], dtype=np.float32)[:-1, :-1]
    value_range = 1.0
    for plane in planes:
        border = np.concatenate([plane[0], plane[-1], plane[:, 0], plane[:, -1]])
        difference = np.abs(plane - np.median(border))
        informative |= difference > informative_delta
        np.maximum(distance, difference, out=distance)
        # Per channel, not on grey: an edge between two colours of similar luminance is still an
        # edge, and a low grey range would let JPEG blocking pass for sharpness.
        np.maximum(strongest, np.hypot(np.diff(plane, axis=1)[:-1], np.diff(plane, axis=0)[:, :-1]), out=strongest)
        low, high = np.percentile(plane, [0.5, 99.5])
        value_range = max(value_range, float(high - low))
    # The body: informative pixels whose 3 x 3 neighbourhood is all informative (an erosion by one
    # pixel), so strokes up to 2 px wide and the anti-aliased rim of any shape are left out.
    body = np.zeros_like(informative)
    if informative.shape[0] > 2 and informative.shape[1] > 2:
        rows = informative[:, :-2] & informative[:, 1:-1] & informative[:, 2:]  # 3 wide (separable)
        body[1:-1, 1:-1] = rows[:-2] & rows[1:-1] & rows[2:]  # ... and 3 high
    # The ink: the body's pixels at least as far from the background as its median pixel (the
    # drawing's own colours, not their blend with the backdrop), and how much they vary.
    ink_spread = 0.0
    if body.sum() >= 2:
        ink = body & (distance >= _level_quantiles(distance[body], 0.5)[0])
        ink_spread = float(max(high - low for low, high in (_level_quantiles(plane[ink], 0.1, 0.9) for plane in planes)))
    gradient = strongest.ravel()
    if gradient.size:
        top = max(1, round(gradient.size * _EDGE_TOP_SHARE))
        edge_sharpness = float(np.partition(gradient, gradient.size - top)[gradient.size - top]) / value_range
    else:  # a single row or column of pixels has no 2-D gradient
        edge_sharpness = 0.0
    gray = planes[0] * _LUMA[0] + planes[1] * _LUMA[1] + planes[2] * _LUMA[2]
    thumb = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L").resize(
        (_PIXEL_HASH_SIDE + 1, _PIXEL_HASH_SIDE), Image.Resampling.BOX)
    cells = np.asarray(thumb, dtype=np.int16)
    step = cells[:, 1:] - cells[:, :-1]
    # brighter / darker / level (within the dead zone) per neighbour pair: flat areas stay "level"
    # whatever the compression noise, so a re-encoded copy of a picture keeps its hash
    bits = np.concatenate([(step > _PIXEL_HASH_DEAD_ZONE).ravel(), (step < -_PIXEL_HASH_DEAD_ZONE).ravel()])
    return ContentSignals(pixel_std, float(informative.mean()), float(body.mean()), ink_spread, edge_sharpness,
                          np.packbits(bits).tobytes().hex())


# --- the image index ------------------------------------------------------------------------------


def _image_df_sizes(sizes: pd.DataFrame) -> tuple[dict[str, int], list[dict[str, object]]]:
    """nm -> size from image_df.parquet, plus rejection rows for its bad or ambiguous rows."""
    missing = [column for column in IMAGE_SIZES_REQUIRED_COLUMNS if column not in sizes.columns]
    if missing:
        raise ValueError(f"{IMAGE_SIZES_FILE}: missing required column(s) {missing}")
    # The pipeline-wide nm rule (int / integral float / stripped str; a fractional id raises).
    nms = normalize_nm(sizes["nm"], source=IMAGE_SIZES_FILE).set_axis(sizes.index)
    numeric = pd.to_numeric(sizes["size"], errors="coerce")
    size_ok = numeric.notna() & (numeric >= 0) & (numeric == np.floor(numeric.fillna(0)))
    rejected: list[dict[str, object]] = []

    def reject(mask: pd.Series, reason: str, detail: str) -> None:
        for raw_nm, nm in zip(sizes["nm"][mask], nms[mask]):
            rejected.append(
                dict(member=None, reason=reason, nm=None if pd.isna(nm) else nm, source=IMAGE_SIZES_FILE,
                     detail=f"{detail} (nm={raw_nm!r})")
            )

    bad_nm = nms.isna()
    reject(bad_nm, REJECT_IMAGE_DF_BAD_NM, "nm is missing or not an id")
    bad_size = ~bad_nm & ~size_ok
    reject(bad_size, REJECT_IMAGE_DF_BAD_SIZE, "size is missing, negative or not an integer")
    good = pd.DataFrame({"nm": nms[~bad_nm & ~bad_size], "size": numeric[~bad_nm & ~bad_size].astype("int64")})
    sizes_per_nm = good.groupby("nm", sort=False)["size"].nunique()
    conflicting = good["nm"].isin(sizes_per_nm.index[sizes_per_nm > 1])
    reject(_align(conflicting, sizes), REJECT_IMAGE_DF_CONFLICTING_SIZES, "the nm is listed with different sizes")
    consistent = good[~conflicting]
    repeated = consistent["nm"].duplicated()
    reject(_align(repeated, sizes), REJECT_IMAGE_DF_DUPLICATE_NM, "the nm is listed again (same size)")
    kept = consistent[~repeated]
    return dict(zip(kept["nm"], kept["size"].tolist())), rejected


def _align(mask: pd.Series, frame: pd.DataFrame) -> pd.Series:
    return mask.reindex(frame.index, fill_value=False).astype(bool)


def decode_check_key(config: ImageConfig) -> str:
    """Identity of everything that changes a member's decode-check result and content signals
    (not the empty-image thresholds, which are applied again on every run).

    An index made under another key must not be reused: e.g. a lower `max_image_pixels` turns
    a decodable image into 'too_many_pixels', another `empty_informative_delta` changes
    `informative_share`. The size trigger is not part of it: a reused row that falls under a
    raised trigger and has no content signals yet is read again (see `build_image_index`).
    """
    return (
        f"v{DECODE_CHECK_VERSION}|pixels<={config.max_image_pixels}|bytes<={config.max_member_bytes}"
        f"|formats={','.join(config.allowed_formats)}|draft={_CHECK_DRAFT_SIZE}"
        f"|analysis={config.empty_analysis_pixels}|delta={config.empty_informative_delta}"
    )


def build_image_index(
    zf: zipfile.ZipFile,
    sizes: pd.DataFrame | None,
    config: ImageConfig,
    previous: pd.DataFrame | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Index every member of the images zip without extracting it (or, with `shard` = (index,
    n_shards), only the members and image_df rows of the products in that shard, see
    `core.storage.product_shards`; a rejected member without an nm goes to the shard of its name).

    Returns `(index, rejected_members)`.

    `index`: one row per valid root-level `{nm}.jpg` member, in zip order, columns
    nm (str), member (str), byte_size (int64, uncompressed member size), size_from_image_df (Int64,
    from `sizes` = image_df.parquet when given), decodable (bool), width/height (Int64, as displayed
    after EXIF orientation), mode (str, the stored PIL mode), reason (str or missing), is_empty
    (bool), size_mismatch (bool), detail (str or missing, human-readable).
    `reason` is the first that applies of: why the image is not decodable (a REASON_* code),
    'empty' (see :func:`apply_empty_image_rule`), 'size_mismatch' (image_df size != member size).
    `is_empty` / `size_mismatch` hold those two flags even when an earlier reason wins.
    Members under the size trigger (size <= `config.empty_image_max_bytes`, measured on the
    image_df size when known, as the notebook did, else on the member size) also get the content
    signals pixel_std, informative_share, edge_sharpness, pixel_hash (missing for the others),
    and every row same_image_count, empty_rule, empty_detail (see :func:`apply_empty_image_rule`).

    `rejected_members`: columns member, reason, nm, source ('zip' or image_df.parquet), detail:
    zip members that are not a valid `{nm}.jpg` (path traversal, absolute, nested, directories,
    other files, all copies of a duplicated name) and image_df rows that are malformed, ambiguous or
    name an nm with no member in the zip.

    The decode check decodes every image (JPEGs at 1/8 DCT scale, which still reads the whole
    entropy-coded stream; a member under the size trigger at the content check's analysis scale,
    in the same single decode), so truncated or corrupt data is caught, not only a bad header.

    `previous`: an earlier index of the same zip made with the same :func:`decode_check_key`
    (the caller's job). A member whose (name, CRC-32, uncompressed size) from the central
    directory equals a previous row's is not read again: its hash and decode result are copied,
    which makes a re-run over a grown zip cost O(new members) (a previous row under the size
    trigger without content signals is read again). A member whose bytes changed has
    another CRC or size and is checked again; reading a member for embedding verifies its CRC,
    so a forged directory entry cannot smuggle changed bytes past this.
    """
    size_by_nm, rejected = ({}, []) if sizes is None else _image_df_sizes(sizes)
    if shard is not None:
        size_by_nm = {nm: size for nm, size in size_by_nm.items() if _in_shard(nm, shard)}
        rejected = [row for row in rejected if _in_shard(row["nm"] or "", shard)]
    known = _previous_check_results(previous)
    infos = zf.infolist()
    duplicates = _duplicate_names(zf)
    columns: dict[str, list[object]] = {name: [] for name in INDEX_COLUMNS}
    positions: list[int] = []
    zip_positions = getattr(zf, "zip_positions", range(len(infos)))  # a listed zip knows its members' places
    for position, info in zip(zip_positions, infos):
        name = info.filename
        if shard is not None and not _in_shard(member_shard_key(name), shard):
            continue
        rejection = member_name_rejection(name)
        if rejection is None and name in duplicates:
            rejection = REJECT_DUPLICATE_NAME
        if rejection is not None:
            rejected.append(
                dict(member=name, reason=rejection, nm=nm_from_member_name(name), source="zip", detail=None)
            )
            continue
        nm = name[: -len(IMAGE_SUFFIX)]
        image_df_size = size_by_nm.get(nm)
        row = _index_row(zf, info, nm, image_df_size, config, known.get((name, info.CRC, info.file_size)))
        for key, value in row.items():
            columns[key].append(value)
        positions.append(int(position))
    indexed = set(columns["nm"])
    for nm in size_by_nm:
        if nm not in indexed and nm + IMAGE_SUFFIX not in duplicates:
            rejected.append(
                dict(member=nm + IMAGE_SUFFIX, reason=REJECT_NOT_IN_ZIP, nm=nm, source=IMAGE_SIZES_FILE,
                     detail="image_df lists this nm but the zip has no such member")
            )
    index = apply_empty_image_rule(_index_frame(columns), config)
    if shard is not None:  # the zip order, to merge the shards back into it (`merge_shard_indexes`)
        index["zip_position"] = np.asarray(positions, dtype=np.int64)
    return index, _rejected_frame(rejected)


def _in_shard(key: str, shard: tuple[int, int]) -> bool:
    return int(product_shards([key], shard[1])[0]) == shard[0]


def merge_shard_indexes(shard_indexes: list[pd.DataFrame], batches: list[str], config: ImageConfig) -> pd.DataFrame:
    """The per-shard indexes of `build_image_index(..., shard=...)` (each with a `batch` column) as one
    index in batch order (`batches`) then zip order — the rows and order an unsharded index has —
    with the empty-image rule applied over all of them (a placeholder repeated across shards and
    batches counts as repeated)."""
    index = pd.concat(shard_indexes, ignore_index=True)
    rank = index["batch"].map({batch: i for i, batch in enumerate(batches)})
    index = index.assign(_rank=rank).sort_values(["_rank", "zip_position"], kind="stable")
    index = index.drop(columns=["_rank", "zip_position"]).reset_index(drop=True)
    return apply_empty_image_rule(index, config)


def _previous_check_results(previous: pd.DataFrame | None) -> dict[tuple[str, int, int], dict[str, object]]:
    """(member, crc32, byte_size) -> the decode-check result columns of that earlier row."""
    if previous is None or previous.empty:
        return {}
    missing = [c for c in ("member", "crc32", "byte_size", *_CHECK_RESULT_COLUMNS) if c not in previous.columns]
    if missing:
        raise ValueError(f"previous image index lacks column(s) {missing}")
    usable = previous.dropna(subset=["crc32"])
    # Only the decode result and content signals are reused; the empty / size-mismatch flags are
    # recomputed because image_df and the empty-image settings may have changed since.
    results = {}
    for record in usable.to_dict("records"):
        check = {column: None if pd.isna(record[column]) else record[column] for column in _CHECK_RESULT_COLUMNS}
        if check["reason"] in (REASON_EMPTY, REASON_SIZE_MISMATCH):
            check["reason"] = None
        check["detail"] = _strip_size_note(check["detail"])
        results[(record["member"], int(record["crc32"]), int(record["byte_size"]))] = check
    return results


_SIZE_NOTE = re.compile(r"(?:; )?image_df size \d+ != zip member size \d+$")


def _strip_size_note(detail: object) -> object:
    if detail is None:
        return None
    stripped = _SIZE_NOTE.sub("", str(detail))
    return stripped or None


def _index_row(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    nm: str,
    image_df_size: int | None,
    config: ImageConfig,
    known: dict[str, object] | None = None,
) -> dict[str, object]:
    row: dict[str, object] = dict(
        nm=nm, member=info.filename, byte_size=info.file_size, crc32=info.CRC, size_from_image_df=image_df_size,
        content_hash=None, decodable=False, width=None, height=None, mode=None, reason=None, detail=None,
    )
    row.update(dict.fromkeys(CONTENT_SIGNAL_COLUMNS))
    size_for_empty = info.file_size if image_df_size is None else image_df_size
    under_trigger = size_for_empty <= config.empty_image_max_bytes
    if known is not None and under_trigger and known["decodable"] and known["pixel_std"] is None:
        known = None  # checked under a lower trigger: its content signals are still to measure
    if known is not None:
        row.update(known)
    else:
        try:
            data = _read_info(zf, info, config.max_member_bytes)
            # hashed here, while the bytes are in hand, so the embedding cache never re-reads cached images
            row["content_hash"] = content_hash(data)
            if under_trigger:  # one decode serves the decode check and the content signals
                result = _decode(data, config, draft_pixels=config.empty_analysis_pixels)
                signals = content_signals(_analysis_pixels(result.image, config.empty_analysis_pixels),
                                          config.empty_informative_delta)
                row.update(dataclasses.asdict(signals))
            else:
                result = _decode(data, config, draft_size=_CHECK_DRAFT_SIZE)
            row.update(decodable=True, width=result.width, height=result.height, mode=result.mode)
        except ImageDecodeError as error:
            row.update(reason=error.reason, detail=error.detail or None, width=error.header.get("width"),
                       height=error.header.get("height"), mode=error.header.get("mode"))
    row["size_mismatch"] = image_df_size is not None and image_df_size != info.file_size
    if row["size_mismatch"]:
        note = f"image_df size {image_df_size} != zip member size {info.file_size}"
        row["detail"] = note if row["detail"] is None else f"{row['detail']}; {note}"
    return row


def apply_empty_image_rule(index: pd.DataFrame, config: ImageConfig) -> pd.DataFrame:
    """The index with `is_empty`, `empty_rule`, `empty_detail`, `same_image_count` and `reason`
    (re)computed from its sizes and content signals under `config`; the input is not changed.

    Only a member under the size trigger (size <= `empty_image_max_bytes`, the image_df size when
    known) can be empty. `empty_image_rule="size"`: every such member is (rule 'size').
    `"content"`: a decodable one is empty only when the first of these confirms it, in this order:
    'near_uniform' (pixel_std < empty_max_pixel_std), 'tiny_informative_area' (informative_share
    < empty_min_informative_share, unless a solid, varied body: body_share >= empty_min_body_share
    and ink_spread >= empty_min_ink_spread), 'blurred' (edge_sharpness < empty_min_edge_sharpness),
    'repeated_placeholder' (same_image_count >= empty_min_repeats > 0: that many members under
    the trigger share its pixel hash, identical bytes included). An undecodable small member is
    not flagged: its decode failure is the reason. `empty_detail` names the rule and the measured
    value, e.g. 'near_uniform: pixel std 0.4 < 2.0'.

    Idempotent, so the asset can run it again over the indexes of all batches together (repeats
    then count across batches).
    """
    out = index.copy()
    size = out["size_from_image_df"].fillna(out["byte_size"]).astype("int64")
    under = size <= config.empty_image_max_bytes
    analysed = under & out["decodable"] & out["pixel_hash"].notna()
    repeats = out.loc[analysed].groupby("pixel_hash")["pixel_hash"].transform("size")
    out["same_image_count"] = repeats.reindex(out.index).astype("Int64")
    rule = pd.Series(None, index=out.index, dtype=object)
    detail = pd.Series(None, index=out.index, dtype=object)
    if config.empty_image_rule == "size":
        rule[under] = EMPTY_RULE_SIZE
        detail[under] = [f"{EMPTY_RULE_SIZE}: {n} bytes <= {config.empty_image_max_bytes} (empty_image_rule=size)"
                         for n in size[under]]
    else:
        for position in np.flatnonzero(analysed.to_numpy()):
            fired = _content_rule(out.iloc[position], config)
            if fired is not None:
                rule.iat[position], detail.iat[position] = fired[0], f"{fired[0]}: {fired[1]}"
    out["empty_rule"] = rule.astype("str")
    out["empty_detail"] = detail.astype("str")
    out["is_empty"] = rule.notna().astype(bool)
    decode_reason = out["reason"].where(~out["reason"].isin([REASON_EMPTY, REASON_SIZE_MISMATCH]))
    reason = decode_reason.where(decode_reason.notna(), None)
    reason = reason.where(reason.notna() | ~out["is_empty"], REASON_EMPTY)
    reason = reason.where(reason.notna() | ~out["size_mismatch"], REASON_SIZE_MISMATCH)
    out["reason"] = reason.astype("str")
    return out


def _content_rule(row: pd.Series, config: ImageConfig) -> tuple[str, str] | None:
    """(rule, why) of the first content rule that confirms an empty image, or None."""
    if row["pixel_std"] < config.empty_max_pixel_std:
        return EMPTY_RULE_NEAR_UNIFORM, f"pixel std {row['pixel_std']:.1f} < {config.empty_max_pixel_std}"
    if row["informative_share"] < config.empty_min_informative_share:
        body_share, spread = row["body_share"], row["ink_spread"]
        if body_share < config.empty_min_body_share:
            no_body = f"its body {body_share:.2%} of the frame < {config.empty_min_body_share:.2%}"
        elif spread < config.empty_min_ink_spread:
            no_body = f"its ink is flat (spread {spread:.1f} < {config.empty_min_ink_spread} levels)"
        else:
            no_body = None  # a small product on a plain backdrop: a solid body of varied colours
        if no_body is not None:
            return EMPTY_RULE_TINY_AREA, (
                f"{row['informative_share']:.1%} of the frame differs from the background by more than "
                f"{config.empty_informative_delta} levels < {config.empty_min_informative_share:.1%}, and {no_body}")
    if row["edge_sharpness"] < config.empty_min_edge_sharpness:
        return EMPTY_RULE_BLURRED, f"edge sharpness {row['edge_sharpness']:.2f} < {config.empty_min_edge_sharpness}"
    if config.empty_min_repeats and row["same_image_count"] >= config.empty_min_repeats:
        return EMPTY_RULE_REPEATED, (
            f"the same picture in {row['same_image_count']} small images >= {config.empty_min_repeats}")
    return None


def _index_frame(columns: dict[str, list[object]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "nm": pd.Series(columns["nm"], dtype="str"),
            "member": pd.Series(columns["member"], dtype="str"),
            "byte_size": pd.Series(columns["byte_size"], dtype="int64"),
            "crc32": pd.Series(columns["crc32"], dtype="int64"),
            "size_from_image_df": pd.Series(columns["size_from_image_df"], dtype="Int64"),
            "content_hash": pd.Series(columns["content_hash"], dtype="str"),
            "decodable": pd.Series(columns["decodable"], dtype="bool"),
            "width": pd.Series(columns["width"], dtype="Int64"),
            "height": pd.Series(columns["height"], dtype="Int64"),
            "mode": pd.Series(columns["mode"], dtype="str"),
            "reason": pd.Series(columns["reason"], dtype="str"),
            "is_empty": pd.Series([False] * len(columns["nm"]), dtype="bool"),  # set by apply_empty_image_rule
            "size_mismatch": pd.Series(columns["size_mismatch"], dtype="bool"),
            "detail": pd.Series(columns["detail"], dtype="str"),
            **{name: pd.Series(columns[name], dtype="float64")
               for name in ("pixel_std", "informative_share", "body_share", "ink_spread", "edge_sharpness")},
            "pixel_hash": pd.Series(columns["pixel_hash"], dtype="str"),
            "same_image_count": pd.Series([None] * len(columns["nm"]), dtype="Int64"),
            "empty_rule": pd.Series([None] * len(columns["nm"]), dtype="str"),
            "empty_detail": pd.Series([None] * len(columns["nm"]), dtype="str"),
        }
    )


def _rejected_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(
        {column: pd.Series([row[column] for row in rows], dtype="str") for column in REJECTED_COLUMNS}
    )
