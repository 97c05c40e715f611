"""Every reader of outside text, fuzzed (hypothesis, fixed seed, bounded examples): any input either parses or raises
cxrdet's own error naming the line or field, never a bare KeyError, IndexError, ValueError or a pandas traceback.

Readers: the label tables of RSNA, VinBigData and NIH, the RSNA and VinBigData submission files, fold files,
`-o key=value` overrides (parsed and merged into a real config) and ensemble configs. `EXAMPLES` inputs each.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrdet.errors import CxrdetError
from tests.helpers.squares import TINY

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Field values: mostly plausible (numbers, ids, the formats' own words), sometimes hostile text.
NUMBERS = st.one_of(st.integers(-5, 5000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["", "nan", "1e400", "-0", "0x10", "1,5", " 7 "]))
WORDS = st.sampled_from(["a", "b", "img1", "R8", "No finding", "Cardiomegaly", "Nodule/Mass", "14", "3", "0", "1",
                         "opacity", "No Finding", "Effusion|Mass", "M", "F", "PA", "AP", "58", "058Y", "x.png"])
HOSTILE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
FIELD = st.one_of(NUMBERS, WORDS, WORDS, HOSTILE)


def csv_text(header: tuple[str, ...]) -> st.SearchStrategy[str]:
    """CSV files shaped like a table with `header`: the header as is, with a column dropped or shuffled, or garbage;
    rows of fuzzed fields, sometimes with a field too many or too few."""
    headers = st.one_of(st.just(list(header)), st.permutations(list(header)),
                        st.lists(st.sampled_from(list(header)), max_size=len(header)), st.lists(HOSTILE, max_size=3))

    @st.composite
    def build(draw: Any) -> str:
        cols = draw(headers)
        width = max(len(cols), 1)
        rows = draw(st.lists(st.lists(FIELD, min_size=max(width - 1, 0), max_size=width + 1), max_size=8))
        quote = draw(st.booleans())

        def cell(value: str) -> str:
            return '"' + value.replace('"', '""') + '"' if quote or any(c in value for c in ',"\n\r') else value

        return "\n".join([",".join(map(cell, cols)), *(",".join(map(cell, r)) for r in rows)]) + "\n"

    return build()


def parses_or_says_why(reader: Any, text: str, suffix: str = ".csv") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            reader(path)
        except CxrdetError as err:
            assert str(path) in str(err) or "line" in str(err) or "=" in str(err), str(err)


@FUZZ
@given(csv_text(("patientId", "x", "y", "width", "height", "Target")))
def test_rsna_labels(text: str) -> None:
    from cxrdet.data.labels import read_rsna_labels

    parses_or_says_why(read_rsna_labels, text)


@FUZZ
@given(csv_text(("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")))
def test_vinbigdata_labels(text: str) -> None:
    from cxrdet.competitions.vinbigdata import read_vinbigdata_labels

    parses_or_says_why(read_vinbigdata_labels, text)


@FUZZ
@given(csv_text(("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                 "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]")))
def test_nih_labels(text: str) -> None:
    from cxrdet.data.labels import read_nih_labels

    parses_or_says_why(read_nih_labels, text)


PRED = st.lists(st.one_of(NUMBERS, WORDS, HOSTILE), max_size=13).map(" ".join)


def submission_text(id_column: str) -> st.SearchStrategy[str]:
    rows = st.lists(st.tuples(st.one_of(WORDS, HOSTILE), PRED), max_size=6)
    header = st.sampled_from([f"{id_column},PredictionString", "PredictionString", f"{id_column}", "x,y,z"])
    return st.tuples(header, rows).map(
        lambda hr: "\n".join([hr[0], *(f'"{i.replace(chr(34), "")}","{p}"' for i, p in hr[1])]) + "\n")


@FUZZ
@given(submission_text("patientId"))
def test_rsna_submissions(text: str) -> None:
    from cxrdet.submission import read_submission

    parses_or_says_why(lambda p: read_submission(p, image_ids=["a", "b", "img1"]), text)


@FUZZ
@given(submission_text("image_id"))
def test_vinbigdata_submissions(text: str) -> None:
    from cxrdet.competitions.vinbigdata import read_submission

    parses_or_says_why(lambda p: read_submission(p, ["a", "b", "img1"]), text)


@FUZZ
@given(csv_text(("image_id", "patient_id", "fold")))
def test_fold_files(text: str) -> None:
    from cxrdet.data.folds import read_folds

    parses_or_says_why(read_folds, text)


KEYS = st.one_of(st.sampled_from(["data.size", "data.folds", "train.epochs", "model.backbone.name", "optim.lr",
                                  "data.augment.gamma", "predict.tta", "train.stages", "data", "experiment",
                                  "model.type", "data.classes", "a..b", ".x", "data.size.x"]), HOSTILE)
VALUES = st.one_of(NUMBERS, WORDS, st.sampled_from(["None", "(0.9,1.1)", "[1,2", "{'a': 1}", "dict(x=1)", "[]",
                                                    "[{'name':'a'}]", "True"]), HOSTILE)


@FUZZ
@given(st.lists(st.one_of(st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), HOSTILE), max_size=4))
def test_cfg_options(options: list[str]) -> None:
    from cxrdet.config import load_config

    try:
        load_config(TINY, options)
    except CxrdetError:
        pass


ENSEMBLE_KEYS = st.sampled_from(["name", "members", "fusion", "postprocess", "classifier", "search_space",
                                 "n_trials", "honest_trials", "seed", "folds", "labels", "image_size", "engine",
                                 "storage", "typo"])
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                                 st.text(max_size=8), WORDS),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.one_of(ENSEMBLE_KEYS, WORDS,
                                                                         st.sampled_from(["experiment", "folds",
                                                                                          "weight", "method",
                                                                                          "iou_thr", "type", "low",
                                                                                          "high"])),
                                                               inner, max_size=4)), max_leaves=12)


@FUZZ
@given(st.dictionaries(ENSEMBLE_KEYS, JSONISH, max_size=6))
def test_ensemble_configs(raw: dict[str, Any]) -> None:
    from cxrdet.ensemble.spec import parse_ensemble

    try:
        parse_ensemble(raw, Path("configs/ensembles/fuzz.py"))
    except CxrdetError as err:
        assert "fuzz.py" in str(err) or "=" in str(err), str(err)


@pytest.mark.parametrize("reader", ["rsna", "vinbigdata", "nih", "folds"])
def test_the_fuzzers_reach_the_readers_row_checks(reader: str, tmp_path: Path) -> None:
    # The strategies do produce inputs that get past the header check (else the fuzzing would test nothing): a
    # well-formed header with one bad row must fail on that row.
    from cxrdet.competitions.vinbigdata import read_vinbigdata_labels
    from cxrdet.data.folds import read_folds
    from cxrdet.data.labels import read_nih_labels, read_rsna_labels

    tables = {"rsna": (read_rsna_labels, "patientId,x,y,width,height,Target\na,1,2,x,4,1\n"),
              "vinbigdata": (read_vinbigdata_labels, "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                                                     "a,ILD,5,R1,1,2,x,4\n"),
              "nih": (read_nih_labels, "Image Index,Finding Labels,Patient ID\nx.png,Nonsense,1\n"),
              "folds": (read_folds, "image_id,patient_id,fold\na,a,-1\n")}
    read, text = tables[reader]
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(CxrdetError, match="line 2"):
        read(path)
