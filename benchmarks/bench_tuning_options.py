"""Tuning options and per-fold calibration, measured: optimistic, honest and test score, and the selection's optimism.

For every ensemble config given (default: the demo's four, `scripts/demo.sh` run first) and every variant, a config
`<outputs>/bench_configs/<ensemble>__<variant>.py` inherits the ensemble's and adds the variant's keys; it is tuned
with its honest estimate (`cxrdet.ensemble.tune.tune`), submitted (`submit`) and, when test labels are given, scored
on them (the demo's synthetic test labels; a real competition hides them). Then, per variant, `cxrdet select`'s rule
chooses among that variant's ensembles: its choice, the nested-selection estimate and the selection's optimism, and
the chosen submission's test score beside the best single member's.

Variants (`--variants`, comma-separated): `default` (best trial), `top_k` (mean of the 10 best trials' values),
`sd` (objective - 1.0 x across-fold sd), `pruned` (a second study on the parameters of importance >= 0.05),
`calibrated` (quantile calibration of each fold model), `calibrated_sd` (both), `rate` (rate calibration),
`rate_sd` (rate calibration and the sd penalty).

Prints the table and writes it to `<outputs>/bench/tuning_options.json`.

Run, after the demo (same outputs folder):
    CXRDET_OUTPUTS=outputs .venv/bin/python benchmarks/bench_tuning_options.py \\
        --test-labels outputs/demo/data/synth_test_labels.csv --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

VARIANTS: dict[str, str] = {
    "default": "",
    "top_k": "tuning = dict(pick='top_k', top_k=10)",
    "sd": "tuning = dict(sd_penalty=1.0)",
    "pruned": "tuning = dict(importance_floor=0.05)",
    "calibrated": "calibration = 'quantile'",
    "calibrated_sd": "calibration = 'quantile'\ntuning = dict(sd_penalty=1.0)",
    "rate": "calibration = 'rate'",
    "rate_sd": "calibration = 'rate'\ntuning = dict(sd_penalty=1.0)",
}
DEMO = ("demo_fcos_tiny", "demo_atss_tiny", "demo_wbf", "demo_wbf_cls")


def variant_config(base: Path, variant: str, seed: int | None = None) -> Path:
    """The config of `base` with `variant`'s keys (and another sampler seed), under `<outputs>/bench_configs/`."""
    from cxrdet import paths

    folder = paths.outputs_dir() / "bench_configs"
    folder.mkdir(parents=True, exist_ok=True)
    tag = variant if seed is None else f"{variant}_s{seed}"
    path = folder / f"{base.stem}__{tag}.py"
    text = f"_base_ = {str(base.resolve())!r}\n{VARIANTS[variant]}\n" + (f"seed = {seed}\n" if seed is not None else "")
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def run_one(config: str, test_labels: str | None) -> dict[str, Any]:
    """Tune, submit and score one variant config (in a worker process)."""
    import optuna

    from cxrdet import paths
    from cxrdet.competitions import competition_of_labels
    from cxrdet.ensemble.spec import load_ensemble
    from cxrdet.ensemble.submit import submit
    from cxrdet.ensemble.tune import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_ensemble(config)
    start = time.perf_counter()
    result = tune(spec)
    seconds = time.perf_counter() - start
    sub = submit(spec, paths.outputs_dir() / "bench" / "submissions" / f"{spec.name}.csv")
    test = None
    if test_labels:
        comp = competition_of_labels(Path(test_labels))
        table = comp.read_labels(Path(test_labels))
        test = float(comp.score(table, sub.csv, table.image_ids, False, None)["score"])
    return {"ensemble": spec.name, "config": config, "optimistic": result.optimistic, "honest": result.honest,
            "honest_per_fold": result.honest_per_fold, "test": test, "tune_s": seconds,
            "n_tuned": len(result.best_params), "kept": result.kept}


def selection(configs: list[str], rows: dict[str, dict[str, Any]], rule: str) -> dict[str, Any]:
    """`cxrdet select`'s choice among one variant's ensembles, with its nested estimate and optimism."""
    from cxrdet.ensemble.problem import load_oof
    from cxrdet.ensemble.select import evaluator_scorer, load_candidate, same_data, select
    from cxrdet.ensemble.spec import load_ensemble

    specs = [load_ensemble(c) for c in configs]
    loaded = [load_candidate(s) for s in specs]
    same_data({c.name: r for c, r in loaded})
    oof = load_oof(specs[0])
    result = select([c for c, _ in loaded], sorted({int(k) for k in oof.image_fold}),
                    evaluator_scorer(oof.problem, oof.image_fold), rule)
    chosen = result.choice.name
    members = [c.name for c, _ in loaded if c.simple]
    best_member = max(members, key=lambda n: rows[n]["honest"]) if members else None
    return {"chosen": chosen, "reason": result.choice.reason, "chosen_honest": result.chosen_honest,
            "nested": result.nested, "optimism": result.optimism, "chosen_test": rows[chosen]["test"],
            "best_member": best_member, "best_member_honest": rows[best_member]["honest"] if best_member else None,
            "best_member_test": rows[best_member]["test"] if best_member else None}


def _variant_of(tag: str) -> str:
    """`calibrated_sd_s2` -> `calibrated_sd` (the variant without its seed)."""
    head, _, tail = tag.rpartition("_s")
    return head if head and tail.isdigit() else tag


def combine(files: list[Path]) -> None:
    """Mean (and sd over seeds) of every variant's figures from several runs' JSON files, as a Markdown table."""
    import numpy as np

    rows, picks = [], []
    for f in files:
        data = json.loads(f.read_text())
        for r in data["rows"]:
            base, _, tag = r["ensemble"].partition("__")
            rows.append({**r, "base": base, "variant": _variant_of(tag)})
        picks += [{**s, "variant": _variant_of(tag)} for tag, s in data["selection"].items()]

    def cell(values: list[float]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else "")

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    bases = list(dict.fromkeys(r["base"] for r in rows))
    print("| variant | ensemble | runs | optimistic | honest | test |\n|---|---|---|---|---|---|")
    for v in variants:
        for b in bases:
            got = [r for r in rows if r["variant"] == v and r["base"] == b]
            if got:
                print(f"| {v} | {b} | {len(got)} | {cell([r['optimistic'] for r in got])} | "
                      f"{cell([r['honest'] for r in got])} | {cell([r['test'] for r in got])} |")
    print("\n| variant | runs | chosen (times) | chosen honest | nested | optimism | chosen test | best member test |"
          "\n|---|---|---|---|---|---|---|---|")
    for v in variants:
        got = [s for s in picks if s["variant"] == v]
        names = ", ".join(f"{n} ({c})" for n, c in
                          name_counts([s["chosen"].split("__")[0] for s in got]))
        print(f"| {v} | {len(got)} | {names} | {cell([s['chosen_honest'] for s in got])} | "
              f"{cell([s['nested'] for s in got])} | {cell([s['optimism'] for s in got])} | "
              f"{cell([s['chosen_test'] for s in got])} | {cell([s['best_member_test'] for s in got])} |")


def name_counts(names: list[str]) -> list[tuple[str, int]]:
    """Each name with its count, most frequent first."""
    from collections import Counter

    return Counter(names).most_common()


def main() -> None:
    from cxrdet import paths
    from cxrdet.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path,
                        default=[paths.CONFIGS_DIR / "ensembles" / f"{n}.py" for n in DEMO])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--test-labels", default=None, help="labels of the test images (the demo's synthetic ones)")
    parser.add_argument("--jobs", type=int, default=1, help="tunings side by side (each single-threaded)")
    parser.add_argument("--rule", default="paired")
    parser.add_argument("--seeds", default="", help="comma-separated sampler seeds: each variant is tuned once per "
                        "seed (the tuning's own randomness, beside the option's effect); default the configs' seed")
    parser.add_argument("--json", type=Path, default=None, help="where the figures go (default "
                        "<outputs>/bench/tuning_options.json)")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="only summarise these earlier runs' JSON files (mean ± sd over seeds, Markdown)")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine)
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; expected some of {list(VARIANTS)}")
    seeds = [int(x) for x in args.seeds.split(",") if x] or [None]
    tags = [(v, seed) for v in variants for seed in seeds]
    configs = {f"{v}" if seed is None else f"{v}_s{seed}": [str(variant_config(c, v, seed)) for c in args.configs]
               for v, seed in tags}
    variants = list(configs)
    jobs = [c for v in variants for c in configs[v]]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run_one, jobs, [args.test_labels] * len(jobs)))
    rows = {r["ensemble"]: r for r in results}
    print(f"{'variant':<14} {'ensemble':<16} {'optimistic':>10} {'honest':>8} {'test':>8} {'tuned':>5} {'tune s':>7}")
    for v in variants:
        for c in configs[v]:
            r = rows[Path(c).stem]
            test = f"{r['test']:.4f}" if r["test"] is not None else "-"
            print(f"{v:<14} {Path(c).stem.split('__')[0]:<16} {r['optimistic']:>10.4f} {r['honest']:>8.4f} "
                  f"{test:>8} {r['n_tuned']:>5} {r['tune_s']:>7.0f}")
    chosen = {v: selection(configs[v], rows, args.rule) for v in variants}
    print(f"\nselection (rule {args.rule}): chosen, its honest score, nested-selection estimate, optimism, its test "
          "score; the best single member's honest and test score")
    for v, s in chosen.items():
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"
        print(f"{v:<14} {s['chosen'].split('__')[0]:<16} honest {fmt(s['chosen_honest'])} nested {fmt(s['nested'])} "
              f"optimism {s['optimism']:+.4f} test {fmt(s['chosen_test'])} | best member "
              f"{(s['best_member'] or '-').split('__')[0]} honest {fmt(s['best_member_honest'])} "
              f"test {fmt(s['best_member_test'])}")
        print(f"{'':<14} {s['reason']}")
    out = args.json or paths.outputs_dir() / "bench" / "tuning_options.json"
    write_json(out, {"rows": results, "selection": chosen, "rule": args.rule, "seconds": time.perf_counter() - start})
    print(f"\nwrote {out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
