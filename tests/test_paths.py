"""Data-set layouts: the NIH layout's files (`cxrdet.competitions.data_layout` tells layouts apart)."""

from __future__ import annotations

from pathlib import Path


from cxrdet import paths


def test_nih_layout_paths(tmp_path: Path) -> None:
    layout = paths.NihLayout(tmp_path)
    assert layout.labels_csv == tmp_path / "Data_Entry_2017_v2020.csv"  # the name a new data set gets
    assert layout.images_dir == tmp_path / "images"
    assert layout.train_val_list == tmp_path / "train_val_list.txt"
    assert layout.test_list == tmp_path / "test_list.txt"
    assert layout.image_path("00000001_000") == tmp_path / "images" / "00000001_000.png"
    assert (layout.synth_truth.name, layout.synth_boxes.name) == ("synth_truth.csv", "synth_boxes.csv")


def test_nih_layout_finds_the_2017_table_and_the_download_folders(tmp_path: Path) -> None:
    (tmp_path / "Data_Entry_2017.csv").write_text("x\n")
    layout = paths.NihLayout(tmp_path)
    assert layout.labels_csv == tmp_path / "Data_Entry_2017.csv"
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("x\n")
    assert layout.labels_csv == tmp_path / "Data_Entry_2017_v2020.csv"  # the newer release wins
    for rel in ("images/00000002_000.png", "images_001/images/00000001_000.png", "images_002/images/a.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in layout.image_files()] == [
        "images/00000002_000.png", "images_001/images/00000001_000.png"]  # fmt: skip
