"""Start a detector's backbone from a trained classifier (the RSNA 1st place pretrained its backbone on NIH).

A detector config names the classifier under its backbone:

    model = dict(backbone=dict(type='timm_fpn', name='densenet121', ...,
                               init_from=dict(checkpoint='cls_densenet121-nih14_512_adamw12e/0')))

`checkpoint` is a `.ckpt` file of a cxrdet classifier run, or `EXPERIMENT/FOLD` (`EXPERIMENT/fold3` works too):
that run's final best checkpoint, found through the config written in its run folder. The classifier's validated
weights (EMA when it kept them) are copied into the backbone's body wherever a tensor's name and shape match. Names
are compared with dots read as underscores, because timm's `features_only` wrappers flatten module paths
(`features.conv0` of a DenseNet becomes `features_conv0`); the body's own names otherwise follow the classifier's
timm model, and torchvision's ResNet uses timm's ResNet names too. A classifier that read one grey channel
(`in_chans=1`) has a one-channel first layer; a detector feeds three copies of the grey image, so that layer's
weights are spread over three channels (divided by 3: the same response to the same grey image).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from cxrdet.errors import ConfigError
from cxrdet.models.lit_base import inference_state
from cxrdet.runs import Run, load_checkpoint_file

INIT_KEYS: frozenset[str] = frozenset({"checkpoint"})
_RUN = re.compile(r"^(?P<experiment>[^/\\]+)[/\\](?:fold)?(?P<fold>\d+)$")


def resolve_classifier_checkpoint(spec: str | Path) -> Path:
    """A classifier checkpoint file from `init_from.checkpoint`: a file path, or `EXPERIMENT/FOLD`.

    Raises:
        ConfigError: Neither an existing file nor a finished run's `EXPERIMENT/FOLD`.
    """
    path = Path(spec)
    if path.is_file():
        return path
    match = _RUN.match(str(spec))
    if match is None:
        raise ConfigError(f"model.backbone.init_from.checkpoint={str(spec)!r}: file not found; expected a .ckpt file "
                          "or EXPERIMENT/FOLD of a trained classifier run")
    experiment, fold = match["experiment"], int(match["fold"])
    run = Run(experiment, fold)
    if not run.has_config():
        raise ConfigError(f"model.backbone.init_from.checkpoint={str(spec)!r}: no run at {run.folder}; train the "
                          f"classifier first (cxrdet train configs/experiments/{experiment}.py --fold {fold})")
    return run.final_checkpoint()


def _flat(name: str) -> str:
    return name.replace(".", "_")


def transfer_weights(target: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the tensors of `state` into `target` where the flattened names (dots as underscores) and shapes match;
    a one-channel first-layer weight `[O, 1, k, k]` fills a three-channel one `[O, 3, k, k]` divided by 3.

    Args:
        target: The module to fill (a detector's backbone body).
        state: A classifier network's state dict (timm names).

    Returns:
        The names (in `target`) of the tensors that were copied.
    """
    own = target.state_dict()
    by_flat: dict[str, str] = {}
    ambiguous: set[str] = set()
    for name in own:
        flat = _flat(name)
        if flat in by_flat:
            ambiguous.add(flat)
        by_flat[flat] = name
    fitting: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        flat = _flat(key)
        if flat in ambiguous or flat not in by_flat:
            continue
        name = by_flat[flat]
        want = own[name].shape
        if value.shape == want:
            fitting[name] = value
        elif value.ndim == 4 and len(want) == 4 and value.shape[1] == 1 and want[1] == 3 and \
                value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            fitting[name] = value.expand(-1, 3, -1, -1) / 3.0
    target.load_state_dict(fitting, strict=False)
    return list(fitting)


def init_from_classifier(backbone: nn.Module, init_from: Mapping[str, Any]) -> int:
    """Load a classifier's weights into `backbone.body` (see the module docstring).

    Returns:
        The number of tensors copied.

    Raises:
        ConfigError: Unknown keys, no checkpoint, a checkpoint that is not a classifier's, or no tensor that fits.
    """
    if not isinstance(init_from, Mapping) or set(init_from) - INIT_KEYS or "checkpoint" not in init_from:
        raise ConfigError(f"model.backbone.init_from={init_from!r}: expected dict(checkpoint='PATH.ckpt' or "
                          "'EXPERIMENT/FOLD')")
    body = getattr(backbone, "body", None)
    if not isinstance(body, nn.Module):
        raise ConfigError(f"model.backbone.init_from: the {type(backbone).__name__} backbone has no `body` to fill")
    path = resolve_classifier_checkpoint(init_from["checkpoint"])
    checkpoint = load_checkpoint_file(path)
    task = (checkpoint.get("hyper_parameters", {}).get("cfg") or {}).get("task")
    if task != "classify":
        raise ConfigError(f"model.backbone.init_from.checkpoint: {path} is not a classifier checkpoint (its config "
                          f"has task={task!r}; expected 'classify')")
    state = inference_state(checkpoint, str(path), "classifier")
    # The classifier's timm network is its `net`; its head and normalisation buffers do not fit a body.
    net = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    loaded = transfer_weights(body, net)
    total = len(body.state_dict())
    if not loaded:
        raise ConfigError(f"model.backbone.init_from.checkpoint: no tensor of {path} fits the backbone (e.g. "
                          f"{next(iter(body.state_dict()), '')!r} against {next(iter(net), '')!r}); was the "
                          "classifier the same timm model?")
    rank_zero_info(f"model.backbone.init_from: {len(loaded)} of {total} backbone tensors loaded from {path}")
    return len(loaded)
