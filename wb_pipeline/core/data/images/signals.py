"""Content signals of a small photo (spread, informative area, solid body, ink spread, edge sharpness,
a pixel hash) and the empty-image rule that decides from them whether it is a placeholder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from .config import (
    EMPTY_RULE_BLURRED,
    EMPTY_RULE_NEAR_UNIFORM,
    EMPTY_RULE_REPEATED,
    EMPTY_RULE_SIZE,
    EMPTY_RULE_TINY_AREA,
    REASON_EMPTY,
    REASON_SIZE_MISMATCH,
    ImageConfig,
)

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


_EDGE_TOP_SHARE = 0.001  # edge sharpness is read at the top 0.1% of gradient magnitudes


_PIXEL_HASH_SIDE = 16  # pixel fingerprint: a 16 x 16 difference hash with a dead zone (512 bits)


_PIXEL_HASH_DEAD_ZONE = 2  # grey levels; the box-averaged cells carry well under 1 level of JPEG noise


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
        ink_spread = float(
            max(high - low for low, high in (_level_quantiles(plane[ink], 0.1, 0.9) for plane in planes))
        )
    gradient = strongest.ravel()
    if gradient.size:
        top = max(1, round(gradient.size * _EDGE_TOP_SHARE))
        edge_sharpness = float(np.partition(gradient, gradient.size - top)[gradient.size - top]) / value_range
    else:  # a single row or column of pixels has no 2-D gradient
        edge_sharpness = 0.0
    gray = planes[0] * _LUMA[0] + planes[1] * _LUMA[1] + planes[2] * _LUMA[2]
    thumb = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L").resize(
        (_PIXEL_HASH_SIDE + 1, _PIXEL_HASH_SIDE), Image.Resampling.BOX
    )
    cells = np.asarray(thumb, dtype=np.int16)
    step = cells[:, 1:] - cells[:, :-1]
    # brighter / darker / level (within the dead zone) per neighbour pair: flat areas stay "level"
    # whatever the compression noise, so a re-encoded copy of a picture keeps its hash
    bits = np.concatenate([(step > _PIXEL_HASH_DEAD_ZONE).ravel(), (step < -_PIXEL_HASH_DEAD_ZONE).ravel()])
    return ContentSignals(
        pixel_std,
        float(informative.mean()),
        float(body.mean()),
        ink_spread,
        edge_sharpness,
        np.packbits(bits).tobytes().hex(),
    )


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
        detail[under] = [
            f"{EMPTY_RULE_SIZE}: {n} bytes <= {config.empty_image_max_bytes} (empty_image_rule=size)"
            for n in size[under]
        ]
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
                f"{config.empty_informative_delta} levels < {config.empty_min_informative_share:.1%}, and {no_body}"
            )
    if row["edge_sharpness"] < config.empty_min_edge_sharpness:
        return EMPTY_RULE_BLURRED, f"edge sharpness {row['edge_sharpness']:.2f} < {config.empty_min_edge_sharpness}"
    if config.empty_min_repeats and row["same_image_count"] >= config.empty_min_repeats:
        return EMPTY_RULE_REPEATED, (
            f"the same picture in {row['same_image_count']} small images >= {config.empty_min_repeats}"
        )
    return None
