"""precision.py: which float types training and inference use on which machine (pure rules, no model)."""

from __future__ import annotations

import pytest

from precision import has_native_bfloat16, mixed_precision_policy, resolve_precision, training_policy

CPU = ["cpu:0"]
GPU = ["gpu:0", "cpu:0"]
AMD_EPYC_WITHOUT_AVX512 = "fpu sse2 sse4_2 avx avx2 fma"
XEON_WITH_AMX = "fpu avx2 avx512f avx512_vnni amx_bf16 amx_tile"
COOPER_LAKE = "fpu avx2 avx512f avx512_bf16"


def test_native_bfloat16_is_read_from_the_avx512_bf16_or_amx_flags():
    assert has_native_bfloat16(XEON_WITH_AMX) and has_native_bfloat16(COOPER_LAKE)
    assert not has_native_bfloat16(AMD_EPYC_WITHOUT_AVX512)
    assert not has_native_bfloat16("fpu avx2 avx512f avx512_vnni")  # AVX-512 alone is not bfloat16.
    assert not has_native_bfloat16("")


def test_explicit_mixed_precision_is_float16_on_a_gpu_bfloat16_on_a_cpu_that_has_it_and_refused_otherwise():
    assert mixed_precision_policy(GPU, "") == "mixed_float16"
    assert mixed_precision_policy(CPU, COOPER_LAKE) == "mixed_bfloat16"
    assert mixed_precision_policy(CPU, XEON_WITH_AMX) == "mixed_bfloat16"
    with pytest.raises(ValueError, match="no native bfloat16"):
        mixed_precision_policy(CPU, AMD_EPYC_WITHOUT_AVX512)
    with pytest.raises(ValueError, match="no native bfloat16"):
        training_policy("mixed", CPU, AMD_EPYC_WITHOUT_AVX512)


def test_auto_training_precision_is_the_fastest_this_machine_does_well_and_never_refuses():
    assert training_policy("auto", GPU, "") == "mixed_float16"
    assert training_policy("auto", CPU, XEON_WITH_AMX) == "mixed_bfloat16"
    assert training_policy("auto", CPU, AMD_EPYC_WITHOUT_AVX512) == "float32"
    assert training_policy("float32", GPU, XEON_WITH_AMX) == "float32"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, mixed; got 'bfloat16'"):
        training_policy("bfloat16", CPU, XEON_WITH_AMX)


def test_auto_inference_precision_is_bfloat16_only_with_avx512_bf16_or_amx_flags():
    for flags in (AMD_EPYC_WITHOUT_AVX512, "fpu sse4_2 avx2 avx512f avx512_vnni", ""):
        assert resolve_precision("auto", cpu_flags=flags, devices=CPU, backend="tensorflow") == "float32"
    for flags in (COOPER_LAKE, XEON_WITH_AMX):
        assert resolve_precision("auto", cpu_flags=flags, devices=CPU, backend="tensorflow") == "bfloat16"


def test_auto_inference_precision_is_float32_with_a_gpu_or_on_jax_and_explicit_precisions_are_kept():
    assert resolve_precision("auto", cpu_flags=XEON_WITH_AMX, devices=GPU, backend="tensorflow") == "float32"
    assert resolve_precision("auto", cpu_flags=XEON_WITH_AMX, devices=CPU, backend="jax") == "float32"
    assert resolve_precision("bfloat16", cpu_flags=AMD_EPYC_WITHOUT_AVX512) == "bfloat16"
    assert resolve_precision("float32", cpu_flags=XEON_WITH_AMX) == "float32"
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16; got 'float16'"):
        resolve_precision("float16")


def test_the_precision_rules_import_no_model_code():
    """precision.py sits below train.py and inference.py: importing it must not pull either in (no cycle)."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, precision; print(sorted(m for m in ('train', 'inference', 'conv_models', 'keras') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("setting, on", [(None, True), ("0", False)])
def test_the_cli_turns_on_tensorflows_onednn_kernels_unless_the_user_chose(setting, on):
    """TensorFlow says on loading whether its oneDNN kernels are on (an INFO line); cli.py sets them before it loads."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"} | {"TF_CPP_MIN_LOG_LEVEL": "0"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    child = subprocess.run([sys.executable, "-c", "import cli, os, tensorflow; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"],
                           cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split()[-1] == (setting or "1")
    assert ("oneDNN custom operations are on" in child.stderr) == on
