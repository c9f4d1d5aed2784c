"""What the photo steps share: the reasons an image or a zip member is rejected, the empty-image rule
names, the index's columns and the settings (`ImageConfig`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from PIL import Image

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


SUPPORTED_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"} | _ALPHA_MODES | _SIXTEEN_BIT_MODES)


# Which rule of the content check confirmed an "empty image" (index `empty_rule`, the start of
# `empty_detail` and of `rejected_products.detail`), in the order they are tested.
EMPTY_RULE_SIZE = "size"  # empty_image_rule="size": the seed's size rule alone


EMPTY_RULE_NEAR_UNIFORM = "near_uniform"


EMPTY_RULE_TINY_AREA = "tiny_informative_area"


EMPTY_RULE_BLURRED = "blurred"


EMPTY_RULE_REPEATED = "repeated_placeholder"


EMPTY_RULES = (EMPTY_RULE_SIZE, EMPTY_RULE_NEAR_UNIFORM, EMPTY_RULE_TINY_AREA, EMPTY_RULE_BLURRED, EMPTY_RULE_REPEATED)


INDEX_COLUMNS = (
    "nm",
    "member",
    "byte_size",
    "crc32",
    "size_from_image_df",
    "content_hash",
    "decodable",
    "width",
    "height",
    "mode",
    "reason",
    "is_empty",
    "size_mismatch",
    "detail",
    "pixel_std",
    "informative_share",
    "body_share",
    "ink_spread",
    "edge_sharpness",
    "pixel_hash",
    "same_image_count",
    "empty_rule",
    "empty_detail",
)


# The content signals of the empty-image check, measured only on members under the size trigger.
CONTENT_SIGNAL_COLUMNS = ("pixel_std", "informative_share", "body_share", "ink_spread", "edge_sharpness", "pixel_hash")


# What reading + decode-checking one member found: all an index row needs besides the image_df
# size and the empty-image rule, so a re-run can take it from the previous index instead of
# reading the member again (see `build_image_index(previous=...)`).
_CHECK_RESULT_COLUMNS = (
    "content_hash",
    "decodable",
    "width",
    "height",
    "mode",
    "reason",
    "detail",
    *CONTENT_SIGNAL_COLUMNS,
)


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
        for name in (
            "empty_image_max_bytes",
            "max_image_pixels",
            "max_member_bytes",
            "empty_max_pixel_std",
            "empty_informative_delta",
            "empty_min_informative_share",
            "empty_min_body_share",
            "empty_min_ink_spread",
            "empty_min_edge_sharpness",
            "empty_min_repeats",
        ):
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
