"""Command line of Hive-MTL: one verb per pipeline stage. Run `python cli.py --help`.

This module only parses options and calls library functions; the work lives in the modules.
"""

from __future__ import annotations

import logging
import sys

import click

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


if __name__ == "__main__":
    cli()
