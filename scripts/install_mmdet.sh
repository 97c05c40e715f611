#!/usr/bin/env bash
# Install the mmdetection backend into .venv: mmcv 2.1.0 built from its source release, then requirements-mmdet.txt.
#   scripts/install_mmdet.sh        (or `make mmdet`)
# mmdet 3.3.0 needs mmcv >= 2.0.0rc4, < 2.2.0, and mmcv 2.1.0 publishes no wheel for torch 2.14, so the first run
# compiles it (about 10 minutes on 2 cores) into a wheel cache outside the repository. Later runs install that wheel
# in seconds; a run that finds everything installed for the current torch does nothing.
# Environment:
#   CXRDET_WHEEL_CACHE  where built wheels are kept (default ~/.cache/cxrdet/wheels)
#   MAX_JOBS            parallel compiler processes (default 2)
#   CXRDET_MMCV_CUDA=1  also compile mmcv's CUDA ops (needs the CUDA toolkit torch was built with; not yet tried).
#                       The default wheel has CPU ops only: mmcv ops (nms, RoIAlign, ...) refuse CUDA tensors.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=$VENV/bin/python
MMCV_VERSION=2.1.0
# sha256 of mmcv-2.1.0.tar.gz as PyPI serves it, observed 2026-11-23 (pip also checks the index's own hash).
MMCV_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
# Build-only tools, installed in a throwaway venv rather than .venv: mmcv's setup.py imports pkg_resources (gone from
# setuptools 82, deprecated in 81), and the build runs before requirements-mmdet.txt pins that same setuptools into
# .venv (for mmengine's `mmdet::` config paths); ninja makes MAX_JOBS compile in parallel (without it torch compiles
# one file at a time).
BUILD_PINS=(setuptools==80.10.2 ninja==1.13.2)
CACHE=${CXRDET_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cxrdet/wheels}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }
# This machine's pip configuration names absent local indexes; drop that noise as the Makefile does.
pip_quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

[ -x "$PY" ] || die "$PY not found: run \`make setup\` first"
torch_version=$("$PY" -c "import torch; print(torch.__version__)") || die "torch is not importable from $PY"
py_tag=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
if [ "${CXRDET_MMCV_CUDA:-0}" = 1 ]; then
    variant=cuda
    build_env=(FORCE_CUDA=1)
else
    variant=cpu
    # setup.py compiles the CUDA ops whenever torch sees a GPU: hide it so the wheel does not depend on the machine.
    build_env=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES=)
fi
# The compiled ops link against torch's C++ ABI: one cached wheel per torch version, variant and Python.
wheel_dir=$CACHE/mmcv-$MMCV_VERSION-torch$torch_version-$variant-$py_tag
stamp=$VENV/.mmdet-installed
key="mmcv $MMCV_VERSION torch $torch_version $variant"
key+=" requirements-mmdet.txt $(sha256sum requirements-mmdet.txt | cut -c1-16)"

installed_versions_match() {
    "$PY" - "$MMCV_VERSION" <<'EOF' 2> /dev/null
import importlib.metadata as md
import sys

pins = dict(line.split("==") for line in open("requirements-mmdet.txt") if "==" in line and not line.startswith("#"))
pins["mmcv"] = sys.argv[1]
sys.exit(any(md.version(name) != version.strip() for name, version in pins.items()))
EOF
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && installed_versions_match; then
    echo "mmdet backend already installed ($key)"
    exit 0
fi

build_wheel() {
    local bpy src log
    # Global, not local: the EXIT trap may run after this function has returned.
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxrdet-mmcv.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    bpy=$tmp/venv/bin/python
    "$PY" -m venv "$tmp/venv"
    pip_quiet "$bpy" -m pip install -q "${BUILD_PINS[@]}"
    # The build venv sees .venv's packages (torch, mmengine) behind its own setuptools, so .venv itself is untouched.
    "$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
        > "$("$bpy" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/cxrdet-venv.pth"
    # pip runs setup.py for metadata even when only downloading, hence the build venv and no build isolation; hash
    # checking mode makes pip verify the archive before it runs any of it.
    echo "mmcv==$MMCV_VERSION --hash=sha256:$MMCV_SHA256" > "$tmp/mmcv-source.txt"
    pip_quiet "$bpy" -m pip download -q --no-deps --no-binary :all: --no-build-isolation --require-hashes \
        -r "$tmp/mmcv-source.txt" -d "$tmp"
    echo "$MMCV_SHA256  $tmp/mmcv-$MMCV_VERSION.tar.gz" | sha256sum --check --quiet - \
        || die "mmcv-$MMCV_VERSION.tar.gz does not have the expected sha256 $MMCV_SHA256"
    tar -xzf "$tmp/mmcv-$MMCV_VERSION.tar.gz" -C "$tmp"
    src=$tmp/mmcv-$MMCV_VERSION

    # The one change: torch 2.14's headers refuse C++ standards before C++20, and setup.py asks for C++17 on its
    # three non-Windows paths (CPU, MPS, nvcc).
    [ "$(grep -c "'-std=c++17'" "$src/setup.py")" = 3 ] \
        || die "mmcv $MMCV_VERSION setup.py lacks the 3 expected '-std=c++17' flags; review the C++20 patch"
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"

    mkdir -p "$CACHE"
    log=$CACHE/mmcv-$MMCV_VERSION-build.log
    echo "compiling mmcv $MMCV_VERSION for torch $torch_version ($variant ops, MAX_JOBS=${MAX_JOBS:-2}; 2 cores take"
    echo "about 10 minutes); log: $log"
    # -g0: debug info makes the build take over an hour. CFLAGS replaces Python's own "-g -O3" (torch compiles C++
    # with the C compiler flags); CXXFLAGS is set too for setuptools versions that split them.
    env "${build_env[@]}" PATH="$tmp/venv/bin:$PATH" CFLAGS="-g0 -O2" CXXFLAGS="-g0 -O2" \
        MAX_JOBS="${MAX_JOBS:-2}" MMCV_WITH_OPS=1 \
        "$bpy" -m pip wheel -v --no-deps --no-build-isolation -w "$tmp/wheel" "$src" > "$log" 2>&1 \
        || { tail -n 40 "$log" >&2; die "mmcv build failed; full log: $log"; }

    # Copy then rename, so an interrupted run never leaves a partial wheel where the next run looks for one.
    mkdir -p "$wheel_dir"
    local built
    built=$(ls "$tmp"/wheel/mmcv-"$MMCV_VERSION"-*.whl)
    cp "$built" "$wheel_dir/.partial"
    mv "$wheel_dir/.partial" "$wheel_dir/$(basename "$built")"
    rm -rf "$tmp"
    trap - EXIT
}

wheel=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl 2> /dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    build_wheel
    wheel=$(ls "$wheel_dir"/mmcv-"$MMCV_VERSION"-*.whl)
else
    echo "reusing $wheel"
fi

# -c requirements.txt: the mmdet extras never move the project's own pins (torch, numpy, mmengine, ...).
pip_quiet "$PY" -m pip install -q --disable-pip-version-check "$wheel" -r requirements-mmdet.txt -c requirements.txt
# The compiled ops must load against this torch, not only the Python files.
"$PY" -c "import torch; from mmcv.ops import nms; import mmdet; nms(torch.ones(1, 4).cumsum(1), torch.ones(1), 0.5)" \
    || die "mmcv $MMCV_VERSION installed but its compiled ops do not load; delete $wheel_dir to rebuild"
echo "$key" > "$stamp.tmp"
mv "$stamp.tmp" "$stamp"
echo "mmdet backend installed: mmcv $MMCV_VERSION ($variant ops, torch $torch_version)," \
    "$(grep '^mmdet==' requirements-mmdet.txt)"
