#!/usr/bin/env bash
# Fetch into .whl/ the wheels that bench/device_run.sh installs on the GPU machine.
#
#     bash bench/fetch_device_wheels.sh            # needs PyPI; about 4 MB
#
# The GPU machine (see /work/.library/device/KINDS.md) runs Python 3.12 on x86-64 Linux with
# JAX, NumPy, SciPy, h5py, ml-dtypes, absl-py, rich, packaging, tqdm and typing-extensions, but
# no Keras, no TensorFlow and no audio libraries, and it reaches no package registry. So every
# package this project imports there and the image lacks travels as a wheel:
#
#   keras, namex, optree             Keras 3 and the two of its requirements the image lacks
#   soundfile, cffi, pycparser, soxr audio.py imports them at module top (batcher.py and
#   python_speech_features          train.py import audio.py); libsndfile is inside the wheel
#
# Versions are the ones of this repository's virtualenv, where the code is tested. Each one has
# a single version in .whl/: two versions of one package stop the whole install there.
# bench/device_run.sh sources this file for DEVICE_WHEELS (the check of its dry run) and runs
# nothing then.

DEVICE_WHEELS=(
    keras==3.15.1
    namex==0.1.0
    optree==0.20.0
    soundfile==0.14.0
    cffi==2.1.1
    pycparser==3.12
    soxr==1.1.0
    python_speech_features==0.6
)
# PyPI has python_speech_features as a source archive only: it is built here into a
# py3-none-any wheel (pure Python, so it installs on any Python 3).
DEVICE_WHEELS_BUILT_HERE=(python_speech_features)

fetch_device_wheels() {
    set -euo pipefail
    local python="${PYTHON:-python3}" dest="${1:-.whl}" spec name
    local platforms=(
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
    )
    mkdir -p "$dest"
    for spec in "${DEVICE_WHEELS[@]}"; do
        name="${spec%%==*}"
        if [[ " ${DEVICE_WHEELS_BUILT_HERE[*]} " == *" $name "* ]]; then
            "$python" -m pip wheel -q --no-deps --no-binary=:all: -w "$dest" "$spec"
        else
            "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                --implementation cp "${platforms[@]}" -d "$dest" "$spec"
        fi
    done
    ls -l "$dest"
    du -sh "$dest"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    cd "$(dirname "$0")/.."
    fetch_device_wheels "$@"
fi
