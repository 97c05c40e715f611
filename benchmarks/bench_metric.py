"""RSNA metric: the vectorised `cxrdet.metrics.rsna` against a straightforward per-image Python loop.

On the real RSNA stage-2 label table (26,684 images) with simulated predictions (fixed seed: ground-truth boxes
jittered, some dropped, random false positives, random scores), prints the time of one full evaluation of each,
their ratio, both scores and their absolute difference (they must agree to 1e-9).

The plain loop (`reference_rsna_score`) is the tests' independent reference, in `tests/helpers/reference.py`.

Run: .venv/bin/python benchmarks/bench_metric.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.helpers
from tests.helpers.reference import reference_rsna_score, simulate_predictions  # noqa: E402


def main() -> None:
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
    print(f"real RSNA labels: {len(ids)} images, {len(gt)} boxes; simulated predictions: {len(pred)} boxes")

    t0 = time.perf_counter()
    fast = rsna_score(gt, pred, ids)
    t_fast = time.perf_counter() - t0
    evaluator = RsnaEvaluator(gt, ids)
    t0 = time.perf_counter()
    evaluator.score(pred)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_score, _ = reference_rsna_score(gt, pred, ids)
    t_ref = time.perf_counter() - t0

    print(f"cxrdet rsna_score (groups GT too):  {t_fast:8.3f} s  score {fast.score:.12f}  ({fast.n_images} images)")
    print(f"cxrdet RsnaEvaluator.score:         {t_eval:8.3f} s")
    print(f"per-image Python loop reference:    {t_ref:8.3f} s  score {ref_score:.12f}")
    print(f"speed-up (reference / rsna_score):  {t_ref / t_fast:8.1f} x")
    print(f"speed-up (reference / evaluator):   {t_ref / t_eval:8.1f} x")
    diff = abs(fast.score - ref_score)
    print(f"|score difference|:                 {diff:.3e}  ({'OK' if diff <= 1e-9 else 'MISMATCH'} at 1e-9)")
    if diff > 1e-9:
        sys.exit(1)


if __name__ == "__main__":
    main()
