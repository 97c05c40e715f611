"""Atomic writes: a failed write leaves the previous file intact and no temporary files behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cxrdet import io


def test_write_csv_creates_parent_and_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "t.csv"
    io.write_csv(out, pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert out.read_text() == "a,b\n1,x\n2,y\n"


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "t.txt"
    io.write_text(out, "good\n")
    with pytest.raises(RuntimeError):
        with io.atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert out.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_sha256_of_known_bytes(tmp_path: Path) -> None:
    p = io.write_bytes(tmp_path / "b", b"abc")
    assert io.file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
