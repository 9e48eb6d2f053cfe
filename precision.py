"""Which float types this machine computes well: the one place training and inference ask.

Training takes `precision` 'auto' (the fastest this machine does well: mixed_float16 on a GPU,
mixed_bfloat16 on a CPU that computes bfloat16 in hardware, float32 everywhere else), 'mixed'
(float16 or bfloat16 compute, refused where neither is native) or 'float32'. Inference takes
'auto', 'bfloat16' or 'float32' (`resolve_precision`). A CPU without native bfloat16 (most
laptops, AMD before Zen 4, Intel before Cooper Lake) would emulate it, slower than float32, so
'auto' never picks it there; only an explicit request refuses.

No model code lives here, so `train.py` and `inference.py` both import it without importing
each other. Keras is imported only to list devices.
"""

from __future__ import annotations

import os
from pathlib import Path

# /proc/cpuinfo flags of CPUs that compute bfloat16 in hardware (Intel Cooper Lake and Sapphire
# Rapids onwards, AMD Zen 4 onwards): where mixed_bfloat16 training and bfloat16 embedding pay.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
TRAINING_PRECISIONS = ("auto", "float32", "mixed")
INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")
CPU_INFO = Path("/proc/cpuinfo")


def use_onednn_kernels() -> None:
    """Turn on TensorFlow's oneDNN CPU kernels unless TF_ENABLE_ONEDNN_OPTS is set already (the user's choice stays).

    TensorFlow turns them on by itself only on CPUs with AVX-512 or AMX units; on the others (AMD
    EPYC before Zen 4, most laptops) a training step of the small model costs 1.8 times as much CPU
    time without them (bench/README.md, `bench_onednn.py`). TensorFlow reads the variable once,
    when it loads: call this before anything imports it (cli.py and the test suite do).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def read_cpu_flags() -> str:
    """This machine's /proc/cpuinfo text (its `flags` lines), or '' where there is none (macOS, Windows)."""
    return CPU_INFO.read_text() if CPU_INFO.is_file() else ""


def has_native_bfloat16(flags: str | None = None) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags (default: this one's) computes bfloat16 in hardware."""
    return bool(BFLOAT16_CPU_FLAGS & set((read_cpu_flags() if flags is None else flags).split()))


def _has_gpu(devices: list[str] | None) -> bool:
    if devices is None:
        import keras

        devices = keras.distribution.list_devices()
    return any(device.lower().startswith("gpu") for device in devices)


def mixed_precision_policy(devices: list[str] | None = None, cpu_flags: str | None = None) -> str:
    """mixed_float16 on a GPU; mixed_bfloat16 on a CPU with native bfloat16; else a clear error.

    The explicit request ('mixed', `--mixed_precision`): on a CPU float16 is emulated (slower
    than float32), while oneDNN runs bfloat16 on AVX512-BF16 and AMX units (2.17x the float32
    step of the small model on 2 Xeon cores, bench/results/training_precision.json).
    `devices` and `cpu_flags` default to this machine's (Keras devices, /proc/cpuinfo).
    """
    if _has_gpu(devices):
        return "mixed_float16"
    if has_native_bfloat16(cpu_flags):
        return "mixed_bfloat16"
    raise ValueError("precision 'mixed' (--mixed_precision): no GPU, and this CPU has no native bfloat16 (AVX512-BF16 or AMX) "
                     "or float16 support; train with --precision auto or float32")


def training_policy(precision: str, devices: list[str] | None = None, cpu_flags: str | None = None) -> str:
    """The Keras dtype policy that training `precision` ('auto', 'mixed', 'float32') means on this machine."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}; got {precision!r}")
    if precision == "float32":
        return "float32"
    try:
        return mixed_precision_policy(devices, cpu_flags)
    except ValueError:
        if precision == "mixed":
            raise
        return "float32"


def policy_reason(policy: str) -> str:
    """One line on why 'auto' chose `policy`, for the training log."""
    return {
        "mixed_float16": "float16 compute on the GPU",
        "mixed_bfloat16": "this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX)",
        "float32": "no GPU, and this CPU has no native bfloat16 (it would be emulated, slower than float32)",
    }[policy]


def check_precision(precision: str) -> str:
    """`precision` if it is an inference precision ('auto', 'float32', 'bfloat16'), else ValueError."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}; got {precision!r}")
    return precision


def resolve_precision(precision: str = "auto", cpu_flags: str | None = None, devices: list[str] | None = None, backend: str | None = None) -> str:
    """'float32' or 'bfloat16': what inference `precision` means on this machine.

    'auto' is bfloat16 where TensorFlow runs on a CPU that computes bfloat16 natively (the
    /proc/cpuinfo flags `avx512_bf16` or `amx_bf16`; oneDNN then runs the convolutions on those
    units). Everywhere else 'auto' is float32: older CPUs (bfloat16 would be emulated, slower),
    a GPU, and the JAX backend (neither measured in bfloat16 here). `cpu_flags`, `devices` and
    `backend` default to this machine's.
    """
    if check_precision(precision) != "auto":
        return precision
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if backend != "tensorflow" or _has_gpu(devices):
        return "float32"
    return "bfloat16" if has_native_bfloat16(cpu_flags) else "float32"
