#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on an offline GPU node: run this on a machine that
# reaches PyPI, then copy DIR beside the checkout on the node (default: ./wheels).
#
#   benchmarks/gpu_wheels.sh DIR [PACKAGE ...]
#
# Downloads ifv's requirements except torch and torchvision (the node's own are used), with
# pytest, as wheels for the node's Python (IFV_NODE_PYTHON, default 3.12) on x86_64 Linux,
# and everything they need. Name packages to fetch only those (and what they need), e.g.
# the ones gpu_check.sh reported missing.
set -euo pipefail
DIR=${1:?usage: benchmarks/gpu_wheels.sh DIR [PACKAGE ...]}
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYVER=${IFV_NODE_PYTHON:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
REQS=$(mktemp)
trap 'rm -f "$REQS"' EXIT
if [ $# -gt 0 ]; then
  printf '%s\n' "$@" > "$REQS"
else
  "$PY" "$REPO/benchmarks/requirements.py" "$REPO/pyproject.toml" > "$REQS"
fi
# PyPI has only source archives of these pure-Python requirements (hydra-core's parser):
# their wheels are built here, and the download below finds them in DIR
SOURCE_ONLY=("antlr4-python3-runtime==4.9.*")
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" "${SOURCE_ONLY[@]}"
"$PY" -m pip download --quiet --dest "$DIR" --find-links "$DIR" --only-binary=:all: \
  --implementation cp --python-version "$PYVER" --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -r "$REQS"
echo "wheels for Python $PYVER in $DIR ($(du -sh "$DIR" | cut -f1))"
