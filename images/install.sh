#!/bin/sh
# Install ampflow and what its steps need into a virtual environment.
# The Dockerfiles run this script, and tests/test_images.py runs the same script outside an engine,
# so the image's install is tested by construction, not by a copy of its commands.
#
#   VENV=/opt/ampflow WHEELS=/wheels TORCH_INDEX=https://download.pytorch.org/whl/cu128 sh images/install.sh
set -eu

VENV="${VENV:-/opt/ampflow}"
WHEELS="${WHEELS:-/wheels}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
# the steps (train, tracking), the KFP executor that runs components, the PyTorchJob client
EXTRAS="${EXTRAS:-train,tracking,kfp,kube}"
PIP="$VENV/bin/python -m pip --no-cache-dir --disable-pip-version-check"

# torch first and pinned, from the index of the image's flavour (CUDA or CPU), so that nothing later
# pulls another build
$PIP install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple "torch==2.13.0"
wheel="$(ls "$WHEELS"/ampflow-*.whl)"
$PIP install "${wheel}[${EXTRAS}]"
$PIP check
