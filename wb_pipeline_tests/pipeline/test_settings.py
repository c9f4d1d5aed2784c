"""One place for settings: only `wb_pipeline/settings.py` reads the environment, every variable it reads
is in the README's table, and every path under the storage dir comes from `core.data.storage.StorageLayout`."""

import ast
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

import wb_pipeline
from wb_pipeline import settings
from wb_pipeline.core.data.storage import StorageLayout
from wb_pipeline.definitions import build_definitions
from wb_pipeline.defs.resources import WBStorage, WBStorageIOManager

PACKAGE = Path(wb_pipeline.__file__).parent
README = PACKAGE.parent / "README.md"


def environment_reads(source: str) -> list[int]:
    """Line numbers where `source` reads the environment: `os.environ` in any use but as the target of
    an assignment (setting a variable for a library is not reading a setting), `os.getenv`, or
    `environ` / `getenv` imported from `os`."""
    tree = ast.parse(source)
    written = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del))
    }
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv", "environb", "getenvb")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and id(node) not in written
        ):
            lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ("environ", "getenv", "environb", "getenvb") for alias in node.names)
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_detector_sees_reads_and_lets_writes_pass():
    assert environment_reads('import os\nx = os.environ.get("A")\n') == [2]
    assert environment_reads('import os\nx = os.getenv("A")\n') == [2]
    assert environment_reads('import os\nx = os.environ["A"]\n') == [2]
    assert environment_reads("import os\nx = dict(os.environ)\n") == [2]
    assert environment_reads("from os import environ\n") == [1]
    assert environment_reads('import os\nos.environ["HF_HUB_OFFLINE"] = "1"\n') == []


def test_only_settings_reads_the_environment():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "settings.py":
            continue
        lines = environment_reads(path.read_text(encoding="utf-8"))
        if lines:
            offenders[str(path.relative_to(PACKAGE.parent))] = lines
    assert offenders == {}, f"read the environment only in wb_pipeline/settings.py: {offenders}"


def test_readme_lists_every_variable():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Configuration") :]
    table = table[: table.index("\n## ", 1)]
    assert len(settings.VARIABLES) == 12
    missing = [name for name in settings.VARIABLES if f"`{name}`" not in table]
    assert missing == []


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.STORAGE_DIR_ENV, str(tmp_path / "out"))
    monkeypatch.delenv(settings.MODELS_DIR_ENV, raising=False)
    monkeypatch.setenv(settings.REEMBED_CRON_ENV, "15 4 * * 1")
    assert settings.layout().encoder_models == str(tmp_path / "out" / "models")
    monkeypatch.setenv(settings.MODELS_DIR_ENV, str(tmp_path / "models"))
    assert settings.layout().encoder_models == str(tmp_path / "models")
    assert settings.layout(str(tmp_path / "other")).base_dir == str(tmp_path / "other")
    assert settings.effective()["reembed_cron"] == "15 4 * * 1"
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("reembed_new_products_schedule")
    assert schedule.cron_schedule == "15 4 * * 1"
    assert defs.resources["text_encoder"].cache_dir == str(tmp_path / "models")
    assert defs.resources["io_manager"].base_dir == str(tmp_path / "out")
    monkeypatch.setenv(settings.SHARDS_ENV, "many")
    with pytest.raises(ValueError, match="WB_PIPELINE_SHARDS='many'"):
        settings.n_shards()
    monkeypatch.delenv(settings.SHARDS_ENV)
    # unset: the count follows the catalogue's size
    assert settings.n_shards() == 0 and settings.products_per_shard() == settings.DEFAULT_PRODUCTS_PER_SHARD
    monkeypatch.setenv(settings.PRODUCTS_PER_SHARD_ENV, "500")
    assert build_definitions().resources["sharding"].count_for(1001) == 4
    monkeypatch.setenv(settings.PRODUCTS_PER_SHARD_ENV, "0")
    with pytest.raises(ValueError, match="WB_PIPELINE_PRODUCTS_PER_SHARD=0"):
        settings.products_per_shard()


def test_the_io_manager_writes_where_the_layout_says(tmp_path, instance):
    @dg.asset
    def tiny() -> pd.DataFrame:
        return pd.DataFrame({"nm": ["1"]})

    base = str(tmp_path / "storage")
    assert dg.materialize(
        [tiny], resources={"io_manager": WBStorageIOManager(base_dir=base)}, instance=instance
    ).success
    layout = StorageLayout(base)
    assert layout.asset_file("tiny").exists()
    assert WBStorage(base_dir=base).layout == layout
    assert str(layout.shard_cache("text_embeddings", 4, "00")) == str(
        Path(base) / "cache" / "text_embeddings" / "4-shards" / "00"
    )
    assert str(layout.classification_models) == str(Path(base) / "models" / "classification")
