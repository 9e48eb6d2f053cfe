"""Command line of Hive-MTL: one verb per pipeline stage. Run `python cli.py --help`.

This module only parses options and calls library functions; the work lives in the modules.
"""

from __future__ import annotations

import logging
import os
import sys

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out of the output.

from constants import VERSION


def _fail(error: Exception) -> None:
    """Turn a known user error into a one-line message and exit status 1 (no traceback)."""
    click.echo(f"Error: {error}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Hive-MTL: Deep Speaker embeddings (ResCNN, 64 filterbanks, 512-d) with multi-task heads.

    \b
    Typical pipeline:
      python cli.py build-mfcc-cache --working_dir W --audio_dir LibriSpeech
      python cli.py train --working_dir W --mode softmax
      python cli.py train --working_dir W --mode triplet
    or both phases in one go, building the cache when it is missing:
      python cli.py train --working_dir W --audio_dir LibriSpeech
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
def version() -> None:
    """Print the version of Hive-MTL and of the libraries it runs on."""
    import keras
    import numpy

    click.echo(f"hive-mtl {VERSION} (keras {keras.__version__}, backend {keras.backend.backend()}, numpy {numpy.__version__})")


@cli.command("build-mfcc-cache")
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Folder for the cache and everything trained from it.")
@click.option("--audio_dir", required=True, type=click.Path(file_okay=False), help="LibriSpeech folder, or <root>/<speaker>/**/*.wav|flac.")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
def build_mfcc_cache(working_dir: str, audio_dir: str, workers: int | None) -> None:
    """Compute 64 normalised filterbanks of every file into WORKING_DIR/audio-fbanks/.

    Entries already cached are skipped, so an interrupted build resumes where it stopped. Files
    that cannot be read (empty, silent, corrupt, too short) are skipped and listed at the end.
    """
    from audio import CorpusError, build_feature_cache

    try:
        report = build_feature_cache(audio_dir, working_dir, workers=workers)
    except (CorpusError, FileNotFoundError) as error:
        _fail(error)
    click.echo(report.summary())


@cli.command()
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Folder with the feature cache; runs go to checkpoints-<mode>/ inside.")
@click.option("--audio_dir", type=click.Path(file_okay=False), help="Build (or complete) the feature cache from this corpus first.")
@click.option("--mode", type=click.Choice(["reference", "softmax", "triplet", "mtl"]), default="reference", show_default=True,
              help="reference: softmax pre-training then triplet training; mtl: Hive-MTL speaker + gender heads.")
@click.option("--model_size", type=click.Choice(["full", "small"]), help="full: the reference ResCNN (default); small: fewer filters, for CPUs.")
@click.option("--epochs", type=int, help="Epochs (default 1000, with early stopping in softmax and mtl modes).")
@click.option("--steps_per_epoch", type=int, help="Batches per epoch (default: one pass over the utterances; triplet: 2000).")
@click.option("--validation_steps", type=int, help="Validation batches per epoch (default 10; 0 disables validation).")
@click.option("--batch_size", type=int, help="Windows per batch (default 96 = 32 triplets; triplet and mtl need a multiple of 3).")
@click.option("--learning_rate", type=float, help="Default: Adam 1e-3 (softmax, mtl), SGD 1e-2 (triplet).")
@click.option("--seed", type=int, help="Seed of batch sampling (default 0).")
@click.option("--held_out_speakers", help="Comma-separated speakers kept out of training, for speaker-disjoint evaluation.")
@click.option("--hard_negative", is_flag=True, default=None, help="Triplet mode: mine hard negatives from recent embeddings.")
@click.option("--initial_checkpoint", type=click.Path(dir_okay=False), help="Triplet mode: start from this .h5 (default: the softmax run's best.h5).")
@click.option("--speaker_loss_weight", type=float, help="Hive-MTL: weight of the speaker-identity loss (default 1).")
@click.option("--gender_loss_weight", type=float, help="Hive-MTL: weight of the gender loss (default 1).")
@click.option("--triplet_loss_weight", type=float, help="Hive-MTL: weight of the triplet loss on the embedding (default 0: off).")
@click.option("--input_workers", type=int, help="Threads reading batches ahead of the model (default 4).")
@click.option("--mixed_precision", is_flag=True, default=None, help="float16 compute on GPU.")
@click.option("--distribution", type=click.Choice(["none", "mirrored", "multi_worker", "data_parallel"]),
              help="mirrored / multi_worker: tf.distribute (TensorFlow backend); data_parallel: keras.distribution (JAX backend).")
def train(working_dir: str, audio_dir: str | None, mode: str, held_out_speakers: str | None, **options) -> None:
    """Train on the feature cache of WORKING_DIR; rerun the same command to resume.

    Each run directory (checkpoints-softmax/, checkpoints-triplets/, checkpoints-mtl/) holds
    config.json, speakers.json, best.h5 (loads by layer name), latest.weights.h5, state.json,
    metrics.csv and TensorBoard logs.
    """
    from audio import CorpusError, build_feature_cache
    from train import TrainConfig, TrainingError, train_reference_recipe
    from train import train as train_mode

    given = {name: value for name, value in options.items() if value is not None}
    if held_out_speakers:
        given["held_out_speakers"] = [s.strip() for s in held_out_speakers.split(",") if s.strip()]
    try:
        config = TrainConfig(mode="softmax" if mode == "reference" else mode, **given)
        config.validate()
        if mode == "reference":
            TrainConfig(**{**given, "mode": "triplet"}).validate()
        if audio_dir:
            click.echo(build_feature_cache(audio_dir, working_dir).summary())
        run_dirs = train_reference_recipe(working_dir, config) if mode == "reference" else [train_mode(working_dir, config)]
    except (CorpusError, TrainingError, ValueError, FileNotFoundError) as error:
        _fail(error)
    for directory in run_dirs:
        click.echo(f"run: {directory} (best checkpoint: {directory / 'best.h5'})")


if __name__ == "__main__":
    cli()
