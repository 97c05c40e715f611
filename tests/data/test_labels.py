"""Label readers: RSNA boxes, NIH multi-label, DICOM header tables; every validation rule names line, field, value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdet.data.labels import (
    NIH_FINDINGS,
    detect_format,
    read_labels,
    read_nih_labels,
    read_rsna_headers,
    read_rsna_labels,
)
from cxrdet.errors import TableError

RSNA_HEADER = "patientId,x,y,width,height,Target\n"
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(TableError) as info:
        read_rsna_labels(path, **kwargs)  # type: ignore[arg-type]
    assert str(path) in str(info.value)
    return info.value.problems


# ---- RSNA ----


def test_rsna_xywh_becomes_xyxy_in_original_pixels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        RSNA_HEADER + "neg,,,,,0\n" + "a,10,20,30,40,1\n" + "a,100.5,200,50,60,1\n" + "b,0,0,1024,1024,1\n",
    )
    ann = read_rsna_labels(path)

    assert ann.classes == ("opacity",)
    assert ann.image_ids == ["neg", "a", "b"]
    # (x, y, w, h) = (10, 20, 30, 40) -> (x1, y1, x2, y2) = (10, 20, 40, 60); (100.5, 200, 50, 60) -> (100.5, 200,
    # 150.5, 260); the whole image (0, 0, 1024, 1024) stays inside.
    expected = np.array([[10, 20, 40, 60], [100.5, 200, 150.5, 260], [0, 0, 1024, 1024]], dtype=np.float64)
    np.testing.assert_array_equal(ann.boxes[["x1", "y1", "x2", "y2"]].to_numpy(), expected)
    assert ann.boxes["image_id"].tolist() == ["a", "a", "b"]
    assert ann.boxes["label"].tolist() == [0, 0, 0]
    assert ann.boxes["patient_id"].tolist() == ann.boxes["image_id"].tolist()

    images = ann.images.set_index("image_id")
    assert images["n_boxes"].to_dict() == {"neg": 0, "a": 2, "b": 1}
    assert images["positive"].to_dict() == {"neg": False, "a": True, "b": True}
    assert (images.index == images["patient_id"]).all()
    assert images["width"].tolist() == [1024] * 3 and images["height"].tolist() == [1024] * 3
    np.testing.assert_array_equal(ann.boxes_for("a"), expected[:2])
    assert ann.boxes_for("neg").shape == (0, 4)


def test_rsna_unknown_size_skips_the_bounds_check(tmp_path: Path) -> None:
    path = write(tmp_path, RSNA_HEADER + "a,2000,10,100,100,1\n")
    ann = read_rsna_labels(path, image_size=None)
    np.testing.assert_array_equal(ann.boxes_for("a"), [[2000, 10, 2100, 110]])
    assert "width" not in ann.images.columns
    with pytest.raises(TableError):
        read_rsna_labels(path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a,,5,10,10,1\n", ["line 2", "x=''", "a number"]),
        ("ok,,,,,0\na,5,5,abc,10,1\n", ["line 3", "width='abc'", "a number"]),
        ("a,,5,,,0\n", ["line 2", "y='5'", "an empty cell"]),
        ("a,5,5,0,10,1\n", ["line 2", "width='0'", "> 0"]),
        ("a,5,5,10,-3,1\n", ["line 2", "height='-3'", "> 0"]),
        ("a,-1,5,10,10,1\n", ["line 2", "x='-1'", ">= 0"]),
        ("ok,,,,,0\na,1000,5,30,10,1\n", ["line 3", "x+width=1030", "x='1000'", "width='30'", "<= 1024"]),
        ("a,5,1000,10,25,1\n", ["line 2", "y+height=1025", "<= 1024"]),
        ("a,,,,,2\n", ["line 2", "Target='2'", "0 or 1"]),
        ("a,,,,,yes\n", ["line 2", "Target='yes'", "0 or 1"]),
        (",,,,,0\n", ["line 2", "patientId=''"]),
        ("a,5,5,10,10,1\nb,,,,,0\na,5,5,10,10,1\n", ["line 4", "repeats line 2", "patientId='a'"]),
        ("a,5,5,10,10,1\na,,,,,0\n", ["patientId='a'", "Target=0 on line(s) 3", "Target=1 on line(s) 2"]),
    ],
)
def test_rsna_each_rule_names_line_field_and_value(tmp_path: Path, body: str, expected: list[str]) -> None:
    problems = problems_of(write(tmp_path, RSNA_HEADER + body))
    assert len(problems) == 1, problems
    for part in expected:
        assert part in problems[0], (part, problems[0])


def test_rsna_missing_columns_are_named(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "patientId,x,y,w,height\na,1,2,3,4\n"))
    assert len(problems) == 1
    assert "line 1" in problems[0] and "'width'" in problems[0] and "'Target'" in problems[0]


def test_rsna_reports_all_problems_at_once_with_true_line_numbers(tmp_path: Path) -> None:
    # The blank line 3 is skipped but still counted, so later rows keep their file line numbers.
    text = RSNA_HEADER + "a,5,5,10,10,1\n\nb,,,,,7\nc,5,5,0,10,1\nd,1,1,1,1,0\n"
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 6
    assert problems[0].startswith("line 4: Target='7'")
    assert problems[1].startswith("line 5: width='0'")
    for problem, field in zip(problems[2:], ("x", "y", "width", "height"), strict=True):
        assert problem.startswith(f"line 6: {field}='1'")


def test_rsna_headers_without_rows_give_no_images(tmp_path: Path) -> None:
    ann = read_rsna_labels(write(tmp_path, RSNA_HEADER))
    assert ann.image_ids == [] and len(ann.boxes) == 0


@pytest.mark.real_data
def test_real_rsna_table_parses(real_rsna_labels: Path) -> None:
    ann = read_labels(real_rsna_labels)
    assert len(ann.images) == 26_684
    assert len(ann.boxes) == 9_555
    assert int(ann.images["positive"].sum()) == 6_012
    assert int(ann.images["n_boxes"].sum()) == 9_555
    assert ann.images["image_id"].is_unique
    assert (ann.boxes[["x2", "y2"]].to_numpy() <= 1024).all()
    # The file's rows for this image are 264,152,213,379 and 562,152,256,453 (x, y, w, h).
    np.testing.assert_array_equal(
        ann.boxes_for("00436515-870c-4b36-a041-de91049b9ab4"), [[264, 152, 477, 531], [562, 152, 818, 605]]
    )


# ---- format registry ----


def test_detect_format_from_header(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, RSNA_HEADER, "r.csv")) == "rsna"
    assert detect_format(write(tmp_path, NIH_HEADER, "n.csv")) == "nih"
    with pytest.raises(TableError) as info:
        detect_format(write(tmp_path, "image,label\n", "x.csv"))
    assert "line 1" in str(info.value) and "rsna" in str(info.value) and "nih" in str(info.value)


def test_read_labels_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="'vinbig' is unknown"):
        read_labels(write(tmp_path, RSNA_HEADER), fmt="vinbig")


# ---- NIH ----


def test_nih_multilabel_images_grouped_by_patient(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        NIH_HEADER
        + "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        + "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n"
        + "00000002_000.png,No Finding,0,2,80,F,AP,2500,2048,0.171,0.171\n",
        "nih.csv",
    )
    ann = read_labels(path)
    assert ann.classes == NIH_FINDINGS
    assert len(ann.boxes) == 0
    images = ann.images.set_index("image_id")
    assert images.index.tolist() == ["00000001_000", "00000001_001", "00000002_000"]
    assert images["patient_id"].tolist() == ["1", "1", "2"]
    assert images["positive"].tolist() == [True, True, False]
    assert images["n_boxes"].tolist() == [0, 0, 0]
    assert images["Cardiomegaly"].tolist() == [1, 1, 0]
    assert images["Emphysema"].tolist() == [0, 1, 0]
    assert int(images[list(NIH_FINDINGS)].to_numpy().sum()) == 3
    assert images["age"].tolist() == [57, 58, 80]
    assert images["sex"].tolist() == ["M", "M", "F"]
    assert images["view"].tolist() == ["PA", "PA", "AP"]
    assert images["width"].tolist() == [2682, 2894, 2500]
    assert images["height"].tolist() == [2749, 2729, 2048]


def test_nih_problems_name_line_field_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        NIH_HEADER
        + "a.png,Cardiomegaly,0,1,57,M,PA,1,1,0.1,0.1\n"
        + "b.png,Flu,0,1,57,M,PA,1,1,0.1,0.1\n"
        + "c.png,No Finding|Mass,0,2,57,M,PA,1,1,0.1,0.1\n"
        + "d.png,,0,2,57,M,PA,1,1,0.1,0.1\n"
        + "e.png,Mass,0,3,old,M,PA,1,1,0.1,0.1\n"
        + "a.png,Mass,0,1,57,M,PA,1,1,0.1,0.1\n",
        "nih.csv",
    )
    with pytest.raises(TableError) as info:
        read_nih_labels(path)
    joined = "\n".join(info.value.problems)
    assert len(info.value.problems) == 5
    assert "line 3: Finding Labels='Flu'" in joined
    assert "line 4: Finding Labels='No Finding|Mass'" in joined
    assert "line 5: Finding Labels=''" in joined
    assert "line 6: Patient Age='old'" in joined
    assert "line 7: image repeats line 2 (Image Index='a.png')" in joined


@pytest.mark.real_data
def test_real_nih_table_parses_with_patient_grouping(real_nih_labels: Path) -> None:
    ann = read_labels(real_nih_labels)
    images = ann.images
    assert len(images) == 112_120
    assert images["patient_id"].nunique() == 30_805
    assert len(ann.boxes) == 0
    assert int((~images["positive"]).sum()) == 60_361  # 'No Finding' images
    assert int(images["Hernia"].sum()) == 227
    assert int(images["Pneumonia"].sum()) == 1_431
    per_patient = images.groupby("patient_id")["image_id"].apply(list)
    assert per_patient["1"] == ["00000001_000", "00000001_001", "00000001_002"]
    assert set(images["view"]) == {"AP", "PA"}


# ---- DICOM header tables ----


def test_headers_in_dicom_form_are_canonicalised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ",Filename,Modality,PatientAge,PatientID,PatientSex,PixelSpacing,ViewPosition\n"
        "0,a.dcm,CR,43,a,F,0.168,AP\n"
        "1,b.dcm,CR,043Y,b,m,0.14\\0.14,pa\n"
        "2,c.dcm,CR,006M,c,,0.1,\n"
        "3,d.dcm,CR,,d,O,,AP\n",
        "headers.csv",
    )
    meta = read_rsna_headers(path)
    assert meta["image_id"].tolist() == ["a", "b", "c", "d"]
    assert meta["age"].tolist()[:3] == [43, 43, 0] and pd.isna(meta["age"].iloc[3])
    assert meta["sex"].tolist()[:2] == ["F", "M"] and pd.isna(meta["sex"].iloc[2]) and meta["sex"].iloc[3] == "O"
    assert meta["view"].tolist()[:2] == ["AP", "PA"] and pd.isna(meta["view"].iloc[2])
    assert meta["pixel_spacing"].tolist()[:3] == [0.168, 0.14, 0.1]


def test_headers_from_meta_parquet(tmp_path: Path) -> None:
    path = tmp_path / "meta.parquet"
    pd.DataFrame({"image_id": ["x", "y"], "sex": ["F", "M"], "age": [30, 71], "view": ["PA", "AP"]}).to_parquet(path)
    meta = read_rsna_headers(path)
    assert meta[["image_id", "sex", "view"]].to_dict("list") == {
        "image_id": ["x", "y"], "sex": ["F", "M"], "view": ["PA", "AP"]
    }  # fmt: skip
    assert meta["age"].tolist() == [30, 71]


def test_header_problems_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "image_id,sex,age,view\na,X,30,AP\nb,F,thirty,PA\na,F,30,AP\n", "meta.csv")
    with pytest.raises(TableError) as info:
        read_rsna_headers(path)
    joined = "\n".join(info.value.problems)
    assert len(info.value.problems) == 3
    assert "line 2: sex='X'" in joined
    assert "line 3: age='thirty'" in joined
    assert "line 4: image_id repeats line 2" in joined


def test_headers_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="'view'"):
        read_rsna_headers(write(tmp_path, "PatientID,PatientSex,PatientAge\na,F,3\n", "h.csv"))


def test_with_metadata_joins_and_requires_every_image(tmp_path: Path) -> None:
    ann = read_rsna_labels(write(tmp_path, RSNA_HEADER + "a,,,,,0\nb,1,1,2,2,1\n"))
    meta = pd.DataFrame({"image_id": ["b", "a", "test"], "sex": ["M", "F", "F"], "age": [1, 2, 3], "view": "AP"})
    joined = ann.with_metadata(meta).images
    assert joined["image_id"].tolist() == ["a", "b"]
    assert joined["sex"].tolist() == ["F", "M"] and joined["age"].tolist() == [2, 1]
    with pytest.raises(TableError, match="1 labelled image id"):
        ann.with_metadata(meta[meta["image_id"] != "a"], source="h.csv")


@pytest.mark.real_data
def test_real_headers_join_onto_real_labels(real_rsna_labels: Path, real_rsna_headers: Path) -> None:
    meta = read_rsna_headers(real_rsna_headers)
    assert len(meta) == 26_684
    assert set(meta["sex"]) == {"F", "M"} and set(meta["view"]) == {"AP", "PA"}
    images = read_rsna_labels(real_rsna_labels).with_metadata(meta).images
    assert images[["sex", "age", "view"]].notna().all().all()
