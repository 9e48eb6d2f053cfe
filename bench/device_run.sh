#!/usr/bin/env bash
# The GPU benchmark in one command, for the lent GPU machine (bench/README.md, "GPU").
#
#   bash bench/device_run.sh                 # there: from the repository root, .whl/ carried
#   bash bench/device_run.sh --dry-run       # here: the same steps on the CPU, tiny sizes
#   bash bench/device_run.sh --dry-run --skip-wheel-check
#
# On the GPU machine (Python 3.12 with JAX for CUDA; no Keras, TensorFlow or audio libraries; no
# network) it installs the wheels of .whl/ into /tmp/site, then runs bench/bench_device.py on
# the full model within about 7 minutes (its --budget_s, plus a hard stop), which builds a
# synthetic feature cache in /tmp (random features: no audio travels). The summary JSON goes to
# $OUT/bench_device.json and the whole log to $OUT/device_run.log when OUT is set.
#
# The dry run checks that .whl/ holds exactly the wheels bench/fetch_device_wheels.sh lists and
# that pip would install them on CPython 3.12 for manylinux x86-64 (skipped, with a note, where
# there is no .whl/, as in CI), then runs bench_device.py --tiny with this machine's interpreter
# ($PYTHON, else .venv/bin/python, else python3) on the CPU, with TensorFlow made unimportable
# as it is on the GPU machine.

set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
check_wheels=1
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=1 ;;
        --skip-wheel-check) check_wheels=0 ;;
        *) echo "usage: bash bench/device_run.sh [--dry-run [--skip-wheel-check]]" >&2; exit 2 ;;
    esac
done

WHEEL_DIR="${DEVICE_WHEEL_DIR:-.whl}"  # DEVICE_WHEEL_DIR: another folder, for the tests of this check.
WHEEL_LIMIT_MB=60  # The whole carried tree may not pass 64 MiB.
# shellcheck source=bench/fetch_device_wheels.sh
source bench/fetch_device_wheels.sh  # DEVICE_WHEELS, and nothing run.

say() { echo "[device_run $(date +%H:%M:%S)] $*"; }

# Each wheel of DEVICE_WHEELS, one file each at that version, and pip's word that CPython 3.12
# on manylinux x86-64 takes them all; exits non-zero naming what is wrong.
check_wheel_dir() {
    local python="$1" spec name version files problems=0
    for spec in "${DEVICE_WHEELS[@]}"; do
        name="${spec%%==*}"
        version="${spec##*==}"
        files=$(find "$WHEEL_DIR" -maxdepth 1 -type f -iname "${name//-/_}-*.whl" | sort)
        if [[ -z "$files" ]]; then
            say "MISSING wheel $spec in $WHEEL_DIR (run: bash bench/fetch_device_wheels.sh)"; problems=1
        elif [[ $(wc -l <<<"$files") -gt 1 ]]; then
            say "MORE THAN ONE wheel of $name (pip stops on two versions):" $files; problems=1
        elif [[ "$(basename "$files")" != "${name//-/_}-${version}-"* ]]; then
            say "WRONG VERSION of $name: $(basename "$files"), expected $version"; problems=1
        fi
    done
    local file listed
    for file in "$WHEEL_DIR"/*.whl; do  # A stray wheel would be installed there too, over the image's own package.
        listed=0
        for spec in "${DEVICE_WHEELS[@]}"; do
            [[ "$(basename "$file" | cut -d- -f1 | tr 'A-Z-' 'a-z_')" == "$(tr 'A-Z-' 'a-z_' <<<"${spec%%==*}")" ]] && listed=1
        done
        (( listed )) || { say "NOT LISTED in bench/fetch_device_wheels.sh: $(basename "$file")"; problems=1; }
    done
    local size_kb
    size_kb=$(du -sk "$WHEEL_DIR" | cut -f1)
    say "$WHEEL_DIR: $(find "$WHEEL_DIR" -maxdepth 1 -type f -name '*.whl' | wc -l) wheels, $(awk "BEGIN {printf \"%.1f\", $size_kb / 1024}") MiB (limit ${WHEEL_LIMIT_MB} MiB)"
    if (( size_kb > WHEEL_LIMIT_MB * 1024 )); then
        say "TOO LARGE; largest:"; ls -S -l "$WHEEL_DIR" | head -5; problems=1
    fi
    (( problems )) && return 1
    "$python" -m pip install --isolated --dry-run --quiet --no-index --no-deps --ignore-installed --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --target "$(mktemp -d)" "$WHEEL_DIR"/*.whl || { say "pip would not install $WHEEL_DIR on CPython 3.12 manylinux x86-64"; return 1; }
    say "wheels OK: pip would install all on CPython 3.12, manylinux x86-64"
}

if (( dry_run )); then
    python="${PYTHON:-}"
    [[ -z "$python" && -x .venv/bin/python ]] && python=.venv/bin/python
    python="${python:-python3}"
    if (( ! check_wheels )); then
        say "wheel check skipped (--skip-wheel-check)"
    elif [[ ! -d "$WHEEL_DIR" ]]; then
        say "NOTE: no $WHEEL_DIR here (as in CI): wheel check skipped. Before a GPU run: bash bench/fetch_device_wheels.sh"
    else
        check_wheel_dir "$python" || exit 1
    fi
    workdir=$(mktemp -d)
    trap 'rm -rf "$workdir"' EXIT
    say "rehearsal on the CPU with $python (KERAS_BACKEND=jax, tiny sizes, tensorflow blocked)"
    KERAS_BACKEND=jax JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 \
        "$python" bench/bench_device.py --tiny --working_dir "$workdir/cache" --out "$workdir/bench_device.json" \
        --block_modules tensorflow,tf_keras
    rc=$?
    [[ $rc -eq 0 ]] && "$python" bench/bench_device.py --table "$workdir/bench_device.json"
    say "dry run finished, exit status $rc"
    exit $rc
fi

# The GPU run.
log=/dev/null
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    log="$OUT/device_run.log"
fi
{
    say "GPU run: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: none')"
    [[ -d "$WHEEL_DIR" ]] || { say "no $WHEEL_DIR: carry it (run's carry [\".whl\"]); fetch it with bash bench/fetch_device_wheels.sh"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEEL_DIR"/*.whl \
        || { say "pip install of $WHEEL_DIR failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache  # A second run on the same warm machine skips compiling.
    python3 -c "import keras, jax, soundfile, soxr, python_speech_features, batcher, train; print('imports OK: keras', keras.__version__, 'jax', jax.__version__, jax.devices())" \
        || say "an import failed (above): the benchmark goes on and reports what it cannot measure"
    timeout -k 10 440 python3 bench/bench_device.py --working_dir /tmp/hive_bench --require_gpu --budget_s 400
    rc=$?
    [[ -n "${OUT:-}" && -f "$OUT/bench_device.json" ]] && python3 bench/bench_device.py --table "$OUT/bench_device.json"
    say "finished, exit status $rc"
    exit $rc
} 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
