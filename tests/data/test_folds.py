"""Folds: grouped by patient, stratified, deterministic, balanced on the real tables; fold-table validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer.main
from click.testing import CliRunner

from cxrdet import paths
from cxrdet.cli import app
from cxrdet.data.folds import (
    composite_strata,
    fold_summary,
    images_for_folds,
    make_folds,
    rarest_finding,
    read_folds,
    stratum_keys,
    write_folds,
)
from cxrdet.data.labels import NIH_FINDINGS
from cxrdet.errors import ConfigError, TableError


def synthetic_images(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    """A small images table: 1-3 images per patient, patient-level sex, image-level label, boxes, view, age."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        sex = "M" if rng.random() < 0.5 else "F"
        age = int(rng.integers(5, 95))
        for i in range(int(rng.integers(1, 4))):
            n_boxes = int(rng.choice([0, 0, 0, 1, 2, 3, 4]))
            rows.append(
                {"image_id": f"p{p:03d}_{i}", "patient_id": f"p{p:03d}", "n_boxes": n_boxes, "positive": n_boxes > 0,
                 "view": "AP" if rng.random() < 0.4 else "PA", "sex": sex, "age": age + i}
            )  # fmt: skip
    return pd.DataFrame(rows)


def assert_grouped(folds: pd.DataFrame) -> None:
    assert (folds.groupby("patient_id")["fold"].nunique() == 1).all()


# ---- strata ----


def test_stratum_keys_bucket_boxes_and_ages() -> None:
    images = pd.DataFrame(
        {"positive": [True, False, True], "n_boxes": [5, 0, 2], "age": [95.0, 7.0, np.nan], "sex": ["M", "F", None]}
    )
    keys = stratum_keys(images, ["positive", "n_boxes", "age", "sex"])
    assert keys.to_dict("list") == {
        "positive": ["pos", "neg", "pos"],
        "n_boxes": ["3+", "0", "2"],
        "age": ["9", "0", "?"],
        "sex": ["M", "F", "?"],
    }


def test_rare_strata_are_coarsened_until_they_have_k_members() -> None:
    images = pd.DataFrame({"positive": [True, True, True, False, False, False], "sex": ["M", "M", "F", "M", "F", "F"]})
    # k=2: pos|F and neg|M have one member each; their parents 'pos' and 'neg' (made only of the leftovers) still
    # have one each, so both pool at '*', which then holds 2 >= k images.
    strata = composite_strata(images, ["positive", "sex"], k=2)
    assert strata.tolist() == ["pos|M", "pos|M", "*", "*", "neg|F", "neg|F"]


def test_last_leftovers_join_the_largest_stratum() -> None:
    images = pd.DataFrame({"positive": [True] * 4 + [False] * 5 + [True], "sex": ["M"] * 9 + ["F"]})
    # k=3: only pos|F (1 image) is rare; 'pos' and '*' for it alone stay rare, so it joins neg|M (5 images).
    strata = composite_strata(images, ["positive", "sex"], k=3)
    assert strata.tolist() == ["pos|M"] * 4 + ["neg|M"] * 6


# ---- make_folds ----


def test_make_folds_groups_covers_and_sorts() -> None:
    images = synthetic_images()
    folds = make_folds(images, k=5, seed=3)
    assert list(folds.columns) == ["image_id", "patient_id", "fold"]
    assert folds["image_id"].tolist() == sorted(images["image_id"])
    assert set(folds["fold"]) == {0, 1, 2, 3, 4}
    assert_grouped(folds)
    assert folds.set_index("image_id")["patient_id"].to_dict() == images.set_index("image_id")["patient_id"].to_dict()


def test_make_folds_is_deterministic_and_ignores_row_order() -> None:
    images = synthetic_images()
    first = make_folds(images, k=4, seed=11)
    shuffled = images.sample(frac=1.0, random_state=5).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, make_folds(shuffled, k=4, seed=11))
    assert not first["fold"].equals(make_folds(images, k=4, seed=12)["fold"])


def test_make_folds_spreads_a_stratum_evenly() -> None:
    # 200 single-image patients, 50 positive: 5 folds of 40 images must each get exactly 10 positives.
    ids = [f"i{n:03d}" for n in range(200)]
    images = pd.DataFrame({"image_id": ids, "patient_id": ids, "positive": [n % 4 == 0 for n in range(200)]})
    folds = make_folds(images, k=5, seed=0).merge(images[["image_id", "positive"]], on="image_id")
    assert folds.groupby("fold")["positive"].sum().tolist() == [10] * 5
    assert folds.groupby("fold").size().tolist() == [40] * 5


def test_make_folds_rejects_bad_arguments() -> None:
    images = synthetic_images(n_patients=3)
    with pytest.raises(ConfigError, match="k=4"):
        make_folds(images, k=4, seed=0)
    with pytest.raises(ConfigError, match="k=1"):
        make_folds(images, k=1, seed=0)
    with pytest.raises(ConfigError, match="density not in the images table"):
        make_folds(images, k=2, seed=0, strata_columns=["positive", "density"])
    with pytest.raises(TableError, match="image_id='p000_0'"):
        make_folds(pd.concat([images, images.iloc[:1]]), k=2, seed=0)


# ---- summary ----


def test_fold_summary_by_hand() -> None:
    images = pd.DataFrame(
        {"image_id": ["a", "b", "c", "d"], "patient_id": ["p", "p", "q", "r"], "n_boxes": [2, 0, 1, 0],
         "positive": [True, False, True, False], "view": ["AP", "PA", "AP", None], "sex": ["M", "M", "F", "F"],
         "age": [40, 41, 60, np.nan]}
    )  # fmt: skip
    folds = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "patient_id": ["p", "p", "q", "r"], "fold": [0, 0, 1, 1]})
    summary = fold_summary(folds, images).set_index("fold")
    assert summary.index.tolist() == ["0", "1", "all"]
    assert summary["images"].tolist() == [2, 2, 4]
    assert summary["patients"].tolist() == [1, 2, 3]
    assert summary["positive_rate"].tolist() == [0.5, 0.5, 0.5]
    assert summary["mean_boxes"].tolist() == [1.0, 0.5, 0.75]
    assert summary["ap_share"].tolist() == [0.5, 1.0, 2 / 3]  # fold 1: d has no view
    assert summary["male_share"].tolist() == [1.0, 0.0, 0.5]
    assert summary["mean_age"].tolist() == [40.5, 60.0, 47.0]


# ---- fold files ----


def test_write_folds_exact_bytes_and_round_trip(tmp_path: Path) -> None:
    folds = pd.DataFrame({"image_id": ["c", "a", "b"], "patient_id": ["q", "p", "p"], "fold": [1, 0, 0]})
    path = write_folds(folds, tmp_path / "f.csv")
    assert path.read_bytes() == b"image_id,patient_id,fold\na,p,0\nb,p,0\nc,q,1\n"
    back = read_folds(path)
    assert back.to_dict("list") == {"image_id": ["a", "b", "c"], "patient_id": ["p", "p", "q"], "fold": [0, 0, 1]}
    assert back["fold"].dtype == np.int64


def test_write_folds_refuses_a_patient_in_two_folds(tmp_path: Path) -> None:
    folds = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "p"], "fold": [0, 1]})
    with pytest.raises(TableError, match="patient_id='p'"):
        write_folds(folds, tmp_path / "f.csv")
    assert not (tmp_path / "f.csv").exists()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a,p,0\nb,q,x\n", ["line 3: fold='x'", "integer >= 0"]),
        ("a,p,0\nb,q,-1\n", ["line 3: fold='-1'", "integer >= 0"]),
        ("a,p,0\nb,q,1\na,p,0\n", ["line 4: image_id repeats line 2", "image_id='a'"]),
        ("a,p,0\nb,q,1\nc,p,1\n", ["patient_id='p'", "fold 0 on line 2", "fold 1 on line 4"]),
        ("a,p,0\nb,q,2\n", ["fold(s) 1", "0..K-1"]),
        ("a,,0\nb,q,1\n", ["line 2: patient_id=''"]),
    ],
)
def test_read_folds_errors_name_the_rows(tmp_path: Path, body: str, expected: list[str]) -> None:
    path = tmp_path / "f.csv"
    path.write_text("image_id,patient_id,fold\n" + body)
    with pytest.raises(TableError) as info:
        read_folds(path)
    assert len(info.value.problems) == 1, info.value.problems
    for part in expected:
        assert part in info.value.problems[0]


def test_read_folds_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("image_id,fold\na,0\n")
    with pytest.raises(TableError, match="'patient_id'"):
        read_folds(path)


# ---- CLI on a small RSNA-format data set ----


def small_rsna(tmp_path: Path, n: int = 40) -> tuple[Path, Path]:
    """An RSNA labels CSV of n images (every third positive, some with two boxes) and a matching meta.parquet."""
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(n):
        if i % 3 == 0:
            lines.append(f"img{i:03d},100,100,200,300,1")
            if i % 2 == 0:
                lines.append(f"img{i:03d},600,120,150,250,1")
        else:
            lines.append(f"img{i:03d},,,,,0")
    labels = tmp_path / "stage_2_train_labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    meta = pd.DataFrame(
        {"image_id": [f"img{i:03d}" for i in range(n)], "sex": ["M" if i % 2 else "F" for i in range(n)],
         "age": [20 + i for i in range(n)], "view": ["AP" if i % 5 < 2 else "PA" for i in range(n)]}
    )  # fmt: skip
    meta_path = tmp_path / "meta.parquet"
    meta.to_parquet(meta_path)
    return labels, meta_path


def run_cli(args: list[str]) -> tuple[int, str]:
    # The click group, so that `folds` is a subcommand even while the app has only a few commands.
    result = CliRunner().invoke(typer.main.get_group(app), args)
    return result.exit_code, result.output


def test_cli_folds_with_meta_parquet(tmp_path: Path) -> None:
    labels, meta = small_rsna(tmp_path)
    out = tmp_path / "folds" / "small.csv"
    args = ["folds", "--labels", str(labels), "--headers", str(meta), "--k", "4", "--seed", "1", "--out", str(out)]
    code, output = run_cli(args)
    assert code == 0, output
    assert "pos %" in output and "all" in output
    folds = read_folds(out)
    assert len(folds) == 40 and set(folds["fold"]) == {0, 1, 2, 3}
    first = out.read_bytes()
    assert run_cli(args)[0] == 0
    assert out.read_bytes() == first


def test_cli_folds_reports_table_errors(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("patientId,x,y,width,height,Target\na,1,1,-5,1,1\n")
    code, output = run_cli(["folds", "--labels", str(labels), "--out", str(tmp_path / "f.csv")])
    assert code == 1
    assert "line 2: width='-5'" in output
    assert not (tmp_path / "f.csv").exists()


# ---- real tables ----


@pytest.fixture(scope="module")
def rsna_images() -> pd.DataFrame:
    # Module-scoped (the real folds take seconds to build), so it cannot use the function-scoped conftest fixtures.
    labels, headers = paths.real_rsna_labels(), paths.real_rsna_headers()
    for path in (labels, headers):
        if not path.exists():
            pytest.skip(f"real label table not found at {path} (set CXRDET_SHARED_DATA or place ../shared/data)")
    return images_for_folds(labels, headers)


@pytest.fixture(scope="module")
def rsna_folds(rsna_images: pd.DataFrame) -> pd.DataFrame:
    return make_folds(rsna_images, k=5, seed=42)


@pytest.mark.real_data
@pytest.mark.slow
def test_real_rsna_folds_are_balanced_and_grouped(rsna_images: pd.DataFrame, rsna_folds: pd.DataFrame) -> None:
    assert len(rsna_folds) == 26_684
    assert_grouped(rsna_folds)
    summary = fold_summary(rsna_folds, rsna_images).set_index("fold")
    overall = summary.loc["all", "positive_rate"]
    assert overall == pytest.approx(6_012 / 26_684)
    per_fold = summary.drop(index="all")
    assert (per_fold["positive_rate"] - overall).abs().max() < 0.005
    assert (per_fold["ap_share"] - summary.loc["all", "ap_share"]).abs().max() < 0.01
    assert (per_fold["male_share"] - summary.loc["all", "male_share"]).abs().max() < 0.01
    assert per_fold["images"].between(26_684 // 5 - 5, 26_684 // 5 + 5).all()


@pytest.mark.real_data
@pytest.mark.slow
def test_real_rsna_folds_are_deterministic(tmp_path: Path, rsna_images: pd.DataFrame, rsna_folds: pd.DataFrame) -> None:
    a = write_folds(rsna_folds, tmp_path / "a.csv")
    b = write_folds(make_folds(rsna_images.iloc[::-1], k=5, seed=42), tmp_path / "b.csv")
    assert a.read_bytes() == b.read_bytes()
    other = make_folds(rsna_images, k=5, seed=7)
    assert (other["fold"] != rsna_folds["fold"]).mean() > 0.5


@pytest.mark.real_data
@pytest.mark.slow
def test_real_nih_folds_keep_patients_together(real_nih_labels: Path) -> None:
    images = images_for_folds(real_nih_labels)
    folds = make_folds(images, k=5, seed=42)
    assert len(folds) == 112_120
    assert_grouped(folds)
    summary = fold_summary(folds, images).set_index("fold")
    per_fold = summary.drop(index="all")
    assert per_fold["patients"].sum() == 30_805
    assert (per_fold["positive_rate"] - summary.loc["all", "positive_rate"]).abs().max() < 0.005


# ---- multi-label (NIH) tables ----


def test_rarest_finding_by_hand() -> None:
    # Prevalence: a 3/4, b 2/4, c 1/4.
    images = pd.DataFrame({"a": [1, 1, 1, 0], "b": [1, 0, 1, 0], "c": [0, 0, 1, 0]})
    assert rarest_finding(images, ["a", "b", "c"]).tolist() == ["b", "a", "c", "none"]


def test_synthetic_nih_folds_keep_patients_together(tmp_path: Path) -> None:
    from cxrdet.synth.nih import generate_nih_dataset

    root = tmp_path / "nih"
    generate_nih_dataset(root, 300, 60, seed=3, labels_only=True, progress=False)
    layout = paths.NihLayout(root)
    images = images_for_folds(layout.labels_csv)
    train_ids = {line.removesuffix(".png") for line in layout.train_val_list.read_text().split()}
    assert set(images["image_id"]) == train_ids and len(images) == 300  # test_list.txt is held out
    assert images["finding"].isin(["none", *NIH_FINDINGS]).all()
    folds = make_folds(images, k=5, seed=42)
    assert_grouped(folds)
    assert images.groupby("patient_id").ngroups > 5
    write_folds(folds, tmp_path / "nih_k5.csv")  # validates: no patient in two folds
    merged = folds.merge(images, on="image_id")
    # The 'No Finding' images spread over all folds (patients with many images make exact balance impossible).
    assert (merged.groupby("fold")["finding"].apply(lambda f: (f == "none").sum()) > 0).all()


def test_cli_folds_on_a_synthetic_nih_table(tmp_path: Path) -> None:
    from cxrdet.synth.nih import generate_nih_dataset

    root = tmp_path / "nih"
    generate_nih_dataset(root, 80, 20, seed=4, labels_only=True, progress=False)
    out = tmp_path / "folds.csv"
    args = ["folds", "--labels", str(paths.NihLayout(root).labels_csv), "--k", "5", "--out", str(out)]
    result = CliRunner().invoke(typer.main.get_group(app), args)
    assert result.exit_code == 0, result.output
    folds = read_folds(out)
    assert len(folds) == 80 and set(folds["fold"]) == {0, 1, 2, 3, 4}
    assert_grouped(folds)


def test_siim_folds_keep_a_study_together_and_balance_its_category(tmp_path: Path) -> None:
    """SIIM images carry their study as patient id: a study's images share a fold; each fold gets its share of every
    study category, which the summary table shows."""
    from cxrdet.data.folds import fold_summary, images_for_folds, make_folds, summary_table
    from cxrdet.synth.siim import generate_siim_dataset

    root = tmp_path / "siim"
    generate_siim_dataset(root, 80, 0, seed=2, scale=0.02, workers=1, grid=32)
    images = images_for_folds(root / "train_image_level.csv")
    folds = make_folds(images, k=4, seed=0)
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1
    study_of = images.set_index("image_id")["study_id"]
    assert (folds["patient_id"].to_numpy() == study_of.loc[folds["image_id"]].to_numpy()).all()
    summary = fold_summary(folds, images).set_index("fold")
    shares = summary.drop(index="all")["typical_share"]
    assert abs(shares - summary.at["all", "typical_share"]).max() < 0.1
    assert {"negative_share", "indeterminate_share", "atypical_share"} <= set(summary.columns)
    assert "typic %" in [c.header for c in summary_table(fold_summary(folds, images)).columns]


def test_studies_of_one_patient_share_a_fold_when_the_headers_say_so(tmp_path: Path) -> None:
    """SIIM's tables group by study; the DICOM PatientID that prepare records joins a patient's studies."""
    from cxrdet.data.folds import images_for_folds, linked_groups, make_folds
    from cxrdet.data.prepare import prepare_cache
    from cxrdet.synth.siim import sample_siim_studies

    groups = pd.Series(["s1", "s2", "s3", "s4", "s4"])
    patients = pd.Series(["p1", "p1", None, "p2", "p3"], dtype="string")
    assert linked_groups(groups, patients).tolist() == ["s1", "s1", "s3", "s4", "s4"]

    root = tmp_path / "siim"
    from cxrdet.synth.siim import generate_siim_dataset

    generate_siim_dataset(root, 60, 0, seed=4, scale=0.02, workers=1, grid=32)
    shared = [i for i in sample_siim_studies(60, 0, seed=4, scale=0.02) if i.patient >= 0]
    assert shared  # some studies are a patient's second one
    prepare_cache(root, 16, out=tmp_path / "cache", workers=1, progress=False)
    images = images_for_folds(root / "train_image_level.csv", tmp_path / "cache" / "meta.parquet")
    folds = make_folds(images, k=3, seed=0).set_index("image_id")
    study_fold = images.set_index("image_id")["study_id"].to_frame().join(folds["fold"]).groupby("study_id")["fold"]
    for image in shared:  # the study and the one whose patient it is share a fold
        first = next(i for i in sample_siim_studies(60, 0, seed=4, scale=0.02) if i.study == image.patient)
        assert study_fold.first()[image.study_id] == study_fold.first()[first.study_id]
    assert images["patient_id"].nunique() == 60 - len({i.study for i in shared})
