"""The paper's numbers ship as package data (dkdm/data/paper_tables.yaml) and load as tables."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dkdm.paper import PAPER_TABLES_PATH, PaperTableError, load_paper_tables, paper_entry, paper_ids, paper_table


def test_package_copy_parses_and_matches_the_shared_source(shared_dir: Path):
    source = yaml.safe_load((shared_dir / "paper" / "tables.yaml").read_text(encoding="utf-8"))
    shipped = load_paper_tables()
    source_ids = [e["id"] for e in [*source["tables"], *source["figures"]]]
    assert paper_ids(shipped) == source_ids  # every table and figure id, in the same order
    assert shipped == source, (
        "platform/dkdm/data/paper_tables.yaml drifted from the paper's tables (tests/data/paper/tables.yaml)")


def test_the_data_file_is_package_data():
    assert PAPER_TABLES_PATH.parent.name == "data"
    assert PAPER_TABLES_PATH.parent.parent.name == "dkdm"  # pyproject ships dkdm/data/*.yaml
    assert PAPER_TABLES_PATH.suffix == ".yaml"


def test_table2_has_every_method_dataset_cell_with_printed_values():
    table = paper_table("table2_main_pixel")
    assert len(table) == 24  # 8 method rows (4 data-limited fractions) x 3 datasets
    assert set(table["dataset"]) == {"CIFAR10-32", "CelebA-64", "ImageNet-32"}
    cell = table.set_index(["method", "dataset"])
    assert cell.loc[("DKDM (Dynamic Iterative Distillation)", "CIFAR10-32"), "FID"] == 9.56
    assert cell.loc[("Data-Free Training", "CIFAR10-32"), "FID"] == 12.06
    assert cell.loc[("Teacher", "ImageNet-32"), "IS"] == 13.63


def test_tables_the_dashboard_compares_against():
    assert paper_table("table11_fid_prime").set_index("method")["FIDp"].to_dict() == {
        "Teacher": 2.09, "Data-Free Training": 4.13, "DKDM (Dynamic Iterative Distillation)": 2.60}
    speed = paper_table("table9_training_speed")
    assert speed["time_per_100_iters"].tolist() == [18.00, 19.17, 68.77, 55.52]
    cross = paper_table("table5_cross_architecture")
    assert cross[["teacher", "student"]].apply(tuple, axis=1).tolist() == [
        ("CNN", "CNN"), ("ViT", "CNN"), ("CNN", "ViT"), ("ViT", "ViT")]
    assert len(paper_table("table3_main_latent")) == 16


def test_figures_give_their_inferred_points_or_nothing():
    points = paper_table("fig6_various_architectures")
    assert points[["params", "method", "FID"]].values.tolist() == [
        ["57M", "DKDM", 6.85], ["57M", "Data-Free Training", 9.64], ["14M", "DKDM", 9.56],
        ["14M", "Data-Free Training", 12.06]]
    assert paper_table("fig4b_rho_sweep").empty
    assert paper_entry("fig4b_rho_sweep")["rho_values_from_code_readme"][-1] == 0.4


def test_unknown_id_names_itself_and_the_known_ones():
    with pytest.raises(PaperTableError, match=r"unknown paper table id 'table99'; known: table1_model_data_scale"):
        paper_table("table99")


def test_a_broken_file_is_one_clear_error(tmp_path: Path):
    bad = tmp_path / "tables.yaml"
    bad.write_text("meta: {}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a mapping with a 'tables' list"):
        load_paper_tables(bad)


def test_callers_get_their_own_copy():
    first = load_paper_tables()
    first["tables"].clear()
    assert load_paper_tables()["tables"], "a caller's edit must not leak into the next load"
