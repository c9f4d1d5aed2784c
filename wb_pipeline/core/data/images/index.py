"""The image index: one row per zip member (decodable or the reason it is not, size checks against
`image_df.parquet`, content signals of small photos), built per shard and merged."""

from __future__ import annotations

import dataclasses
import re
import zipfile

import numpy as np
import pandas as pd

from wb_pipeline.core.data.ingestion import normalize_nm
from wb_pipeline.core.data.schema import IMAGE_SIZES_FILE, IMAGE_SIZES_REQUIRED_COLUMNS
from wb_pipeline.core.data.storage import content_hash, product_shards

from .archive import (
    _duplicate_names,
    _read_info,
    member_name_rejection,
    member_shard_key,
    nm_from_member_name,
)
from .config import (
    _CHECK_DRAFT_SIZE,
    _CHECK_RESULT_COLUMNS,
    CONTENT_SIGNAL_COLUMNS,
    DECODE_CHECK_VERSION,
    IMAGE_SUFFIX,
    INDEX_COLUMNS,
    REASON_EMPTY,
    REASON_SIZE_MISMATCH,
    REJECT_DUPLICATE_NAME,
    REJECT_IMAGE_DF_BAD_NM,
    REJECT_IMAGE_DF_BAD_SIZE,
    REJECT_IMAGE_DF_CONFLICTING_SIZES,
    REJECT_IMAGE_DF_DUPLICATE_NM,
    REJECT_NOT_IN_ZIP,
    REJECTED_COLUMNS,
    ImageConfig,
    ImageDecodeError,
)
from .decoding import _analysis_pixels, _decode
from .signals import apply_empty_image_rule, content_signals


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
                dict(
                    member=None,
                    reason=reason,
                    nm=None if pd.isna(nm) else nm,
                    source=IMAGE_SIZES_FILE,
                    detail=f"{detail} (nm={raw_nm!r})",
                )
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
    `core.data.storage.product_shards`; a rejected member without an nm goes to the shard of its name).

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
                dict(
                    member=nm + IMAGE_SUFFIX,
                    reason=REJECT_NOT_IN_ZIP,
                    nm=nm,
                    source=IMAGE_SIZES_FILE,
                    detail="image_df lists this nm but the zip has no such member",
                )
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
        nm=nm,
        member=info.filename,
        byte_size=info.file_size,
        crc32=info.CRC,
        size_from_image_df=image_df_size,
        content_hash=None,
        decodable=False,
        width=None,
        height=None,
        mode=None,
        reason=None,
        detail=None,
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
                signals = content_signals(
                    _analysis_pixels(result.image, config.empty_analysis_pixels), config.empty_informative_delta
                )
                row.update(dataclasses.asdict(signals))
            else:
                result = _decode(data, config, draft_size=_CHECK_DRAFT_SIZE)
            row.update(decodable=True, width=result.width, height=result.height, mode=result.mode)
        except ImageDecodeError as error:
            row.update(
                reason=error.reason,
                detail=error.detail or None,
                width=error.header.get("width"),
                height=error.header.get("height"),
                mode=error.header.get("mode"),
            )
    row["size_mismatch"] = image_df_size is not None and image_df_size != info.file_size
    if row["size_mismatch"]:
        note = f"image_df size {image_df_size} != zip member size {info.file_size}"
        row["detail"] = note if row["detail"] is None else f"{row['detail']}; {note}"
    return row


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
            **{
                name: pd.Series(columns[name], dtype="float64")
                for name in ("pixel_std", "informative_share", "body_share", "ink_spread", "edge_sharpness")
            },
            "pixel_hash": pd.Series(columns["pixel_hash"], dtype="str"),
            "same_image_count": pd.Series([None] * len(columns["nm"]), dtype="Int64"),
            "empty_rule": pd.Series([None] * len(columns["nm"]), dtype="str"),
            "empty_detail": pd.Series([None] * len(columns["nm"]), dtype="str"),
        }
    )


def _rejected_frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series([row[column] for row in rows], dtype="str") for column in REJECTED_COLUMNS})
