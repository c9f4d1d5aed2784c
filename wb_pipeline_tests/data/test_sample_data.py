"""Tests of the deterministic WB-layout sample generator (small samples, fast)."""

from __future__ import annotations

import ast
import io
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wb_pipeline.core.data.images import ImageConfig, build_image_index, open_zip
from wb_pipeline.core.data.schema import IMAGE_SIZES_FILE, IMAGES_ZIP, TEST_FILE, TRAIN_FILE, label_vocabularies
from wb_pipeline.sample_data import (
    MANIFEST_FILE,
    SampleSpec,
    ensure_sample,
    generate_catalogue,
    generate_tables,
    read_manifest,
    write_sample,
)
from wb_pipeline.sample_data.__main__ import main as cli_main
from wb_pipeline.sample_data.catalog import sub_category_to_category

SMALL = SampleSpec(n_products=200, seed=3)
FILES = (TRAIN_FILE, TEST_FILE, IMAGES_ZIP, IMAGE_SIZES_FILE)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("sample")
    manifest = write_sample(out, SMALL)
    return out, manifest


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    return generate_catalogue(SMALL)


@pytest.fixture(scope="module")
def text_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_tables(SampleSpec(n_products=2000, seed=5, with_images=False))


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_files_have_the_wb_layout_and_dtypes(sample_dir):
    out, manifest = sample_dir
    assert sorted(p.name for p in out.iterdir()) == sorted((*FILES, MANIFEST_FILE))
    train, test, sizes = (pq.read_schema(out / f) for f in (TRAIN_FILE, TEST_FILE, IMAGE_SIZES_FILE))
    assert train.names == ["nm", "title", "description", "characteristics", "brand", "price"]
    assert test.names == ["nm", "title", "description", "category", "sub_category", "price", "brand", "isadult"]
    assert sizes.names == ["nm", "size"]
    assert train.field("nm").type == pa.int64() and test.field("nm").type == pa.int64()
    assert sizes.field("nm").type == pa.string()  # the real data mixes id types
    assert train.field("characteristics").type == pa.binary()
    assert test.field("isadult").type == pa.bool_()
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == SMALL.n_products
    assert manifest["counts"]["test"] == round(SMALL.n_products * SMALL.test_fraction)
    train_nm = set(pd.read_parquet(out / TRAIN_FILE)["nm"])
    test_nm = set(pd.read_parquet(out / TEST_FILE)["nm"])
    assert not train_nm & test_nm


def test_zip_is_flat_and_image_df_lists_real_member_sizes(sample_dir):
    out, _ = sample_dir
    with zipfile.ZipFile(out / IMAGES_ZIP) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert all("/" not in n and n.endswith(".jpg") and n[:-4].isdigit() for n in names)
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
    sizes = pd.read_parquet(out / IMAGE_SIZES_FILE)
    assert dict(zip(sizes["nm"], sizes["size"])) == {i.filename[:-4]: i.file_size for i in infos}


def test_same_spec_gives_identical_bytes_and_another_seed_differs(sample_dir, tmp_path):
    _, manifest = sample_dir
    again = write_sample(tmp_path / "again", SMALL)
    assert {f: again["files"][f]["sha256"] for f in FILES} == {f: manifest["files"][f]["sha256"] for f in FILES}
    other = write_sample(tmp_path / "other", SampleSpec(n_products=200, seed=4))
    for name in FILES:
        assert other["files"][name]["sha256"] != manifest["files"][name]["sha256"], name


def test_tables_in_memory_match_the_written_files(sample_dir):
    out, _ = sample_dir
    train, test = generate_tables(SMALL)
    pd.testing.assert_frame_equal(train, pd.read_parquet(out / TRAIN_FILE))
    pd.testing.assert_frame_equal(test, pd.read_parquet(out / TEST_FILE))


def test_all_three_characteristics_forms_are_present_and_genuine(catalogue):
    train = catalogue[catalogue["split"] == "train"]
    by_form = {
        form: [
            c
            for c in train.loc[train["characteristics_form"] == form, "characteristics"]
            if c != b"[]" and b"'[]'" not in c
        ]  # an empty list is valid but prints differently
        for form in (1, 2, 3)
    }
    assert all(len(cells) >= 10 for cells in by_form.values())
    form1, form2, form3 = by_form[1], by_form[2], by_form[3]
    assert all(c.startswith(b"b'b\\'") and c.endswith(b"\\''") for c in form1)
    # Form 1 unwraps with a literal-only parser (two bytes reprs) into JSON with \uXXXX escapes.
    inner = ast.literal_eval(ast.literal_eval(form1[0].decode("utf-8")).decode("utf-8")).decode("utf-8")
    assert "\\u" in inner and all("charcName" in item for item in json.loads(inner))
    # Form 2 is numpy's str(): newline-separated dicts without commas, lists as array([...], dtype=object).
    assert all(c.startswith(b"[{'charcName'") and b"dtype=object)" in c for c in form2)
    assert any(b"}\n {" in c for c in form2)
    items = [item for cell in form3 for item in json.loads(cell.decode("utf-8"))]
    assert any("value" in item for item in items) and any("charcValues" in item for item in items)
    assert any(isinstance(item.get("value"), str) and "," in item["value"] for item in items)  # decimal comma


def test_malformed_cells_are_present(sample_dir):
    out, _ = sample_dir
    cells = pd.read_parquet(out / TRAIN_FILE)["characteristics"].tolist()
    assert None in cells and b"" in cells
    assert b"__import__('os').system('echo pwned')" in cells
    undecodable = 0
    for cell in cells:
        if cell:
            try:
                cell.decode("utf-8")
            except UnicodeDecodeError:
                undecodable += 1
    assert undecodable >= 1
    assert len(cells) * 0.15 > sum(1 for c in cells if not c or b"pwned" in c)  # still rare


def test_label_characteristics_are_imbalanced_and_mostly_missing(catalogue):
    train = catalogue[catalogue["split"] == "train"]
    share = {
        label: train[f"{label}_in_characteristics"].mean()
        for label in ("sex", "season", "age_restrictions", "fragility")
    }
    assert 0.12 < share["sex"] < 0.4
    assert share["season"] < share["sex"] and share["age_restrictions"] < share["sex"]
    with_none = ~train[[f"{k}_in_characteristics" for k in share]].any(axis=1)
    assert with_none.mean() > 0.5
    sexes = train.loc[train["sex_in_characteristics"], "sex"].value_counts()
    assert sexes.index[0] == "для женщин" and sexes.iloc[0] > 2 * sexes.min()
    vocab = label_vocabularies()
    for label in share:
        assert set(catalogue[label].dropna()) <= set(vocab[label]), label


def test_labels_are_consistent_with_the_product():
    products = generate_catalogue(SampleSpec(n_products=3000, seed=1, with_images=False))
    dresses = products[products["sub_category"] == "Платья"]
    assert len(dresses) > 20 and (dresses["sex"] == "для женщин").all()
    jackets = products[products["sub_category"] == "Куртки"]
    assert set(jackets["season"]) <= {"зима", "демисезон"}
    glasses = products[products["sub_category"] == "Бокалы"]
    assert len(glasses) and (glasses["fragility"] == "хрупкий").all()
    adult = products[products["isadult"]]
    assert len(adult) and set(adult["category"]) <= {"Товары для взрослых", "Товары для курения"}
    assert products["isadult"].mean() < 0.1


def test_test_labels_come_from_the_vocabulary(sample_dir):
    out, _ = sample_dir
    test = pd.read_parquet(out / TEST_FILE)
    vocab = label_vocabularies()
    assert set(test["category"]) <= set(vocab["category"])
    assert set(test["sub_category"]) <= set(vocab["sub_category"])
    hierarchy = sub_category_to_category()
    assert set(hierarchy) == set(vocab["sub_category"]) and set(hierarchy.values()) <= set(vocab["category"])
    assert (test["sub_category"].map(hierarchy) == test["category"]).all()


def test_image_defects_are_present(sample_dir):
    out, manifest = sample_dir
    defects = manifest["image_defects"]
    sizes = pd.read_parquet(out / IMAGE_SIZES_FILE).set_index("nm")["size"]
    threshold = SMALL.empty_image_threshold_bytes
    with zipfile.ZipFile(out / IMAGES_ZIP) as archive:
        members = {i.filename[:-4] for i in archive.infolist()}
        assert defects["empty"] and all(sizes[nm] < threshold for nm in defects["empty"])
        for nm in defects["empty"]:
            _decode(archive.read(f"{nm}.jpg"))  # a placeholder, but a valid JPEG
        # every placeholder kind is there, and the logo placeholder is one picture shared by all its cards
        assert sorted(defects["empty_kind"]) == defects["empty"]
        assert set(defects["empty_kind"].values()) == {"uniform", "no_photo", "logo", "blurred"}
        logos = [nm for nm, kind in defects["empty_kind"].items() if kind == "logo"]
        assert len({archive.read(f"{nm}.jpg") for nm in logos}) == 1
        # small clean product shots: below the size cut too, but good photos
        assert defects["small_clean"] and all(sizes[nm] < threshold for nm in defects["small_clean"])
        assert not set(defects["small_clean"]) & set(defects["empty"])
        assert len(defects["corrupt"]) >= 1
        for nm in defects["corrupt"]:
            with pytest.raises((OSError, SyntaxError, ValueError)):  # what PIL raises on a broken JPEG
                _decode(archive.read(f"{nm}.jpg"))
        assert defects["missing"] and not set(defects["missing"]) & members
        assert defects["duplicate"]
        for copy, source in defects["duplicate"]:
            assert archive.read(f"{copy}.jpg") == archive.read(f"{source}.jpg")
        normal = members - set(defects["empty"]) - set(defects["corrupt"]) - set(defects["small_clean"])
        assert all(sizes[nm] >= threshold for nm in normal)
        modes = {_decode(archive.read(f"{nm}.jpg")).mode for nm in defects["grayscale"] + defects["cmyk"]}
        assert modes == {"L", "CMYK"}
    products = set(pd.read_parquet(out / TRAIN_FILE)["nm"].astype(str)) | set(
        pd.read_parquet(out / TEST_FILE)["nm"].astype(str)
    )
    assert defects["orphan"] and not set(defects["orphan"]) & products


def test_the_content_rule_rejects_the_placeholders_and_keeps_the_small_clean_shots(sample_dir):
    out, manifest = sample_dir
    defects = manifest["image_defects"]
    with open_zip(out / IMAGES_ZIP) as zf:
        index = build_image_index(zf, pd.read_parquet(out / IMAGE_SIZES_FILE), ImageConfig())[0].set_index("nm")
    assert index.loc[defects["empty"], "is_empty"].all()
    assert not index.loc[defects["small_clean"], "is_empty"].any()
    assert index["is_empty"].sum() == len(defects["empty"])  # nothing else is taken for a placeholder
    expected = {
        "uniform": "near_uniform",
        "no_photo": "tiny_informative_area",
        "logo": "tiny_informative_area",
        "blurred": "blurred",
    }
    for nm, kind in defects["empty_kind"].items():
        assert index.loc[nm, "empty_rule"] == expected[kind], (nm, kind)


def test_images_carry_sex_and_season_signal(sample_dir, catalogue):
    out, manifest = sample_dir
    skip = (
        set(manifest["image_defects"]["empty"])
        | set(manifest["image_defects"]["corrupt"])
        | {d for d, _ in manifest["image_defects"]["duplicate"]}
        | set(manifest["image_defects"]["missing"])
        | set(manifest["image_defects"]["small_clean"])
    )  # studio shots on white: no season background
    redness: dict[str, list[float]] = {"W": [], "M": []}
    brightness: dict[str, list[float]] = {"W": [], "D": []}
    with zipfile.ZipFile(out / IMAGES_ZIP) as archive:
        for row in catalogue.itertuples():
            nm = str(row.nm)
            if nm in skip:
                continue
            if row.image_sex not in redness and row.image_season not in brightness:
                continue
            pixels = np.asarray(_decode(archive.read(f"{nm}.jpg")).convert("RGB"), dtype=np.float32)
            if row.image_sex in redness:
                redness[row.image_sex].append(float((pixels[..., 0] - pixels[..., 2]).mean()))
            if row.image_season in brightness:
                brightness[row.image_season].append(float(pixels.mean()))
    assert min(len(v) for v in redness.values()) >= 3 and min(len(v) for v in brightness.values()) >= 3
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean(redness["W"]) > mean(redness["M"])  # women's palette is warmer
    assert mean(brightness["W"]) > mean(brightness["D"]) + 20  # winter scenes are light


def test_text_has_marketplace_quirks_and_duplicates(text_tables):
    train, test = text_tables
    both = pd.concat([train, test])
    titles, descriptions = both["title"], both["description"]
    assert titles.isna().any() and (titles == "").any()
    assert descriptions.isna().any() and (descriptions == "").any()
    assert titles.dropna().loc[lambda s: s != ""].duplicated().mean() > 0.05
    pairs = both.dropna(subset=["title", "description"])
    assert pairs.duplicated(subset=["title", "description"]).any()
    text = descriptions.fillna("")
    assert (text.str.split().str.len() > 300).any()
    for token in ("<br>", "<p>", "&nbsp;"):
        assert text.str.contains(token, regex=False).any(), token
    everything = titles.fillna("") + " " + text
    assert everything.str.contains(r"\d+х\d+").any() and everything.str.contains(r"\d+x\d+").any()
    assert everything.str.contains(r"\d+мл").any() and everything.str.contains("1,5 л", regex=False).any()
    assert everything.str.contains("✅", regex=False).any()
    upper = titles.dropna().loc[lambda s: s.str.len() > 5]
    assert (upper == upper.str.upper()).any()
    assert titles.dropna().str.fullmatch(r"[A-Za-z0-9' &\-\./]+").any()  # English titles


def test_manifest_records_the_colour_variant_ground_truth(sample_dir, catalogue):
    _, manifest = sample_dir
    groups = manifest["ground_truth"]["colour_variant_models"]
    expected = catalogue.groupby("model_id")["nm"].apply(lambda nms: sorted(str(nm) for nm in nms))
    assert sorted(groups) == sorted(g for g in expected if len(g) > 1)
    assert all(len(g) >= 2 for g in groups) and groups == sorted(groups, key=lambda g: g[0])
    member_of = {nm: i for i, group in enumerate(groups) for nm in group}
    assert len(member_of) == sum(len(g) for g in groups)  # each product in one model at most
    # variants of one model are the same product type, and the files never carry the model id
    for group in groups:
        assert catalogue.loc[catalogue["nm"].astype(str).isin(group), "sub_category"].nunique() == 1
    train_columns = set(pd.read_parquet(sample_dir[0] / TRAIN_FILE).columns)
    assert "model_id" not in train_columns


def test_ensure_sample_writes_once_and_rewrites_on_spec_change(tmp_path):
    out = tmp_path / "sample"
    spec = SampleSpec(n_products=60, with_images=False)
    first = ensure_sample(out, spec)
    stamp = (out / TRAIN_FILE).stat().st_mtime_ns
    assert ensure_sample(out, spec) == first
    assert (out / TRAIN_FILE).stat().st_mtime_ns == stamp
    changed = ensure_sample(out, SampleSpec(n_products=60, seed=9, with_images=False))
    assert changed["spec"]["seed"] == 9 and read_manifest(out) == changed
    assert changed["files"][TRAIN_FILE]["sha256"] != first["files"][TRAIN_FILE]["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sample.") and p.is_dir()]


def test_ensure_sample_refuses_to_replace_foreign_data(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / TRAIN_FILE).write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="no sample_manifest.json"):
        ensure_sample(tmp_path / "real", SampleSpec(n_products=20, with_images=False))
    assert (tmp_path / "real" / TRAIN_FILE).read_bytes() == b"not ours"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_products": 1}, "n_products"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"empty_image_rate": 1.5}, "empty_image_rate"),
        ({"image_side": (10, 20)}, "image_side"),
    ],
)
def test_spec_validation_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SampleSpec(**kwargs)


def test_cli_writes_tables_only_without_images(tmp_path, capsys):
    assert cli_main([str(tmp_path / "cli"), "--n-products", "40", "--seed", "2", "--no-images"]) == 0
    assert sorted(os.listdir(tmp_path / "cli")) == sorted([MANIFEST_FILE, TEST_FILE, TRAIN_FILE])
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["products"] == 40


def test_numpy_form_is_exactly_numpys_own_str():
    from wb_pipeline.sample_data.characteristics import FORM_NUMPY_REPR, encode_characteristics

    items = [
        {"charcName": "Пол", "charcValues": ["Женский"]},
        {"charcName": "Состав", "charcValues": ["хлопок 95%", "эластан 5%", "вискоза 70%", "полиэстер 30%", "лен"]},
        {"charcName": "A", "value": 1},
        {"charcName": "B", "value": True},
        {"charcName": "C", "value": "0,5"},
    ]
    array = np.empty(len(items), dtype=object)
    array[:] = [
        {**d, "charcValues": np.array(d["charcValues"], dtype=object)} if "charcValues" in d else d for d in items
    ]
    encoded = encode_characteristics(items, FORM_NUMPY_REPR)
    assert encoded == str(array).encode("utf-8")
    assert b"dtype=object)}\n {" in encoded  # dicts separated by a newline, no comma
    assert b"],\n       dtype=object)" in encoded  # numpy wraps the long values array
    assert b"1} {'charcName': 'B'" in encoded  # short dicts share a line, space-separated
