"""TensorFlow's oneDNN CPU kernels off and on: training steps of the small model (a benchmark, not a test).

TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 or AMX units; cli.py
and the test suite turn them on everywhere (`precision.use_onednn_kernels`). This trains the same
initial weights on the same random batches (softmax head, Adam, float32, batch 96 of 160 x 64
windows) in one child process per setting, since TensorFlow reads TF_ENABLE_ONEDNN_OPTS once,
when it loads, and prints wall and CPU seconds a step and the losses of both.

    nice -n 5 python bench/bench_onednn.py --steps 10 --output bench/results/onednn.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from render_tables import results_path, results_record, write_results  # noqa: E402

SETTINGS = {"oneDNN off": "0", "oneDNN on": "1"}
WARMUP_STEPS = 2  # The first steps trace the training function.
NUM_CLASSES = 300


def child(steps: int, batch_size: int, model_size: str) -> dict:
    """Train `steps` timed steps after the warm-up ones in this process; its losses and seconds."""
    import keras
    import numpy as np

    from conv_models import DeepSpeakerModel

    keras.utils.set_random_seed(0)
    model = DeepSpeakerModel(batch_input_shape=(None, 160, 64, 1), include_softmax=True, num_speakers_softmax=NUM_CLASSES, model_size=model_size).m
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((batch_size, 160, 64, 1)).astype("float32"), rng.integers(0, NUM_CLASSES, batch_size)) for _ in range(4)]
    for step in range(WARMUP_STEPS):
        model.train_on_batch(*batches[step % len(batches)])
    losses, wall, cpu = [], time.perf_counter(), time.process_time()
    for step in range(steps):
        losses.append(float(model.train_on_batch(*batches[step % len(batches)])))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"s_per_step": wall / steps, "cpu_s_per_step": cpu / steps, "windows_per_cpu_s": batch_size * steps / cpu, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=96)
    parser.add_argument("--model_size", default="small", choices=["small", "full"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=results_path, help="Write the figures as JSON (bench/results/onednn.json).")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.batch_size, args.model_size)))
        return
    load = os.getloadavg()[0]
    rows = []
    for name, value in SETTINGS.items():
        env = os.environ | {"TF_ENABLE_ONEDNN_OPTS": value, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--batch_size", str(args.batch_size), "--model_size", args.model_size]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows.append({"path": name, "TF_ENABLE_ONEDNN_OPTS": value, **json.loads(result.stdout.splitlines()[-1])})
        print(f"{name:11s} {rows[-1]['s_per_step']:.2f} s a step, {rows[-1]['cpu_s_per_step']:.2f} CPU-s a step, "
              f"{rows[-1]['windows_per_cpu_s']:.1f} windows per CPU second, last loss {rows[-1]['losses'][-1]:.4f}")
    off, on = rows
    ratio = off["cpu_s_per_step"] / on["cpu_s_per_step"]
    gap = max(abs(a - b) for a, b in zip(off["losses"], on["losses"]))
    print(f"oneDNN on: {ratio:.2f}x fewer CPU seconds a step; largest loss gap {gap:.4f} over {args.steps} steps")
    if args.output:
        write_results(args.output, results_record("bench_onednn", load, {
            "mode": "train_steps", "model_size": args.model_size, "batch_size": args.batch_size, "steps": args.steps,
            "cpu_ratio": ratio, "largest_loss_gap": gap, "rows": rows}))


if __name__ == "__main__":
    main()
