"""Run an offline bundle's notebook as Kaggle runs a code competition's: a fresh virtual environment, the network cut,
cxrdet and the bundled wheels installed from the bundle only, the notebook executed end to end (nbconvert).

    python scripts/run_bundle_offline.py BUNDLE DATA WORK

The fresh environment stands for Kaggle's image: it sees this interpreter's packages (a `.pth` path to a folder of
links to them) except cxrdet and every distribution the bundle carries (`configs/kaggle/offline_wheels.txt`), which
must come from the bundle's wheels. The notebook runs inside a new network namespace (`unshare -rn`, loopback up
for the kernel's sockets): nothing outside the machine can be reached. Writes WORK/submission.csv and
WORK/executed.ipynb; prints where cxrdet was imported from. Exit status 2 (and a reason) when the namespace cannot
be made here.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def bundled_names(bundle: Path) -> set[str]:
    """Normalised distribution names of the bundle's wheels (`name-version-...whl`)."""
    return {p.name.split("-")[0].lower().replace("_", "-") for p in (bundle / "wheels").glob("*.whl")}


def image_folder(target: Path, exclude: set[str]) -> Path:
    """A folder of links to this interpreter's site-packages entries, without those of the `exclude` distributions."""
    site = Path(sysconfig.get_paths()["purelib"])
    hidden: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in exclude:
            hidden |= {Path(str(f)).parts[0] for f in (dist.files or [])}  # its modules and .dist-info folder
    target.mkdir(parents=True, exist_ok=True)
    for entry in site.iterdir():
        if entry.name in hidden or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def main(bundle: Path, data: Path, work: Path) -> int:
    if shutil.which("unshare") is None:
        print("cannot cut the network here: no `unshare` (util-linux)", file=sys.stderr)
        return 2
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode:
        print(f"cannot cut the network here: `unshare -rn` fails ({probe.stderr.strip()})", file=sys.stderr)
        return 2
    bundle, data, work = bundle.resolve(), data.resolve(), work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    exclude = bundled_names(bundle) | {"cxrdet"}
    image = image_folder(work / "image-site-packages", exclude)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    python = work / "venv" / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (venv_site / "kaggle_image.pth").write_text(f"{image}\n")
    env = {**os.environ, "CXRDET_BUNDLE": str(bundle), "CXRDET_DATA": str(data), "CXRDET_WORK": str(work),
           "PIP_NO_INDEX": "1"}
    for key in ("CXRDET_HOME", "CXRDET_OUTPUTS", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(key, None)
    # The thread count the bundle's test predictions were made with: another sums floats in another order, and the
    # submission's bytes could differ from `cxrdet submit`'s (Kaggle's machine uses its own count).
    threads = json.loads((bundle / "bundle.json").read_text(encoding="utf-8")).get("torch_threads")
    if threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
        print(f"OMP_NUM_THREADS={threads}, as the bundle's test predictions were made", file=sys.stderr)
    command = ["unshare", "-rn", "sh", "-c", 'ip link set lo up 2>/dev/null || true; exec "$0" "$@"', str(python),
               "-m", "nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=7200",
               "--output", str(work / "executed.ipynb"), str(bundle / "inference.ipynb")]
    done = subprocess.run(command, env=env, cwd=work)
    if done.returncode:
        return done.returncode
    where = subprocess.run([str(python), "-c", "import cxrdet, ensemble_boxes; print(cxrdet.__file__); "
                            "print(ensemble_boxes.__file__)"], env=env, capture_output=True, text=True, check=True)
    print(json.dumps({"submission": str(work / "submission.csv"), "imported": where.stdout.split()}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
