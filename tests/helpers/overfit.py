"""Overfit a detector on one fixed batch (tests that a backend's box and label conventions round-trip)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def overfit_and_predict(det: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], steps: int,
                        lr: float) -> dict[str, Any]:
    """Train `det` with AdamW for `steps` steps on the one batch, then return its prediction for the first image."""
    optimizer = torch.optim.AdamW(det.parameters(), lr=lr)
    det.train()
    for _ in range(steps):
        loss = sum(det(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    det.eval()
    with torch.no_grad():
        return det(images[:1])[0]
