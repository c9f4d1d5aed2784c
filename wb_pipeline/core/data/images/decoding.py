"""Decoding one photo safely: PIL's bomb guard per call, EXIF orientation, 16-bit / alpha / palette
modes to RGB, and every failure as an `ImageDecodeError` with a machine-readable reason."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .config import (
    _ALPHA_MODES,
    _EXIF_ORIENTATION_TAG,
    _EXIF_ORIENTATIONS_SWAPPING_AXES,
    _SIXTEEN_BIT_MODES,
    REASON_CORRUPT,
    REASON_TOO_MANY_PIXELS,
    REASON_TRUNCATED,
    REASON_UNSUPPORTED_MODE,
    REASON_ZERO_BYTES,
    SUPPORTED_MODES,
    ImageConfig,
    ImageDecodeError,
)


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
    data: bytes,
    config: ImageConfig,
    draft_size: tuple[int, int] | None,
    draft_pixels: int | None,
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
