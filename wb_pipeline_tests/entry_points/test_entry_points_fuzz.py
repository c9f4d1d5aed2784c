"""Every way in, fuzzed: the search command's text, image and storage arguments, `evaluate`'s options, the
folder `make eval` starts on (`check_raw`), new-product drop folders, and the WB files' columns and types.

Each property says what any input must give: a result, or ONE readable line (a CLI's exit status 1/2, a
`QueryError`, a drop's or folder's 'reason: detail', a rejected row or value with its reason), never a
traceback, a hang or a silent loss. The hostile-input probe of the issue is here row by row too (tests
named `test_probe_...`). hypothesis keeps the examples small and the count modest (a few seconds each).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unicodedata
import zipfile
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wb_pipeline import check_raw, evaluate, search
from wb_pipeline.core.data import cleaning, drops, schema, storage
from wb_pipeline.core.data.characteristics import characteristics_table
from wb_pipeline.core.data.folder_check import check_wb_folder
from wb_pipeline.core.data.images import ImageConfig, build_image_index
from wb_pipeline.core.data.ingestion import SchemaError, read_wb_table
from wb_pipeline.core.labels.table import file_labels
from wb_pipeline.core.models.fusion import tabular_features
from wb_pipeline.core.search.index import IndexConfig
from wb_pipeline.core.search.query import QueryError, check_image_file, clean_query_text, read_image_file
from wb_pipeline.core.search.store import update_index

REPO_ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
HANG_S = 20.0  # an entry point that has not answered by then is hanging (a FIFO, an endless device)


def finishes(function, seconds: float = HANG_S):
    """`function()`'s result (or its exception), failing the test when it does not return in time."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds:.0f} s: the entry point hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def one_line(text: str, prefix: str) -> None:
    assert text.startswith(prefix), text
    assert text.count("\n") == 1 and text.endswith("\n"), f"not one line: {text!r}"
    assert "Traceback" not in text


# --- hostile files ---------------------------------------------------------------------------------

SPECIAL_KINDS = ("folder", "fifo", "broken_link", "link_loop", "dev_zero", "empty")


def make_special(path: Path, kind: str) -> Path:
    """`path` made into something that is not a usable regular file."""
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "broken_link":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "link_loop":
        path.symlink_to(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(kind)
    return path


def photo_bytes(size=(12, 9), colour=(180, 40, 40), fmt="JPEG", mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode != "L" else colour[0]).save(buffer, format=fmt)
    return buffer.getvalue()


def products_table(first_nm: int, n: int, test: bool = False) -> pa.Table:
    columns = {
        "nm": pa.array(range(first_nm, first_nm + n), pa.int64()),
        "title": pa.array([f"платье женское {i}" for i in range(n)]),
        "description": pa.array([f"летнее платье из хлопка {i}" for i in range(n)]),
    }
    if not test:
        columns["characteristics"] = pa.array(
            [b'[{"charcName": "\\u041f\\u043e\\u043b", "charcValues": ["\\u0416"]}]'] * n
        )
    columns["price"] = pa.array([990 + i for i in range(n)], pa.int64())
    return pa.table(columns)


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)


def write_valid_folder(folder: Path, first_nm: int = 100, n: int = 3, both: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(products_table(first_nm, n), folder / schema.TRAIN_FILE)
    if both:
        pq.write_table(products_table(first_nm + n, n, test=True), folder / schema.TEST_FILE)
    write_zip(folder / schema.IMAGES_ZIP, {f"{first_nm + i}.jpg": photo_bytes() for i in range(2 * n)})


# --- 1. the search command's text argument ----------------------------------------------------------

PROBE_CHARACTERS = [
    "\x00",
    "\x01",
    "\x7f",
    "\x1b[31m",
    "\u200b",
    "\ufeff",
    "\u00ad",
    "\u202e",
    " ",
    "\t",
    "\n",
    "\ud800",
    "\udcff",
    "\udfff",
    "a",
    "7",
    "👗",
    "платье",
    "!",
    "?",
    "\u0301",
    "\U0010ffff",
]
QUERIES = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=30),  # every category, surrogates included
    st.binary(max_size=30).map(os.fsdecode),  # argv bytes as Python hands them over (surrogateescape)
    st.lists(st.sampled_from(PROBE_CHARACTERS), max_size=8).map("".join),
)


def _tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "query:": 1, "платье": 2}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


TOKENIZER = _tokenizer()


@FUZZ
@given(text=QUERIES)
def test_a_text_query_becomes_searchable_text_or_one_query_error(text):
    try:
        cleaned = clean_query_text(text)
    except QueryError as error:
        one_line(f"{error}\n", "")
        return
    cleaned.encode("utf-8")  # no lone surrogate left
    assert cleaned and cleaned == " ".join(cleaned.split())
    categories = [unicodedata.category(c) for c in cleaned]
    assert not {"Cc", "Cf", "Cs"} & set(categories)
    assert any(c[0] in "LN" or c == "So" for c in categories)
    TOKENIZER.encode_batch(["query: " + cleaned])  # the tokenizers library takes what comes through


@FUZZ
@given(text=QUERIES)
def test_the_search_command_answers_any_text_argument_in_one_line(text, tmp_path, capsys):
    code = search.main(["--storage", str(tmp_path), "--", text])  # an empty storage: nothing to search
    err = capsys.readouterr().err
    assert code in (1, 2)  # 2: a bad query (refused before any model loads); 1: no index
    one_line(err, "search: error: ")
    assert (code == 2) == ("text query" in err)


def test_probe_lone_surrogate_and_invalid_argv_bytes_are_refused(tmp_path, capsys):
    assert search.main(["\ud800", "--storage", str(tmp_path)]) == 2
    one_line(capsys.readouterr().err, "search: error: the text query is not valid text")
    done = subprocess.run(
        [sys.executable, "-m", "wb_pipeline.search", b"\xff\xfe\xfdabc", "--storage", str(tmp_path)],
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    one_line(done.stderr.decode("utf-8", "replace"), "search: error: the text query is not valid text")


def test_probe_a_query_of_control_characters_only_is_refused(tmp_path, capsys):
    assert search.main(["\x01\x02\x03\x7f", "--storage", str(tmp_path)]) == 2
    one_line(capsys.readouterr().err, "search: error: empty text query (only control characters)")
    with pytest.raises(QueryError, match="no letter, digit or symbol"):
        clean_query_text("?! ...")
    assert clean_query_text("\x1b[31m платье\u200bлетнее\x00 ") == "[31m платье летнее"
    with pytest.raises(QueryError, match="above the 10000-character limit"):
        clean_query_text("a" * 10_001)


# --- 2. the search command's --image argument --------------------------------------------------------

IMAGE_BYTES = st.one_of(
    st.binary(max_size=300),
    st.builds(
        photo_bytes,
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
        st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"]),
        st.sampled_from(["RGB", "L"]),
    ),
    st.builds(lambda data, cut: data[:cut], st.builds(photo_bytes), st.integers(0, 600)),  # truncated photos
    st.builds(
        lambda data, at, byte: data[:at] + bytes([byte]) + data[at + 1 :],
        st.builds(photo_bytes),
        st.integers(0, 600),
        st.integers(0, 255),
    ),  # one byte changed
    st.sampled_from(
        [b"<html>404</html>", b"%PDF-1.4", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a" + b"\x00" * 20]
    ),
)


@FUZZ
@given(data=IMAGE_BYTES)
def test_any_image_file_decodes_to_rgb_or_gives_one_query_error(data, tmp_path):
    path = tmp_path / "query.jpg"
    path.write_bytes(data)
    try:
        photo = read_image_file(path)
    except QueryError as error:
        one_line(f"{error}\n", "")
        assert str(path) in str(error)
        return
    assert photo.mode == "RGB" and photo.size[0] >= 1 and photo.size[1] >= 1


@pytest.mark.parametrize(
    "kind", [*(k for k in SPECIAL_KINDS if k != "empty"), "oversized", "missing", "/dev/zero", "/dev/null"]
)
def test_probe_an_image_argument_that_is_no_photo_file_is_refused_before_reading(kind, tmp_path, capsys):
    if kind.startswith("/dev/"):
        path = Path(kind)
    elif kind == "oversized":  # sparse: 65 MiB on paper, nothing on disk
        path = tmp_path / "huge.jpg"
        with open(path, "wb") as handle:
            handle.truncate(65 * 1024 * 1024)
    elif kind == "missing":
        path = tmp_path / "missing.jpg"
    else:
        path = make_special(tmp_path / "photo.jpg", kind)
    code = finishes(lambda: search.main(["--image", str(path), "--storage", str(tmp_path / "no_store")]))
    err = capsys.readouterr().err
    assert code == 2, err
    one_line(err, "search: error: cannot read image ")
    with pytest.raises(QueryError, match="cannot read image"):
        finishes(lambda: read_image_file(path))
    with pytest.raises(QueryError, match="cannot read image"):
        finishes(lambda: check_image_file(path))


# --- 3. the search command's --storage argument -------------------------------------------------------


class _FakeTextEncoder:
    fingerprint = "fake-text"

    def encode(self, texts):
        rng = np.random.default_rng(len(texts[0]))
        vectors = rng.normal(size=(len(texts), 6)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class _FakeResource:
    def __init__(self, encoder):
        self.encoder = encoder

    def build(self):
        return self.encoder

    def build_query_encoder(self):
        return self.encoder


FAKE_DEFINITIONS = SimpleNamespace(
    resources={"text_encoder": _FakeResource(_FakeTextEncoder()), "image_encoder": _FakeResource(None)}
)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """A storage dir with a 12-product text-space index build and the `product_index` asset naming it."""
    root = tmp_path_factory.mktemp("store")
    vectors = _FakeTextEncoder().encode(["x" * 12] * 12) + np.eye(12, 6, dtype=np.float32)
    build, _ = update_index(
        root / "search" / "index",
        None,
        np.array([str(i) for i in range(12)], dtype=object),
        vectors,
        np.array([f"товар {i}" for i in range(12)], dtype=object),
        IndexConfig(space="text"),
        info={"encoder_dims": {"text": 6}},
    )
    storage.write_parquet(
        pd.DataFrame({"nm": [str(i) for i in range(12)], "index_folder": str(build.folder)}),
        storage.as_upath(root / "assets" / "product_index.parquet"),
    )
    return root


STORE_FILES = ("pointer", "manifest.json", "index.faiss", "products.parquet")
CORRUPTIONS = ("garbage", "truncate", "empty", "delete", *[k for k in SPECIAL_KINDS if k != "empty"])
MANIFEST_VALUES = st.one_of(
    st.sampled_from([[], 1, "x", None, {}, {"format_version": 1}]),
    st.fixed_dictionaries(
        {},
        optional={
            "space": st.one_of(st.integers(), st.text(max_size=5), st.none()),
            "size": st.one_of(st.integers(-2, 20), st.text(max_size=3)),
            "ef_search": st.one_of(st.integers(-5, 5), st.text(max_size=3)),
            "dim": st.integers(-1, 9),
            "encoders": st.sampled_from([None, {}, []]),
        },
    ),
)
POINTER_VALUES = st.one_of(
    st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=3), st.just(["/"]), st.just([".."])
)


@FUZZ
@given(
    target=st.sampled_from(STORE_FILES),
    corruption=st.sampled_from(CORRUPTIONS),
    data=st.binary(max_size=64),
    cut=st.floats(0, 1),
    manifest=MANIFEST_VALUES,
    pointer=POINTER_VALUES,
    rewrite=st.sampled_from(["bytes", "value"]),
)
def test_a_broken_index_store_is_one_line_never_a_traceback(
    tiny_store, capsys, target, corruption, data, cut, manifest, pointer, rewrite
):
    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        shutil.copytree(tiny_store, store, symlinks=True)
        folder = Path(
            pd.read_parquet(store / "assets" / "product_index.parquet")["index_folder"]
            .iloc[0]
            .replace(str(tiny_store), str(store), 1)
        )
        storage.write_parquet(
            pd.DataFrame({"nm": ["0"], "index_folder": [str(folder)]}),
            storage.as_upath(store / "assets" / "product_index.parquet"),
        )
        path = store / "assets" / "product_index.parquet" if target == "pointer" else folder / target
        if rewrite == "value" and target == "manifest.json":
            original = json.loads(path.read_text())
            value = {**original, **manifest} if isinstance(manifest, dict) and manifest else manifest
            path.write_text(json.dumps(value))
        elif rewrite == "value" and target == "pointer":
            pd.DataFrame({"index_folder": pd.Series(pointer, dtype=object)}).to_parquet(path)
        else:
            content = path.read_bytes()
            path.unlink()
            if corruption == "garbage":
                path.write_bytes(data)
            elif corruption == "truncate":
                path.write_bytes(content[: int(len(content) * cut)])
            elif corruption != "delete":
                make_special(path, corruption)
        try:
            searcher = finishes(lambda: search.open_searcher(str(store), definitions=FAKE_DEFINITIONS))
        except search.NotMaterialized as error:
            one_line(f"{error}\n", "")
            code = finishes(lambda: search.main(["платье", "--storage", str(store)]))  # fails where it did
            assert code == 1
            one_line(capsys.readouterr().err, "search: error: ")
            return
        try:
            results = searcher.search_text("платье", 3)  # a store that still opens must still answer ...
        except QueryError as error:  # ... or say why a text query cannot go there (an image-only space)
            one_line(f"{error}\n", "")
            return
        assert len(results) == 3


def test_probe_a_store_whose_product_index_table_is_garbage(tiny_store, tmp_path, capsys):
    store = tmp_path / "store"
    (store / "assets").mkdir(parents=True)
    (store / "assets" / "product_index.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    assert search.main(["платье", "--storage", str(store)]) == 1
    err = capsys.readouterr().err
    one_line(err, "search: error: ")
    assert "not a readable product index table" in err


# --- 4. evaluate's options ------------------------------------------------------------------------------

OPTION_TOKENS = st.one_of(
    st.sampled_from(
        [
            "--folds",
            "--cluster-seeds",
            "--train-seeds",
            "--name",
            "0",
            "1",
            "2",
            "3",
            "-1",
            "x",
            "",
            "1.5",
            "99999999999999999999",
            "--folds=0",
            "--train-seeds=0",
            "-h",
        ]
    ),
    st.text(max_size=6),
)


@FUZZ
@given(argv=st.lists(OPTION_TOKENS, max_size=6))
def test_evaluate_answers_any_options_with_a_usage_error_or_one_line(argv, tmp_path, capsys):
    try:
        code = evaluate.main([str(tmp_path), *argv])
    except SystemExit as stop:  # argparse: a usage error (2) or the help (0)
        assert stop.code in (0, 2)
        err = capsys.readouterr().err
        assert "Traceback" not in err and (stop.code == 0 or "error:" in err)
        return
    assert code == 2  # an empty storage dir: no run to evaluate
    one_line(capsys.readouterr().err, "evaluate: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--folds", "0"], "--folds: must be at least 2, got 0"),
        (["--folds", "1"], "--folds: must be at least 2, got 1"),
        (["--train-seeds", "0"], "--train-seeds: must be at least 1, got 0"),
        (["--cluster-seeds", "-1"], "--cluster-seeds: must be at least 0, got -1"),
        (["--folds", "two"], "--folds: 'two' is not an integer"),
    ],
)
def test_probe_evaluate_refuses_impossible_options(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(tmp_path), *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["garbage", "folder", "fifo", "broken_link"])
def test_evaluate_on_unreadable_assets_says_so_in_one_line(kind, tmp_path, capsys):
    assets = tmp_path / "assets"
    assets.mkdir()
    for name in evaluate.REQUIRED_ASSETS:
        (assets / f"{name}.parquet").write_bytes(b"not parquet")
    target = assets / "text_embeddings.parquet"
    if kind != "garbage":
        target.unlink()
        make_special(target, kind)
    code = finishes(lambda: evaluate.main([str(tmp_path)]))
    err = capsys.readouterr().err
    if kind == "broken_link":  # not there at all
        assert code == 2 and "lacks text_embeddings" in err
    else:
        assert code == 2 and "not readable" in err
    one_line(err, "evaluate: ")


def test_probe_evaluate_counts_zip_members_it_never_read_and_prices_set_to_missing(tmp_path):
    members = tmp_path / "image_members.parquet"
    pd.DataFrame({"member": ["1.jpg", "../../evil.jpg", "/etc/passwd.jpg", "nested/2.jpg", "3.jpg"]}).to_parquet(
        members
    )
    raw = [
        pd.DataFrame({"nm": ["1", "2", "3"], "price": ["abc", "100", None]}),
        pd.DataFrame({"nm": ["4"], "price": [-5]}),
    ]
    notes = evaluate.input_value_notes(raw, storage.as_upath(members))
    assert notes["input prices set to missing"] == "2 (price_not_a_number 1, price_negative 1)"
    assert (
        notes["zip members never read (not a plain {nm}.jpg)"] == "3 (path_traversal 1, absolute_path 1, nested_path 1)"
    )


# --- 5. the folder `make eval` starts on --------------------------------------------------------------

FILE_KINDS = (
    "valid",
    "absent",
    "garbage",
    "empty",
    "missing_columns",
    "fractional_nm",
    "no_rows",
    "folder",
    "fifo",
    "broken_link",
)
ZIP_KINDS = ("valid", "absent", "garbage", "empty", "no_photos", "evil_names", "folder", "fifo", "broken_link")


def write_file(folder: Path, name: str, kind: str, table: pa.Table) -> bool:
    """Writes `name` as `kind`; True when that is a usable file."""
    path = folder / name
    if kind == "absent":
        return False
    if kind == "valid":
        pq.write_table(table, path)
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif kind == "missing_columns":
        pq.write_table(
            table.drop_columns(["title"]) if "title" in table.column_names else table.drop_columns(["size"]), path
        )
    elif kind == "fractional_nm":
        pq.write_table(table.set_column(0, "nm", pa.array([1.5] * len(table))), path)
    elif kind == "no_rows":
        pq.write_table(table.slice(0, 0), path)
    else:
        make_special(path, kind)
    return kind in ("valid", "no_rows")


def write_images_zip(folder: Path, kind: str, first_nm: int) -> bool:
    path = folder / schema.IMAGES_ZIP
    if kind == "absent":
        return False
    if kind == "valid":
        write_zip(path, {f"{first_nm + i}.jpg": photo_bytes() for i in range(6)})
    elif kind == "evil_names":  # usable, with members it must skip and count
        write_zip(
            path, {"../../evil.jpg": b"x", "/abs.jpg": b"x", "C:/win.jpg": b"x", f"{first_nm}.jpg": photo_bytes()}
        )
    elif kind == "no_photos":
        write_zip(path, {"readme.txt": b"hello", "../up.jpg": b"x"})
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        make_special(path, kind)
    return kind in ("valid", "evil_names")


FOLDER = st.fixed_dictionaries(
    {
        "train": st.sampled_from(FILE_KINDS),
        "test": st.sampled_from(FILE_KINDS),
        "zip": st.sampled_from(ZIP_KINDS),
        "sizes": st.sampled_from(("absent", "valid", "garbage", "missing_columns", "fifo")),
    }
)


def write_folder(folder: Path, spec: dict, first_nm: int) -> bool:
    """A WB-layout folder as `spec` says; True when a run could start on it (both files, one row at least)."""
    folder.mkdir(parents=True, exist_ok=True)
    train = write_file(folder, schema.TRAIN_FILE, spec["train"], products_table(first_nm, 3))
    test = write_file(folder, schema.TEST_FILE, spec["test"], products_table(first_nm + 3, 3, test=True))
    photos = write_images_zip(folder, spec["zip"], first_nm)
    sizes = write_file(
        folder,
        schema.IMAGE_SIZES_FILE,
        spec["sizes"],
        pa.table({"nm": pa.array([first_nm], pa.int64()), "size": pa.array([1000], pa.int64())}),
    )
    some_rows = "valid" in (spec["train"], spec["test"])
    return train and test and some_rows and photos and (spec["sizes"] == "absent" or sizes)


@FUZZ
@given(spec=FOLDER)
def test_check_raw_accepts_exactly_the_folders_a_run_can_start_on(spec, capsys):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "raw"
        usable = write_folder(folder, spec, 100)
        code = finishes(lambda: check_raw.main([str(folder)]))
    captured = capsys.readouterr()
    assert code == (0 if usable else 2), (spec, captured.err)
    lines = captured.err.splitlines()
    assert all(line.startswith("check_raw: ") for line in lines) and "Traceback" not in captured.err
    if not usable:
        assert lines[-1].startswith(f"check_raw: cannot start a run on {folder}: ")
    elif spec["zip"] == "evil_names":
        assert any("3 of 4 members are not a plain {nm}.jpg" in line for line in lines)


@pytest.mark.parametrize(
    "make_raw_dir, reason",
    [
        (lambda tmp: tmp / "does-not-exist", "missing_folder"),
        (lambda tmp: tmp, "missing_product_file"),  # an empty folder
        (lambda tmp: Path(shutil.copy(__file__, tmp / "a_file.py")), "not_a_folder"),
        (
            lambda tmp: (
                write_folder(tmp / "raw", {"train": "valid", "test": "valid", "zip": "absent", "sizes": "absent"}, 1),
                tmp / "raw",
            )[1],
            "missing_images_zip",
        ),
    ],
)
def test_probe_make_eval_refuses_a_missing_empty_or_wrong_raw_dir_in_one_line(make_raw_dir, reason, tmp_path, capsys):
    raw_dir = make_raw_dir(tmp_path)
    assert check_raw.main([str(raw_dir)]) == 2
    err = capsys.readouterr().err
    one_line(err, f"check_raw: cannot start a run on {raw_dir}: {reason}: ")


def test_make_eval_checks_the_raw_dir_before_it_starts_the_run():
    dry = subprocess.run(
        ["make", "-n", "eval", "RAW_DIR=/nowhere", "BIN=.venv/bin"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    lines = dry.stdout.splitlines()
    check = next(i for i, line in enumerate(lines) if "-m wb_pipeline.check_raw" in line)
    run = next(i for i, line in enumerate(lines) if "dagster job execute" in line)
    assert check < run and not any("storage/eval" in line for line in lines[:check])


def test_probe_prices_that_are_not_numbers_are_noted_before_the_run(tmp_path, capsys):
    folder = tmp_path / "raw"
    write_valid_folder(folder)
    table = pq.read_table(folder / schema.TRAIN_FILE)
    prices = pa.array(["abc", "1299", "-4"])
    pq.write_table(table.set_column(table.column_names.index("price"), "price", prices), folder / schema.TRAIN_FILE)
    assert check_raw.main([str(folder)]) == 0
    err = capsys.readouterr().err
    assert (
        "check_raw: note: wb_school_train.parquet: 2 of 3 prices are not usable numbers "
        "(price_not_a_number 1, price_negative 1; e.g. 'abc', '-4')"
    ) in err


# --- 6. new-product drop folders -------------------------------------------------------------------------

DROP_NAMES = st.one_of(
    st.sampled_from(["drop-1", "2026.12.07_a", "Ж", "a b", "-x", ".hidden", "x" * 101]),
    st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
        lambda name: name not in (".", "..")
    ),
)


@FUZZ
@given(spec=FOLDER, name=DROP_NAMES)
def test_one_bad_drop_never_blocks_a_good_one(spec, name):
    with tempfile.TemporaryDirectory() as scratch:
        incoming = Path(scratch)
        write_valid_folder(incoming / "good_drop", 500)
        if name == "good_drop":
            name = "other"
        try:
            folder = incoming / name
            folder.mkdir()
        except OSError:  # a name this file system cannot hold
            return
        write_folder(folder, spec, 900)
        file_ok = {key: spec[key] in ("valid", "no_rows", "evil_names") for key in ("train", "test", "zip")}
        usable = (
            drops.DROP_NAME_PATTERN.match(name) is not None
            and "valid" in (spec["train"], spec["test"])
            and all(file_ok[key] or spec[key] == "absent" for key in ("train", "test"))
            and spec["zip"] in ("valid", "evil_names")
            and spec["sizes"] in ("absent", "valid")
        )
        statuses = {status.name: status for status in finishes(lambda: drops.scan_incoming(str(incoming)))}
    assert statuses["good_drop"].problem is None
    assert (statuses[name].problem is None) == usable, statuses[name]
    if statuses[name].problem is not None:
        reason, _, detail = statuses[name].problem.partition(": ")
        assert reason.isidentifier() and "\n" not in statuses[name].problem


def test_probe_a_broken_symlink_in_a_drop_does_not_stop_the_sensor(tmp_path):
    from wb_pipeline.defs.automation.jobs import build_incoming_sensor, product_drops

    incoming = tmp_path / "incoming"
    write_valid_folder(incoming / "bad", 500)
    (incoming / "bad" / "leftover.parquet").symlink_to(tmp_path / "gone")  # the probe: a link to nowhere
    (incoming / "bad" / schema.TEST_FILE).unlink()
    (incoming / "bad" / schema.TEST_FILE).symlink_to(tmp_path / "gone_too")
    write_valid_folder(incoming / "good", 700)
    statuses = {status.name: status for status in drops.scan_incoming(str(incoming))}
    assert statuses["good"].problem is None
    assert (
        statuses["bad"].problem.startswith("bad_product_file: ") and "broken symbolic link" in statuses["bad"].problem
    )
    sensor = build_incoming_sensor(str(incoming))
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance))
        assert [request.partition_keys for request in result.dynamic_partitions_requests] == [["good"]]
        assert product_drops.name == result.dynamic_partitions_requests[0].partitions_def_name
        assert "bad" in json.loads(result.cursor)  # retried only when its files change


# --- 7. the WB files' columns and types -------------------------------------------------------------------

TEXTS = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


def column(kind: str, n: int, draw) -> pa.Array:
    if kind == "int":
        return pa.array(
            draw(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n)), pa.int64()
        )
    if kind == "float":
        return pa.array(
            draw(
                st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=n, max_size=n)
            ),
            pa.float64(),
        )
    if kind == "string":
        return pa.array(
            draw(
                st.lists(
                    st.one_of(st.none(), TEXTS, st.sampled_from(["abc", "12", " 7 ", "", "-1", "1e400"])),
                    min_size=n,
                    max_size=n,
                )
            ),
            pa.string(),
        )
    if kind == "binary":
        return pa.array(
            draw(
                st.lists(
                    st.one_of(
                        st.none(),
                        st.binary(max_size=30),
                        st.sampled_from(
                            [
                                b'[{"charcName": "\\u0421\\u0435\\u0437\\u043e\\u043d", "charcValues": ["\\u043b\\u0435\\u0442\\u043e"]}]',
                                b"[{'charcName': 'x', 'charcValues': array(['y'], dtype=object)}]",
                                b"\xff\xfe",
                            ]
                        ),
                    ),
                    min_size=n,
                    max_size=n,
                )
            ),
            pa.binary(),
        )
    if kind == "bool":
        return pa.array(draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)), pa.bool_())
    return pa.nulls(n)


KINDS = ("int", "float", "string", "binary", "bool", "null")


@st.composite
def wb_tables(draw, test: bool):
    n = draw(st.integers(0, 6))
    names = [
        "nm",
        "title",
        "description",
        *(["category", "sub_category", "isadult"] if test else ["characteristics"]),
        "price",
        "brand",
    ]
    nm_kind = draw(st.sampled_from(["int", "string", "float", "null"]))
    nm = (
        pa.array(
            draw(st.lists(st.one_of(st.none(), st.integers(0, 50).map(float)), min_size=n, max_size=n)), pa.float64()
        )
        if nm_kind == "float"
        else column(nm_kind, n, draw)
    )
    columns = {"nm": nm}
    for name in names[1:]:
        if draw(st.booleans()) or name not in ("price", "brand", "category", "sub_category", "isadult"):
            columns[name] = column(draw(st.sampled_from(KINDS)), n, draw)
    return pa.table(columns)


@FUZZ
@given(train=wb_tables(test=False), test=wb_tables(test=True))
def test_any_columns_and_types_are_read_cleaned_and_featurised_or_refused_with_a_reason(train, test):
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        pq.write_table(train, folder / schema.TRAIN_FILE)
        pq.write_table(test, folder / schema.TEST_FILE)
        write_zip(folder / schema.IMAGES_ZIP, {"1.jpg": photo_bytes()})
        check = finishes(lambda: check_wb_folder(folder))  # never raises
        frames = {}
        for split, name, required in (
            ("train", schema.TRAIN_FILE, schema.TRAIN_REQUIRED_COLUMNS),
            ("test", schema.TEST_FILE, schema.TEST_REQUIRED_COLUMNS),
        ):
            try:
                frames[split] = read_wb_table(storage.as_upath(folder / name), required)
            except SchemaError:
                assert check.problem is not None and check.problem.startswith("bad_product_file: ")
                return
    assert check.problem is None or check.problem.startswith("no_products: ")
    result = cleaning.clean_products(frames, None, cleaning.CleaningConfig(require_image=False))
    assert len(result.clean) + len(result.rejected) == len(train) + len(test)  # nothing silently dropped
    assert set(result.rejected["reason"]) <= {
        cleaning.REJECT_MISSING_NM,
        cleaning.REJECT_DUPLICATE_NM,
        cleaning.REJECT_TEXT_NOT_UTF8,
        cleaning.REJECT_NO_TEXT,
        cleaning.REJECT_TITLE_TOO_SHORT,
    }
    values = result.rejected_values
    assert set(values["reason"]) <= {
        cleaning.REJECT_PRICE_NOT_A_NUMBER,
        cleaning.REJECT_PRICE_NEGATIVE,
        cleaning.REJECT_PRICE_NOT_FINITE,
    }
    assert set(values["nm"]) <= set(result.clean["nm"])
    if "price" in result.clean.columns and len(result.clean):
        prices = pd.to_numeric(result.clean["price"], errors="raise")  # only numbers (or missing) are left
        assert not (prices < 0).any() and np.isfinite(prices.dropna()).all()
        raw = pd.concat([frame.assign(split=split) for split, frame in frames.items()], ignore_index=True)
        given_price = raw.drop_duplicates("nm").set_index("nm")["price"] if "price" in raw else pd.Series(dtype=object)
        lost = [
            nm for nm, price in zip(result.clean["nm"], prices) if np.isnan(price) and not _blank(given_price.get(nm))
        ]
        assert sorted(lost) == sorted(values["nm"])  # a price set to missing is listed, and only such a price
    clean = result.clean
    if len(clean):
        if "characteristics" in clean.columns:
            table = characteristics_table(clean["nm"], clean["characteristics"])
            assert len(table.rejections) + len(table.parsed) == len(clean)
        features = tabular_features(clean["nm"], clean, None)
        assert len(features) == len(clean) and not np.isinf(features["log_price"]).any()
        file_labels(clean)


def _blank(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def test_probe_a_price_stored_as_text_is_a_recorded_rejection_with_a_warning(monkeypatch):
    from wb_pipeline.defs.preprocessing.assets import CleaningSettings, clean_and_rejected_products

    raw = pd.DataFrame(
        {
            "nm": ["1", "2", "3"],
            "title": ["платье", "юбка", "брюки"],
            "description": ["a", "b", "c"],
            "characteristics": [None] * 3,
            "price": ["abc", "1 299", "990"],
        }
    )
    context = dg.build_asset_context()
    warnings_logged = []
    monkeypatch.setattr(
        type(context.log), "warning", lambda self, message, *args, **kwargs: warnings_logged.append(message)
    )
    outputs = {
        output.output_name: output
        for output in clean_and_rejected_products(
            context=context,
            raw_products_train=raw,
            raw_products_test=raw.iloc[:0],
            image_index=pd.DataFrame(),
            config=CleaningSettings(require_image=False),
        )
    }
    clean, meta = outputs["clean_products"].value, outputs["clean_products"].metadata
    assert clean["price"].tolist()[2] == 990.0 and clean["price"].iloc[:2].isna().all()
    assert meta["rejected_values"].value == 2
    assert meta["rejected_value_reasons"].value.records[0].data == {
        "column": "price",
        "reason": "price_not_a_number",
        "count": 2,
    }
    assert warnings_logged == ["values set to missing: price price_not_a_number x2 (e.g. 'abc', '1 299')"]


# --- 8. the images zip: members that are never read are counted with their reason ---------------------------


@FUZZ
@given(
    names=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "../../evil.jpg",
                    "/abs.jpg",
                    "a/../b.jpg",
                    "C:\\x.jpg",
                    "x/",
                    "1.JPG",
                    "1.jpg",
                    "2.jpg",
                    "readme.txt",
                    ".jpg",
                    "-.jpg",
                ]
            ),
            st.text(max_size=10).map(lambda s: s + ".jpg"),
        ),
        max_size=8,
    )
)
def test_every_zip_member_is_indexed_or_rejected_with_a_reason(names):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in names:
            with contextlib.suppress(ValueError):  # zipfile refuses some names itself
                zf.writestr(zipfile.ZipInfo(name), photo_bytes())
    with zipfile.ZipFile(buffer) as zf:
        listed = zf.namelist()
        index, rejected = build_image_index(zf, None, ImageConfig())
    assert len(index) + len(rejected) == len(listed)  # nothing silently skipped
    assert rejected["reason"].notna().all()
    assert not index["member"].str.contains(r"\.\.|^/|\\", regex=True).any()
