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

from .archive import (
    MEMBER_TABLE_COLUMNS,
    iter_member_tables,
    member_name_rejection,
    nm_from_member_name,
    open_listed_zip,
    open_zip,
    read_member,
    zip_member_count,
    zip_member_table,
)
from .config import (
    EMPTY_RULES,
    INDEX_COLUMNS,
    REASON_BAD_ZIP_MEMBER,
    REASON_MISSING_MEMBER,
    REJECTED_COLUMNS,
    ImageConfig,
    ImageDecodeError,
)
from .decoding import decode_image
from .index import build_image_index, decode_check_key, merge_shard_indexes
from .signals import apply_empty_image_rule, content_signals

__all__ = [
    "EMPTY_RULES",
    "INDEX_COLUMNS",
    "ImageConfig",
    "ImageDecodeError",
    "MEMBER_TABLE_COLUMNS",
    "REASON_BAD_ZIP_MEMBER",
    "REASON_MISSING_MEMBER",
    "REJECTED_COLUMNS",
    "apply_empty_image_rule",
    "build_image_index",
    "content_signals",
    "decode_check_key",
    "decode_image",
    "member_name_rejection",
    "merge_shard_indexes",
    "nm_from_member_name",
    "open_listed_zip",
    "open_zip",
    "read_member",
    "iter_member_tables",
    "zip_member_count",
    "zip_member_table",
]
