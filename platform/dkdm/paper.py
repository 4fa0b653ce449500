"""The paper's published numbers (tables and figure notes of DKDM, CVPR 2025), shipped as package data.

The YAML is a verbatim copy of the paper's tables (tests/data/paper/tables.yaml holds the source); values are
as printed in the paper, never rounded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

PAPER_TABLES_PATH = Path(__file__).resolve().parent / "data" / "paper_tables.yaml"


class PaperTableError(KeyError):
    """An id that names no table or figure of the paper."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def load_paper_tables(path: Path | None = None) -> dict[str, Any]:
    """The parsed YAML: `meta`, `tables` (list of {id, source, caption, rows, ...}), `figures`, `other_facts`.

    Parsed afresh on each call (it is small) so callers can modify what they get.
    """
    source = path or PAPER_TABLES_PATH
    with open(source, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise ValueError(f"{source}: expected a mapping with a 'tables' list")
    return data


def paper_entry(entry_id: str, tables: dict[str, Any] | None = None) -> dict[str, Any]:
    """One table or figure record by id (e.g. `table2_main_pixel`, `fig4b_rho_sweep`)."""
    data = tables if tables is not None else load_paper_tables()
    entries = [*data.get("tables", []), *data.get("figures", [])]
    for entry in entries:
        if entry.get("id") == entry_id:
            return entry
    known = ", ".join(str(e.get("id")) for e in entries)
    raise PaperTableError(f"unknown paper table id {entry_id!r}; known: {known}")


def paper_table(entry_id: str, tables: dict[str, Any] | None = None) -> pd.DataFrame:
    """The rows of a table as a DataFrame, one column per field, in the YAML's order.

    Figures have no printed values; for them this returns the points the YAML infers from other tables
    (`inferred_points_not_read_from_plot`), or an empty frame.
    """
    entry = paper_entry(entry_id, tables)
    rows = entry.get("rows", entry.get("inferred_points_not_read_from_plot", []))
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


def paper_ids(tables: dict[str, Any] | None = None) -> list[str]:
    """Ids of every table and figure, tables first."""
    data = tables if tables is not None else load_paper_tables()
    return [str(e["id"]) for e in [*data.get("tables", []), *data.get("figures", [])]]
