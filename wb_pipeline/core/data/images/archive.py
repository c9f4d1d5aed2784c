"""The images zip as hostile input: member-name validation (no directories, `..`, absolute paths,
backslashes or other extensions), opening a local or remote zip, reading one member with a byte cap."""

from __future__ import annotations

import os
import re
import struct
import weakref
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import IO

import numpy as np
import pandas as pd

from .config import (
    _NM_PATTERN,
    IMAGE_SUFFIX,
    REASON_BAD_ZIP_MEMBER,
    REASON_ENCRYPTED,
    REASON_MISSING_MEMBER,
    REASON_TOO_LARGE,
    REJECT_ABSOLUTE_PATH,
    REJECT_BACKSLASH,
    REJECT_BAD_NM,
    REJECT_DIRECTORY,
    REJECT_DUPLICATE_NAME,
    REJECT_NESTED_PATH,
    REJECT_NOT_JPG,
    REJECT_PATH_TRAVERSAL,
    ImageDecodeError,
)


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
    raise TypeError(f"open_zip expects a path, a UPath or a binary file object, got {type(path_or_file).__name__}")


MEMBER_TABLE_COLUMNS = (
    "member",
    "shard_key",
    "zip_position",
    "header_offset",
    "compress_size",
    "file_size",
    "crc32",
    "compress_type",
    "flag_bits",
    "zip_bytes",
)


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
    return pd.DataFrame(
        {
            "member": pd.Series([info.orig_filename for info in infos], dtype=object),
            "shard_key": pd.Series([member_shard_key(info.filename) for info in infos], dtype=object),
            "zip_position": np.arange(len(infos), dtype=np.int64),
            **{
                column: np.fromiter((getattr(info, attribute) for info in infos), dtype=np.int64, count=len(infos))
                for column, attribute in (
                    ("header_offset", "header_offset"),
                    ("compress_size", "compress_size"),
                    ("file_size", "file_size"),
                    ("crc32", "CRC"),
                    ("compress_type", "compress_type"),
                    ("flag_bits", "flag_bits"),
                )
            },
            "zip_bytes": np.full(len(infos), zip_bytes, dtype=np.int64),
        },
        columns=list(MEMBER_TABLE_COLUMNS),
    )


def _member_frame(rows: dict[str, list], zip_bytes: int) -> pd.DataFrame:
    n = len(rows["member"])
    return pd.DataFrame(
        {
            "member": pd.Series(rows["member"], dtype=object),
            "shard_key": pd.Series(rows["shard_key"], dtype=object),
            # the integer columns: every column between the two names and `zip_bytes`
            **{column: np.asarray(rows[column], dtype=np.int64) for column in MEMBER_TABLE_COLUMNS[2:-1]},
            "zip_bytes": np.full(n, zip_bytes, dtype=np.int64),
        },
        columns=list(MEMBER_TABLE_COLUMNS),
    )


def _end_record(file_object: IO[bytes]) -> list:
    try:
        end = zipfile._EndRecData(file_object)
    except OSError as error:
        raise zipfile.BadZipFile("File is not a zip file") from error
    if not end:
        raise zipfile.BadZipFile("File is not a zip file")
    return end


def zip_member_count(file_object: IO[bytes]) -> int:
    """The number of central-directory records a zip says it has (its end record alone is read)."""
    return int(_end_record(file_object)[zipfile._ECD_ENTRIES_TOTAL])


def iter_member_tables(file_object: IO[bytes], rows_per_table: int = 65_536) -> Iterator[pd.DataFrame]:
    """`zip_member_table`'s rows, `rows_per_table` at a time, read straight from the zip's central
    directory: memory follows one table, not the zip (`zipfile` holds the whole directory and ~630 B of
    `ZipInfo` a member). Each record is decoded as `zipfile.ZipFile` decodes it (same name decoding,
    Zip64 extra fields, offsets of a zip appended to other bytes)."""
    zip_bytes = file_object.seek(0, os.SEEK_END)
    end = _end_record(file_object)
    size_cd, offset_cd = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    concat = end[zipfile._ECD_LOCATION] - size_cd - offset_cd
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if offset_cd + concat < 0:
        raise zipfile.BadZipFile("Bad offset for central directory")
    file_object.seek(offset_cd + concat)
    rows: dict[str, list] = {column: [] for column in MEMBER_TABLE_COLUMNS if column != "zip_bytes"}
    read = position = 0
    while read < size_cd:
        record = file_object.read(zipfile.sizeCentralDir)
        if len(record) != zipfile.sizeCentralDir:
            raise zipfile.BadZipFile("Truncated central directory")
        fields = struct.unpack(zipfile.structCentralDir, record)
        if fields[zipfile._CD_SIGNATURE] != zipfile.stringCentralDir:
            raise zipfile.BadZipFile("Bad magic number for central directory")
        raw_name = file_object.read(fields[zipfile._CD_FILENAME_LENGTH])
        flags = fields[zipfile._CD_FLAG_BITS]
        info = zipfile.ZipInfo(raw_name.decode("utf-8" if flags & zipfile._MASK_UTF_FILENAME else "cp437"))
        info.extra = file_object.read(fields[zipfile._CD_EXTRA_FIELD_LENGTH])
        file_object.seek(fields[zipfile._CD_COMMENT_LENGTH], os.SEEK_CUR)
        info.header_offset = fields[zipfile._CD_LOCAL_HEADER_OFFSET]
        info.flag_bits, info.compress_type = fields[zipfile._CD_FLAG_BITS], fields[zipfile._CD_COMPRESS_TYPE]
        info.CRC, info.compress_size = fields[zipfile._CD_CRC], fields[zipfile._CD_COMPRESSED_SIZE]
        info.file_size = fields[zipfile._CD_UNCOMPRESSED_SIZE]
        info._decodeExtra()  # Zip64 sizes and offset
        for column, value in (
            ("member", info.orig_filename),
            ("shard_key", member_shard_key(info.filename)),
            ("zip_position", position),
            ("header_offset", info.header_offset + concat),
            ("compress_size", info.compress_size),
            ("file_size", info.file_size),
            ("crc32", info.CRC),
            ("compress_type", info.compress_type),
            ("flag_bits", info.flag_bits),
        ):
            rows[column].append(value)
        position += 1
        read += (
            zipfile.sizeCentralDir
            + fields[zipfile._CD_FILENAME_LENGTH]
            + fields[zipfile._CD_EXTRA_FIELD_LENGTH]
            + fields[zipfile._CD_COMMENT_LENGTH]
        )
        if len(rows["member"]) == rows_per_table:
            yield _member_frame(rows, zip_bytes)
            rows = {column: [] for column in rows}
    if rows["member"] or position == 0:
        yield _member_frame(rows, zip_bytes)


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
            raise ValueError(
                f"{_describe(file_object)}: the zip has {actual} bytes but its member table was "
                f"made from {sorted(recorded)}: the zip changed since, re-read its directory"
            )
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
        raise ImageDecodeError(REASON_TOO_LARGE, f"{info.filename} has {info.file_size} bytes > limit {max_bytes}")
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
