"""Box-aware image transforms of the detection data: mild augmentation, test-time flip and optional CLAHE.

Heavy augmentation did not help on the consistent RSNA radiographs, and intensity changes can change the apparent
extent of an opacity, so the defaults stay mild: a horizontal flip, a small affine (a few degrees, a few percent of
shift and scale) and small brightness / contrast / gamma changes. Geometric steps move the boxes with the pixels
through torchvision's `tv_tensors.BoundingBoxes` (format XYXY); the flip goes through `cxrdet.boxes.hflip_xyxy` so
that training and test-time flipping share one code path and the flip is recorded in the batch metadata.

The `augment` section of a data config builds the pipeline:

    augment = dict(hflip=0.5, affine=dict(degrees=3, translate=0.03, scale=(0.95, 1.05)),
                   brightness=0.1, contrast=0.1, gamma=(0.9, 1.1), clahe=False)

Any key may be left out or set to 0 / None to switch that step off; an empty or None section is no augmentation.
CLAHE is a deterministic contrast equalisation, not a random step: when on, it is applied to every image of every
loader (training, validation, prediction), so that the model never sees two kinds of contrast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from cxrdet.boxes import hflip_xyxy
from cxrdet.errors import ConfigError

# `mosaic` and `mixup` compose several items; `cxrdet.data.mosaic` reads them.
AUGMENT_KEYS: tuple[str, ...] = ("hflip", "affine", "brightness", "contrast", "gamma", "clahe", "mosaic", "mixup")
AFFINE_KEYS: tuple[str, ...] = ("degrees", "translate", "scale")
CLAHE_KEYS: tuple[str, ...] = ("clip_limit", "tile_grid")


class RandomGamma(v2.Transform):
    """Raise the image intensities (in [0, 1]) to a gamma drawn uniformly from `gamma`; boxes pass through.

    Args:
        gamma: `(low, high)` range of the exponent; 1 leaves the image unchanged.
    """

    def __init__(self, gamma: tuple[float, float]) -> None:
        super().__init__()
        low, high = float(gamma[0]), float(gamma[1])
        if not 0 < low <= high:
            raise ConfigError(f"augment.gamma={gamma!r}: expected a range (low, high) with 0 < low <= high")
        self.gamma = (low, high)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": float(torch.empty(()).uniform_(self.gamma[0], self.gamma[1]))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.adjust_gamma, inpt, gamma=params["gamma"])


@dataclass(frozen=True)
class Clahe:
    """Contrast-limited adaptive histogram equalisation of a greyscale uint8 image (OpenCV).

    Attributes:
        clip_limit: OpenCV's contrast limit per tile.
        tile_grid: Number of tiles along each side.
    """

    clip_limit: float = 2.0
    tile_grid: int = 8

    def __call__(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Equalise an `(H, W)` uint8 image; returns a new `(H, W)` uint8 image."""
        import cv2  # only needed when CLAHE is switched on

        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid))
        return clahe.apply(np.ascontiguousarray(image, dtype=np.uint8))


def hflip_sample(image: torch.Tensor, boxes: npt.NDArray[np.float64]) -> tuple[torch.Tensor, npt.NDArray[np.float64]]:
    """Mirror an image and its boxes left-right.

    Args:
        image: `[C, H, W]` tensor.
        boxes: `(N, 4)` xyxy boxes in pixels of `image`.

    Returns:
        The flipped image (a new tensor) and the flipped `(N, 4)` xyxy boxes, pixels of the same image.
    """
    return image.flip(-1), hflip_xyxy(boxes, image.shape[-1])


class DetectionAugment:
    """Random, box-aware augmentation of one greyscale image and its boxes.

    Steps, in order: horizontal flip with probability `hflip`; a random affine (rotation, shift, scale; bilinear,
    black fill) that moves the boxes with the pixels; then brightness, contrast (in random order) and gamma.
    Randomness comes from torch's global generator, which the data loaders seed per worker.

    Args:
        hflip: Probability of a horizontal flip.
        degrees: Largest rotation in degrees (either way); 0 for none.
        translate: Largest shift as a fraction of the image size along each axis; 0 for none.
        scale: `(low, high)` range of the zoom factor; None for none.
        brightness: Largest relative brightness change (0.1: factor in [0.9, 1.1]); 0 for none.
        contrast: Largest relative contrast change; 0 for none.
        gamma: `(low, high)` range of the gamma exponent; None for none.
    """

    def __init__(
        self,
        hflip: float = 0.0,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: tuple[float, float] | None = None,
        brightness: float = 0.0,
        contrast: float = 0.0,
        gamma: tuple[float, float] | None = None,
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"augment.hflip={hflip!r}: expected a probability in [0, 1]")
        self.hflip = float(hflip)
        self.affine: v2.Transform | None = None
        if degrees or translate or scale is not None:
            self.affine = v2.RandomAffine(
                degrees=float(degrees),
                translate=(float(translate), float(translate)) if translate else None,
                scale=tuple(map(float, scale)) if scale is not None else None,
                interpolation=InterpolationMode.BILINEAR,
                fill=0,
            )
        steps: list[v2.Transform] = []
        if brightness or contrast:
            steps.append(v2.ColorJitter(brightness=float(brightness) or None, contrast=float(contrast) or None))
        if gamma is not None:
            steps.append(RandomGamma(gamma))
        self.photometric: v2.Transform | None = v2.Compose(steps) if steps else None

    def __call__(
        self, image: torch.Tensor, boxes: npt.NDArray[np.float64]
    ) -> tuple[torch.Tensor, npt.NDArray[np.float64], bool]:
        """Augment one sample.

        Args:
            image: `[1, H, W]` float32 tensor in [0, 1].
            boxes: `(N, 4)` xyxy boxes in pixels of `image`.

        Returns:
            The augmented image (`[1, H, W]` float32 in [0, 1]), its `(N, 4)` xyxy boxes in pixels of the same
            canvas (not yet clipped: boxes pushed past the border keep their outside part), and whether it was
            flipped.
        """
        flipped = bool(torch.rand(()) < self.hflip)
        if flipped:
            image, boxes = hflip_sample(image, boxes)
        if self.affine is not None:
            height, width = image.shape[-2:]
            # No clamping here keeps the geometry exact; the dataset clips and drops degenerate boxes afterwards.
            tv_boxes = tv_tensors.BoundingBoxes(
                torch.as_tensor(boxes, dtype=torch.float32),
                format="XYXY",
                canvas_size=(height, width),
                clamping_mode=None,
            )
            tv_image, tv_boxes = self.affine(tv_tensors.Image(image), tv_boxes)
            image = tv_image.as_subclass(torch.Tensor)
            boxes = tv_boxes.as_subclass(torch.Tensor).numpy().astype(np.float64).reshape(-1, 4)
        if self.photometric is not None:
            image = self.photometric(image).clamp_(0.0, 1.0)
        return image, boxes, flipped


def _range(value: Any, key: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ConfigError(f"augment.{key}={value!r}: expected a (low, high) pair")
    return float(value[0]), float(value[1])


def _check_keys(section: Mapping[str, Any], allowed: Sequence[str], name: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)}: expected some of {', '.join(allowed)}")


def build_augment(augment: Mapping[str, Any] | None) -> DetectionAugment | None:
    """Build the training augmentation from a config's `augment` section.

    Args:
        augment: `hflip` (probability), `affine` (dict of `degrees`, `translate`, `scale=(low, high)`, or None),
            `brightness`, `contrast` (relative amounts), `gamma` (`(low, high)` or None), `clahe` (read by
            `build_clahe`). None or empty: no augmentation.

    Returns:
        The augmentation, or None when no random step is switched on.

    Raises:
        ConfigError: On an unknown key or a value of the wrong form.
    """
    if not augment:
        return None
    _check_keys(augment, AUGMENT_KEYS, "augment")
    affine = augment.get("affine") or {}
    if not isinstance(affine, Mapping):
        raise ConfigError(f"augment.affine={affine!r}: expected a dict with some of {', '.join(AFFINE_KEYS)}, or None")
    _check_keys(affine, AFFINE_KEYS, "augment.affine")
    scale = affine.get("scale")
    gamma = augment.get("gamma")
    built = DetectionAugment(
        hflip=float(augment.get("hflip") or 0.0),
        degrees=float(affine.get("degrees") or 0.0),
        translate=float(affine.get("translate") or 0.0),
        scale=_range(scale, "affine.scale") if scale is not None else None,
        brightness=float(augment.get("brightness") or 0.0),
        contrast=float(augment.get("contrast") or 0.0),
        gamma=_range(gamma, "gamma") if gamma is not None else None,
    )
    if built.hflip == 0.0 and built.affine is None and built.photometric is None:
        return None
    return built


def build_clahe(augment: Mapping[str, Any] | None) -> Clahe | None:
    """The CLAHE step of a config's `augment` section: `clahe=False/None` (off), `True` (OpenCV defaults
    clip_limit=2, tile_grid=8) or a dict with `clip_limit` and/or `tile_grid`."""
    setting = (augment or {}).get("clahe")
    if not setting:
        return None
    if setting is True:
        return Clahe()
    if not isinstance(setting, Mapping):
        raise ConfigError(f"augment.clahe={setting!r}: expected False, True or a dict of {', '.join(CLAHE_KEYS)}")
    _check_keys(setting, CLAHE_KEYS, "augment.clahe")
    return Clahe(clip_limit=float(setting.get("clip_limit", 2.0)), tile_grid=int(setting.get("tile_grid", 8)))
