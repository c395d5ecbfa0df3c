"""Reading anyone's table of results (CSV or parquet) for `harness-fit`, and the one error a bad table raises."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


class TableError(ValueError):
    """A table the fits cannot read: the message names the column and row."""


def load_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as error:  # pandas raises many kinds for a file that is not a table
        raise TableError(f"{path}: not a readable {path.suffix or 'CSV'} table ({type(error).__name__}: {error})") from None
    if path.suffix not in (".csv", ".parquet"):
        raise TableError(f"{path}: expected a .csv or .parquet file")
    return raw


def missing_column(path: Path, column: str, meaning: str, raw: pd.DataFrame) -> TableError:
    return TableError(f"{path}: no column {column!r} for {meaning} (columns: {', '.join(map(str, raw.columns))})")
