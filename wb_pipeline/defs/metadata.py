"""Small helpers that turn pandas objects into Dagster metadata (tables, previews, counts)."""

from __future__ import annotations

import dagster as dg
import pandas as pd


def table(frame: pd.DataFrame, max_rows: int = 50) -> dg.TableMetadataValue:
    """A DataFrame as a UI table (first `max_rows` rows; long strings cut to 120 characters)."""
    shown = frame.head(max_rows)
    columns = [dg.TableColumn(str(name), _column_type(shown[name])) for name in shown.columns]
    records = [dg.TableRecord({str(k): _cell(v) for k, v in row.items()}) for row in shown.to_dict(orient="records")]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def value_counts(values: pd.Series, name: str = "value") -> dg.TableMetadataValue:
    """Counts of each value (missing shown as '<missing>'), largest first."""
    counts = values.astype(object).where(values.notna(), "<missing>").value_counts().rename_axis(name)
    return table(counts.reset_index(name="count"), max_rows=1000)


def preview(frame: pd.DataFrame, rows: int = 5) -> dg.MarkdownMetadataValue:
    shown = frame.head(rows).map(_cell)
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_empty_")


def _column_type(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "bool"
    if pd.api.types.is_integer_dtype(values):
        return "int"
    if pd.api.types.is_float_dtype(values):
        return "float"
    return "string"


def _cell(value):
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "item"):
        return value.item()
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    return text if len(text) <= 120 else text[:117] + "..."
