"""Grad-CAM heatmaps of a fold's classifier, overlaid on the X-rays it classifies (`cxrdet explain`).

For each chosen image and class, Grad-CAM (pytorch-grad-cam) weights the last feature map of the network
(`Classifier.target_layer()`) by the gradient of that class's logit, keeps the positive part, upsamples it to the
input and scales it to [0, 1] per image. The overlay is drawn on the X-ray as a reader sees it: the original image
(the DICOM or PNG named by the cache's `source` column, decoded as `cxrdet prepare` decodes it) at its own width and
height, with the S x S heatmap stretched back over it (bilinear; the network saw the image squashed to a square). When
the original file is gone, the cached image is stretched back to the original size instead (`drawn_on` says which). A
caption band at the top gives the class, the model's probability and the truth.

Choices when not given:
- classes: the 4 classes of highest pooled OOF AUROC (`cxrdet.metrics.classification`), or all scorable ones when
  there are fewer;
- images: the fold's OOF images (never seen by this model) of highest OOF probability, taken in turn per chosen class
  (the top image of each class, then the second of each, ...) until `n` distinct images.

Outputs in the folder: `<image_id>_<class>.png` per image and class, and `explain.csv` (one row per PNG: image_id,
role (`oof`: held out from this model; `train`: one of its training images; `test`), class, probability, truth, file,
width, height, drawn_on (`original` or `cache`)).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from cxrdet.runs import Run
from cxrdet.errors import ConfigError, CxrdetError
from cxrdet.io import atomic_path, write_csv
from cxrdet.models.classifier import Classifier

TOP_CLASSES = 4
DEFAULT_IMAGES = 8
# Heatmap weight in the overlay: enough colour to read the map, enough X-ray to see the anatomy under it.
HEATMAP_WEIGHT = 0.45
TABLE_COLUMNS: tuple[str, ...] = (
    "image_id", "role", "class", "probability", "truth", "file", "width", "height", "drawn_on")


@dataclass(frozen=True)
class ExplainResult:
    """What `explain` wrote.

    Attributes:
        folder: The output folder.
        table: One row per PNG (`TABLE_COLUMNS`).
        size: Side S of the network input (the heatmap's grid); the overlays have each image's original size.
    """

    folder: Path
    table: pd.DataFrame
    size: int


# ---- pure parts ----


def choose_classes(ranked: Sequence[str], all_classes: Sequence[str], requested: str | Sequence[str] = "auto",
                   top: int = TOP_CLASSES) -> list[str]:
    """The classes to explain.

    Args:
        ranked: Scorable classes, highest OOF AUROC first.
        all_classes: Every class of the model.
        requested: `auto` (the `top` first of `ranked`), or class names (a list or a comma-separated string).

    Raises:
        ConfigError: A requested class is not a class of the model, or `auto` finds no scorable class.
    """
    if isinstance(requested, str) and requested.strip() == "auto":
        if not ranked:
            raise ConfigError("--classes auto ranks classes by OOF AUROC, but no class has one (no OOF predictions, "
                              "or every class has a single label value): name the classes, e.g. --classes A,B")
        return list(ranked[:top])
    names = [c.strip() for c in requested.split(",")] if isinstance(requested, str) else [str(c) for c in requested]
    names = [c for c in names if c]
    unknown = [c for c in names if c not in all_classes]
    if unknown or not names:
        raise ConfigError(f"--classes {','.join(names) or repr(requested)}: unknown class(es) {unknown}; expected "
                          f"'auto' or names among {', '.join(all_classes)}")
    return list(dict.fromkeys(names))


def pick_images(probs: pd.DataFrame, classes: Sequence[str], n: int) -> list[str]:
    """`n` distinct image ids of highest probability, taken in turn per class (round robin over `classes`).

    Args:
        probs: `image_id`-indexed probabilities, a column per class.
    """
    order = {c: probs[c].sort_values(ascending=False, kind="stable").index.tolist() for c in classes}
    picked: list[str] = []
    for rank in range(len(probs)):
        for c in classes:
            if len(picked) >= n:
                return picked
            if order[c][rank] not in picked:
                picked.append(order[c][rank])
    return picked


def grad_cams(model: Classifier, image: torch.Tensor, class_indices: Sequence[int]
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Grad-CAM maps of one image for several classes, in one forward and backward pass.

    Args:
        model: The classifier (its parameters are set to require gradients: Grad-CAM needs them).
        image: `[3, S, S]` float in [0, 1], as the data pipeline serves it.
        class_indices: Output indices to explain.

    Returns:
        Maps `[len(class_indices), S, S]` in [0, 1] (each scaled to its own maximum; all zeros where the class's
        gradient is nowhere positive), and the sigmoid probability of each class.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    for p in model.parameters():  # EMA copies are frozen; gradients must reach the target layer
        p.requires_grad_(True)
    batch = image.unsqueeze(0).expand(len(class_indices), -1, -1, -1).contiguous()
    with GradCAM(model=model, target_layers=[model.target_layer()]) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(k)) for k in class_indices])
        logits = cam.outputs.detach()
    probs = torch.sigmoid(logits[0].double()).cpu().numpy()
    return maps.astype(np.float32), probs[list(class_indices)]


def stretch(values: npt.NDArray[np.floating], width: int, height: int) -> npt.NDArray[np.float32]:
    """A float image resized (bilinear) to `width x height`; a no-op at that size already."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape == (height, width):
        return values
    return np.asarray(Image.fromarray(values, mode="F").resize((width, height), Image.Resampling.BILINEAR))


def original_pixels(source: Any, width: int, height: int) -> npt.NDArray[np.float32] | None:
    """The original X-ray in [0, 1] (`(height, width)`) from the DICOM or PNG at `source`, decoded as `cxrdet prepare`
    decodes it; None when the file is gone, unreadable or no longer of that size."""
    from cxrdet.data.dicom import read_dicom
    from cxrdet.data.prepare import read_png
    from cxrdet.errors import DicomError

    if not isinstance(source, str) or not source or not Path(source).is_file():
        return None
    try:
        pixels = read_png(source)[0] if Path(source).suffix.lower() == ".png" else read_dicom(source).pixels
    except (CxrdetError, DicomError, OSError):
        return None
    return pixels.astype(np.float32) if pixels.shape == (height, width) else None


def overlay(pixels: npt.NDArray[np.floating], heatmap: npt.NDArray[np.floating], caption: str) -> Image.Image:
    """The image with the heatmap in colour (jet) over it and a caption band at the top.

    Args:
        pixels: `(H, W)` grey image in [0, 1].
        heatmap: `(H, W)` map in [0, 1].
        caption: Text of the band.

    Returns:
        An RGB image of the same `(W, H)` size.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    grey = np.repeat(np.asarray(pixels, dtype=np.float32)[..., None], 3, axis=2)
    rgb = show_cam_on_image(grey, np.asarray(heatmap, dtype=np.float32), use_rgb=True,
                            image_weight=1.0 - HEATMAP_WEIGHT)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image, "RGBA")
    side = min(image.size)
    font = ImageFont.load_default(size=max(6, round(side / 28)))
    band = font.size + max(2, side // 100) * 2
    draw.rectangle((0, 0, image.size[0], band), fill=(0, 0, 0, 170))
    draw.text((max(2, side // 100), max(1, side // 100)), caption, fill=(255, 255, 255), font=font)
    return image


def _file_name(image_id: str, class_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{image_id}_{class_name}") + ".png"


# ---- the command ----


def explain(cfg: Mapping[str, Any], fold: int, image_ids: Sequence[str] | None = None, n: int = DEFAULT_IMAGES,
            classes: str | Sequence[str] = "auto", out_dir: str | Path | None = None, checkpoint: str = "best"
            ) -> ExplainResult:
    """Write Grad-CAM overlays of the fold-`fold` classifier of `cfg` (see the module docstring).

    Args:
        cfg: The resolved experiment config (`task='classify'`).
        fold: The fold whose model is explained.
        image_ids: Images to explain (cache ids, train or test split); default: picked from the fold's OOF images.
        n: Images to pick when `image_ids` is not given.
        classes: `auto` or class names.
        out_dir: Output folder; default `cxrdet.runs.Run.explain_dir`.
        checkpoint: `best`, `last` or a .ckpt path.

    Raises:
        ConfigError: Not a classifier config; unknown class or image. CxrdetError: No checkpoint, or the OOF
            predictions a default needs are missing.
    """
    from cxrdet.data.classify import ClassificationDataModule
    from cxrdet.data.dataset import DetectionDataset, build_records
    from cxrdet.data.prepare import load_meta
    from cxrdet.models.lit_classifier import LitClassifier
    from cxrdet.progress import progress
    from cxrdet.report.data import evaluate_experiment, read_probabilities

    experiment = cfg["experiment"]
    run = Run(experiment, fold)
    all_classes = tuple(cfg["data"]["classes"])
    oof_file = run.predictions_path("oof")
    needs_oof = not image_ids or (isinstance(classes, str) and classes.strip() == "auto")
    if needs_oof and not oof_file.is_file():
        raise CxrdetError(f"{oof_file} not found: choosing classes (auto) or images (none given) reads the fold's OOF "
                          f"probabilities; run `cxrdet predict CONFIG --fold {fold} --split oof`, or pass --image-id "
                          "and --classes")
    ranked = evaluate_experiment(experiment).ranked_classes() if needs_oof else []
    chosen = choose_classes(ranked, all_classes, classes)
    ids = list(dict.fromkeys(image_ids)) if image_ids else pick_images(read_probabilities(oof_file, all_classes),
                                                                       chosen, n)
    model = LitClassifier.load_for_inference(cfg, run.final_checkpoint(checkpoint, cfg=cfg))

    dm = ClassificationDataModule(cfg["data"], fold)
    dm.setup()
    meta = load_meta(dm.cfg.cache)
    split_of = dict(zip(meta["image_id"].astype(str), meta["split"], strict=True))
    meta_by_id = meta.assign(image_id=meta["image_id"].astype(str)).set_index("image_id")
    unknown = [i for i in ids if i not in split_of]
    if unknown:
        raise ConfigError(f"--image-id {', '.join(unknown)}: not in the prepare cache {dm.cfg.cache}; expected image "
                          "ids of its train or test split")
    oof_ids = set(dm.val_image_ids)
    truth = dm.truth
    folder = Path(out_dir) if out_dir is not None else run.explain_dir
    folder.mkdir(parents=True, exist_ok=True)
    class_index = [all_classes.index(c) for c in chosen]
    rows = []
    for image_id in progress(ids, desc="explain", unit="image"):
        split = split_of[image_id]
        records = build_records(meta[meta["split"] == split], [image_id])
        image, _, _ = DetectionDataset(dm.cfg.cache, records, dm.cfg.size, view="full", clahe=dm.clahe)[0]
        maps, probs = grad_cams(model, image, class_index)
        row = meta_by_id.loc[image_id]
        width, height = int(row["orig_width"]), int(row["orig_height"])
        xray = original_pixels(row["source"], width, height)
        drawn_on = "original" if xray is not None else "cache"
        if xray is None:
            xray = stretch(image[0].numpy(), width, height)
        role = "test" if split == "test" else ("oof" if image_id in oof_ids else "train")
        for c, heatmap, prob in zip(chosen, maps, probs, strict=True):
            known = split == "train" and image_id in truth.index
            label = int(truth.at[image_id, c]) if known else None
            caption = f"{c} p={prob:.2f} truth={'-' if label is None else label} ({role})"
            out = folder / _file_name(image_id, c)
            with atomic_path(out) as tmp:
                overlay(xray, stretch(heatmap, width, height), caption).save(tmp, format="PNG")
            rows.append({"image_id": image_id, "role": role, "class": c, "probability": float(prob), "truth": label,
                         "file": out.name, "width": width, "height": height, "drawn_on": drawn_on})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    write_csv(folder / "explain.csv", table, index=False)
    return ExplainResult(folder=folder, table=table, size=int(dm.cfg.size))
