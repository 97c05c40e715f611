"""RSNA metric: the compiled `cxrdet.metrics.rsna` against a straightforward per-image Python loop, at full scale.

On the real RSNA stage-2 label table (26,684 images) with simulated predictions (fixed seed: ground-truth boxes
jittered, some dropped, random false positives, random scores), prints the time of one full evaluation of each
(best of several runs; the numba kernels compiled beforehand), their ratio and both scores (they must agree to
1e-12); then the sweep over the 50 confidence cuts that validation and reports use: one pass
(`score_vs_threshold`) against scoring each cut's kept boxes, with the largest score difference.

Image ids are timed both as strings (a table read from disk) and as a categorical over the image set (what the
tuner and the validation loop pass), whose lookup is free.

The plain loop (`reference_rsna_score`) is the tests' independent reference, in `tests/helpers/reference.py`.

Run: .venv/bin/python benchmarks/bench_metric.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.reference import reference_rsna_score, simulate_predictions  # noqa: E402


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import numpy as np
    import pandas as pd

    from cxrdet import paths
    from cxrdet.data.labels import read_rsna_labels
    from cxrdet.metrics.rsna import RsnaEvaluator, rsna_score

    labels_path = paths.real_rsna_labels()
    if not labels_path.exists():
        sys.exit(f"bench_metric: real RSNA labels not found at {labels_path} (set CXRDET_SHARED_DATA or place "
                 "../shared/data); nothing measured")
    labels = read_rsna_labels(labels_path)
    gt, ids = labels.boxes, labels.image_ids
    pred = simulate_predictions(gt, ids)
    cat = pred.assign(image_id=pd.Categorical(pred["image_id"], categories=pd.Index(ids)))
    print(f"real RSNA labels: {len(ids)} images, {len(gt)} boxes; simulated predictions: {len(pred)} boxes")

    evaluator = RsnaEvaluator(gt, ids)
    fast = evaluator.score(pred)  # compiles (or loads) the numba kernels
    t_full = best_of(lambda: rsna_score(gt, pred, ids), 5)
    t_eval = best_of(lambda: evaluator.score(pred), 10)
    t_cat = best_of(lambda: evaluator.score(cat), 10)
    t_ref = best_of(lambda: reference_rsna_score(gt, pred, ids), 3)
    ref_score, _ = reference_rsna_score(gt, pred, ids)

    print(f"per-image Python loop reference:      {t_ref * 1e3:8.1f} ms  score {ref_score:.15f}")
    print(f"cxrdet rsna_score (groups GT too):    {t_full * 1e3:8.1f} ms  {t_ref / t_full:6.1f} x")
    print(f"RsnaEvaluator.score, string ids:      {t_eval * 1e3:8.1f} ms  {t_ref / t_eval:6.1f} x  "
          f"score {fast.score:.15f}")
    print(f"RsnaEvaluator.score, categorical ids: {t_cat * 1e3:8.1f} ms  {t_ref / t_cat:6.1f} x")
    diff = abs(fast.score - ref_score)
    print(f"|score difference|:                   {diff:.3e}  ({'OK' if diff <= 1e-12 else 'MISMATCH'} at 1e-12)")

    cuts = np.linspace(0.0, 0.98, 50)
    sweep = evaluator.score_vs_threshold(cat, cuts)
    t_sweep = best_of(lambda: evaluator.score_vs_threshold(cat, cuts), 5)

    def per_cut() -> list[float]:
        score = cat["score"].to_numpy()
        return [evaluator.score(cat[score >= c]).score for c in cuts]

    t_per_cut = best_of(per_cut, 3)
    sweep_diff = float(np.nanmax(np.abs(sweep["score"].to_numpy() - np.array(per_cut()))))
    print(f"sweep over {len(cuts)} cuts, one pass:          {t_sweep * 1e3:8.1f} ms")
    print(f"sweep over {len(cuts)} cuts, scored per cut:    {t_per_cut * 1e3:8.1f} ms  "
          f"({t_per_cut / t_sweep:.1f} x the one pass)")
    print(f"max |sweep - per cut| score:          {sweep_diff:.3e}  "
          f"({'OK' if sweep_diff <= 1e-12 else 'MISMATCH'} at 1e-12)")
    if diff > 1e-12 or sweep_diff > 1e-12:
        sys.exit(1)


if __name__ == "__main__":
    main()
