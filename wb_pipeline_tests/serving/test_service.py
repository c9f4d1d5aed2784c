"""The HTTP service as a real process (`python -m wb_pipeline.serve` on a free loopback port) over a
materialized sample run with the real default encoders, talked to over HTTP."""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wb_pipeline.core.data import schema
from wb_pipeline_tests.data.test_images import png_declaring
from wb_pipeline_tests.serving.conftest import REPO_ROOT, Service, multipart

pytestmark = pytest.mark.slow


def _load(run, key):
    return run["defs"].load_asset_value(key, instance=run["instance"])


def _photo(run, nm) -> bytes:
    with zipfile.ZipFile(Path(run["raw"]) / schema.IMAGES_ZIP) as archive:
        return archive.read(f"{nm}.jpg")


def _card(raw_row, clean_row) -> dict:
    """What a seller uploads for this product: its own title and description, brand and price."""
    fields = {"nm": str(raw_row["nm"])}
    for name in ("title", "description"):
        if isinstance(raw_row[name], str):
            fields[name] = raw_row[name]
    if isinstance(clean_row["brand"], str):
        fields["brand"] = clean_row["brand"]
    if pd.notna(clean_row["price"]):
        fields["price"] = repr(float(clean_row["price"]))
    return fields


def test_predict_answers_exactly_what_test_predictions_holds(served_run, service):
    """Same inputs, same outputs: every clean test product of the sample, sent as a card with its photo,
    gets the labels, classes, probabilities (bit for bit), models and statuses of `test_predictions`."""
    clean = _load(served_run, "clean_products").astype({"nm": str}).set_index("nm", drop=False)
    raw = _load(served_run, "raw_products_test").astype({"nm": str}).drop_duplicates("nm").set_index("nm", drop=False)
    expected = _load(served_run, "test_predictions").astype({"nm": str})
    test_nm = clean.loc[clean["split"] == "test", "nm"].tolist()
    assert len(test_nm) >= 10
    for nm in test_nm:
        status, answer = service.post_form("/predict", _card(raw.loc[nm], clean.loc[nm]), _photo(served_run, nm))
        assert status == 200, answer
        assert answer["labels"], (nm, answer)
        got = pd.DataFrame(answer["labels"]).sort_values("label").reset_index(drop=True)
        want = expected[expected["nm"] == nm].sort_values("label").reset_index(drop=True)
        assert got["label"].tolist() == want["label"].tolist()
        for column in ("predicted", "model", "status"):
            assert got[column].astype(str).tolist() == want[column].astype(str).tolist(), (nm, column)
        assert got["probability"].to_numpy(np.float64).tolist() == want["probability"].to_numpy(np.float64).tolist(), nm


def test_a_new_card_gets_every_label_and_a_card_without_photo_falls_back(served_run, service):
    labels = set(_load(served_run, "classification_report")["label"])
    photo = _photo(served_run, _load(served_run, "clean_products")["nm"].iloc[0])
    status, answer = service.post_form("/predict", {"title": "Платье женское летнее", "description": "Хлопок"}, photo)
    assert status == 200 and answer["nm"] == "card"
    assert {row["label"] for row in answer["labels"]} == labels
    assert all(row["status"] == "predicted" and 0 < row["probability"] <= 1 for row in answer["labels"])
    body = json.dumps({"title": "Кроссовки мужские беговые", "brand": "Nike", "price": 4990}).encode()
    status, answer = service.request("POST", "/predict", body, {"Content-Type": "application/json"})
    assert status == 200 and {row["label"] for row in answer["labels"]} == labels
    statuses = {row["status"] for row in answer["labels"]}
    assert statuses <= {"predicted", "fallback"}  # models reading the photo fall back to text ones
    assert all(row["predicted"] is not None for row in answer["labels"])


def test_similar_finds_the_product_itself_and_its_duplicate_group(served_run, service):
    clean = _load(served_run, "clean_products").astype({"nm": str})
    groups = _load(served_run, "duplicate_groups").astype({"nm": str})
    grouped = groups[groups["group_size"] > 1]
    assert len(grouped)  # the sample has same-photo / same-title duplicates
    nm = grouped["nm"].iloc[0]
    row = clean.set_index("nm").loc[nm]
    fields = {"title": row["title"], "description": row["description"]}
    status, answer = service.post_form("/similar?top=5", fields, _photo(served_run, nm))
    assert status == 200, answer
    similar = answer["similar"]
    assert len(similar) == 5 and [r["score"] for r in similar] == sorted((r["score"] for r in similar), reverse=True)
    top = [r for r in similar if r["score"] >= similar[0]["score"] - 1e-5]
    assert nm in {r["nm"] for r in top} and similar[0]["score"] > 0.999  # its own vectors: its own product
    duplicates = {r["nm"]: r for r in answer["duplicates"]}
    assert duplicates[nm]["matched"] and duplicates[nm]["text_sim"] > 0.999 and duplicates[nm]["image_sim"] > 0.999
    members = set(groups.loc[groups["group_id"] == groups.set_index("nm").loc[nm, "group_id"], "nm"])
    assert members <= set(duplicates)
    # a card naming the product is an edit of it: the product is not its own neighbour or duplicate
    status, answer = service.post_form("/similar?top=5", {**fields, "nm": nm}, _photo(served_run, nm))
    assert status == 200 and nm not in {r["nm"] for r in answer["similar"]}
    assert nm not in {r["nm"] for r in answer["duplicates"]}


def test_search_answers_what_the_search_command_prints(served_run, service):
    query = "платье женское"
    status, answer = service.get("/search?" + urllib.parse.urlencode({"q": query, "top": 5}))
    assert status == 200 and len(answer["results"]) == 5
    env = {
        **os.environ,
        "WB_PIPELINE_STORAGE_DIR": str(served_run["storage"]),
        "WB_PIPELINE_MODELS_DIR": str(served_run["models"]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "wb_pipeline.search", query, "--top", "5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    printed = [line.split("\t") for line in done.stdout.strip().split("\n")]
    assert [r["nm"] for r in answer["results"]] == [nm for nm, _, _ in printed]
    assert [f"{r['score']:.4f}" for r in answer["results"]] == [score for _, score, _ in printed]
    # a photo of a catalogue product finds that product first (ties: identical photos)
    nm = _load(served_run, "clean_products")["nm"].astype(str).iloc[3]
    status, answer = service.post_form("/search?top=3", {}, _photo(served_run, nm))
    assert status == 200 and len(answer["results"]) == 3
    best = answer["results"][0]["score"]
    assert nm in {r["nm"] for r in answer["results"] if r["score"] >= best - 1e-5}


def test_health_names_the_materialization_it_serves(served_run, service):
    status, health = service.get("/health")
    assert status == 200 and health["status"] == "ok"
    serving = health["serving"]
    index_folder = _load(served_run, "product_index")["index_folder"].iloc[0]
    assert serving["index"]["build_id"] == Path(index_folder).name
    artifact = _load(served_run, "contrastive_model")["artifact"].dropna().iloc[0]
    assert serving["joint_model"]["fingerprint"] == Path(artifact).name
    assert serving["runs"]["test_predictions"]["run_id"] == served_run["result"].run_id
    assert serving["encoders"]["text"] == serving["encoders"]["index_text"]
    assert set(serving["best_models"]) == set(_load(served_run, "classification_report")["label"])


def _jpeg(size=(200, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 30)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_bad_input_gets_a_clear_4xx_and_nothing_is_written(served_run, service):
    storage_before = _files(served_run["storage"])
    tmp_before = _files(service.tmp)  # onnxruntime leaves a `.ses` file there at import; uploads must add nothing
    json_type = {"Content-Type": "application/json"}
    rng = np.random.default_rng(0)
    cases = [
        # (method, path, body, headers, status, words in the detail)
        ("POST", "/predict", *multipart({"title": "Платье"}, rng.bytes(2_500_000)), 413, "upload limit"),
        ("POST", "/predict", *multipart({"title": "Платье"}, png_declaring(100_000, 100_000)), 413, "too_many_pixels"),
        ("POST", "/predict", *multipart({"title": "Платье"}, b"not an image at all"), 422, "corrupt"),
        ("POST", "/predict", *multipart({"title": "Платье"}, _jpeg()[:400]), 422, "truncated"),
        ("POST", "/predict", *multipart({}, b""), 422, "empty"),
        ("POST", "/predict", json.dumps({}).encode(), json_type, 422, "empty card"),
        ("POST", "/predict", json.dumps({"title": "x" * 1_000_000}).encode(), json_type, 413, "character limit"),
        (
            "POST",
            "/predict",
            json.dumps({"title": "Платье", "characteristics": "__import__('os')"}).encode(),
            json_type,
            422,
            "cannot be parsed",
        ),
        (
            "POST",
            "/predict",
            json.dumps({"title": "Платье", "characteristics": [{"a": 1}]}).encode(),
            json_type,
            422,
            "must be text",
        ),
        ("POST", "/predict", json.dumps({"title": "Платье", "price": "дёшево"}).encode(), json_type, 422, "number"),
        ("POST", "/predict", json.dumps({"title": "Платье", "size": "XL"}).encode(), json_type, 422, "unknown"),
        ("POST", "/predict", b"[1, 2]", json_type, 400, "object"),
        ("POST", "/predict", b"{not json", json_type, 400, "not valid JSON"),
        ("POST", "/predict", "title=Платье".encode(), {"Content-Type": "text/plain"}, 415, "not accepted"),
        ("POST", "/predict", b"\x89PNG", {"Content-Type": "image/png"}, 415, "not accepted"),
        ("POST", "/similar", *multipart({"title": "Платье"}, b"GIF89a...."), 422, "cannot be used"),
        ("POST", "/similar?top=0", *multipart({"title": "Платье"}), 422, "top must be"),
        ("POST", "/similar?top=abc", *multipart({"title": "Платье"}), 422, "whole number"),
        ("GET", "/search?q=", None, {}, 422, "empty text query"),
        ("GET", "/search?" + urllib.parse.urlencode({"q": "a" * 10_001}), None, {}, 422, "10000-character limit"),
        ("POST", "/search", *multipart({"title": "Платье"}), 422, "one 'photo' file"),
        ("POST", "/search", *multipart({}, png_declaring(9_000, 9_000)), 413, "too_many_pixels"),
    ]
    for method, path, body, headers, want_status, words in cases:
        if isinstance(headers, str):  # multipart() gives (body, content type)
            headers = {"Content-Type": headers}
        status, answer = service.request(method, path, body, headers)
        assert status == want_status, (path, words, status, answer)
        assert isinstance(answer, dict) and words in str(answer.get("detail")), (path, words, answer)
    assert service.get("/health")[0] == 200  # still serving, nothing crashed
    assert _files(service.tmp) == tmp_before  # no upload spooled to disk
    assert _files(served_run["storage"]) == storage_before
    assert "Traceback" not in service.log_text()


def test_nothing_materialized_is_a_503_then_a_new_materialization_is_served_without_restart(served_run, tmp_path):
    storage = tmp_path / "storage"
    late = Service(storage, served_run["models"], tmp_path / "tmp")
    try:
        late.wait_up()
        status, answer = late.get("/health")
        assert status == 503 and "nothing complete is materialized" in answer["detail"]
        status, answer = late.post_form("/predict", {"title": "Платье женское"})
        assert status == 503 and "nothing to serve" in answer["detail"]
        shutil.copytree(served_run["storage"], storage)  # a run finishing its writes, file by file
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and late.get("/health")[0] != 200:
            time.sleep(0.5)
        status, health = late.get("/health")
        assert status == 200, health
        assert health["serving"]["storage"] == str(storage)
        status, answer = late.post_form("/predict", {"title": "Платье женское"})
        assert status == 200 and len(answer["labels"]) == len(health["serving"]["labels"])
        assert "runs" in health["serving"] and "unavailable" in health["serving"]["runs"]  # no instance here
        # a newer materialization (every served file rewritten) is swapped in; the old one answers meanwhile
        loaded_at = health["loaded_at"]
        now = time.time()
        for path in sorted((storage / "assets").glob("*.parquet")):
            os.utime(path, (now, now))
        statuses = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and late.get("/health")[1]["loaded_at"] == loaded_at:
            statuses.append(late.post_form("/predict", {"title": "Платье женское"})[0])
        assert late.get("/health")[1]["loaded_at"] > loaded_at
        assert statuses and set(statuses) == {200}
    finally:
        late.stop()
