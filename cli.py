"""Command line of Hive-MTL: one verb per pipeline stage. Run `python cli.py --help`.

This module only parses options and calls library functions; the work lives in the modules.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import sys
import threading

import click

from precision import use_onednn_kernels

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out of the output.
use_onednn_kernels()  # Before TensorFlow loads.

# What TensorFlow's C++ side prints on every start regardless of TF_CPP_MIN_LOG_LEVEL (absl logs
# before absl::InitializeLog): oneDNN and CUDA-stub notices, and on a machine without a GPU the
# "failed call to cuInit" error line. None of it is about the user's command.
_LIBRARY_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\).*|[IW]\d{4} .*|E\d{4} .*failed call to cuInit.*)$")


def _filter_library_noise() -> None:
    """Route this process's stderr (fd 2) through a thread that drops _LIBRARY_NOISE lines.

    C++ libraries write to fd 2 directly, so filtering sys.stderr would not reach them.
    Everything else, Python tracebacks and warnings included, passes through unchanged. Nothing
    is filtered when sys.stderr is not fd 2: the command runs inside another program that
    captures it (click's CliRunner, a notebook), whose fd 2 is not the command's to redirect.
    """
    if not _stderr_is_this_process_fd_2():
        return
    read_end, write_end = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _LIBRARY_NOISE.match(line.decode(errors="replace").rstrip("\n")):
                    os.write(real_stderr, line)

    forwarder = threading.Thread(target=forward, daemon=True)
    forwarder.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # Closes the pipe's last write end: the forwarder drains and stops.
        forwarder.join(timeout=5)

    atexit.register(restore)


def _stderr_is_this_process_fd_2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


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
    then:
      python cli.py test-model --working_dir W --checkpoint_file W/checkpoints-triplets/best.h5
      python cli.py verify a.wav b.flac --checkpoint_file W/checkpoints-triplets/best.h5
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        _filter_library_noise()


@cli.command()
def version() -> None:
    """Print the version of Hive-MTL and of the libraries it runs on."""
    import keras
    import numpy

    click.echo(f"hive-mtl {VERSION} (keras {keras.__version__}, backend {keras.backend.backend()}, numpy {numpy.__version__})")


@cli.command("build-mfcc-cache")
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Folder for the cache and everything trained from it.")
@click.option("--audio_dir", type=click.Path(file_okay=False),
              help="Corpus folder: LibriSpeech, VoxCeleb, CN-Celeb, <root>/<speaker>/**/<audio>, or a Kaldi data directory.")
@click.option("--data_dir", type=click.Path(file_okay=False), help="Kaldi data directory (wav.scp, utt2spk or spk2utt; segments, spk2gender).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--genders", "genders_file", type=click.Path(dir_okay=False),
              help="Speaker table with 'speaker' and 'gender' (F/M) columns, tab or comma separated. Default: SPEAKERS.TXT, "
                   "speaker-info.txt or speakers.tsv found in or above the corpus.")
@click.option("--waveforms", "waveform_trim", type=click.Choice(["reference", "energy", "none"]),
              help="Also cache the decoded audio, trimmed this way, for training with augmentation (--trim of train).")
def build_mfcc_cache(working_dir: str, audio_dir: str | None, data_dir: str | None, workers: int | None, genders_file: str | None,
                     waveform_trim: str | None) -> None:
    """Compute 64 normalised filterbanks of every file into WORKING_DIR/audio-fbanks/.

    Entries already cached are skipped, so an interrupted build resumes where it stopped. Files
    that cannot be read (empty, silent, corrupt, too short) are skipped and listed at the end.
    Run it once per corpus with the same WORKING_DIR to train on several corpora together.
    """
    from corpus import CorpusError, kaldi_data_dir
    from feature_cache import build_feature_cache

    if (audio_dir is None) == (data_dir is None):
        raise click.UsageError("give one of --audio_dir and --data_dir")
    try:
        report = build_feature_cache(audio_dir or kaldi_data_dir(data_dir), working_dir, workers=workers, genders_file=genders_file, waveform_trim=waveform_trim)
    except (CorpusError, FileNotFoundError, ValueError) as error:
        _fail(error)
    click.echo(report.summary())


@cli.command()
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Folder with the feature cache; runs go to checkpoints-<mode>/ inside.")
@click.option("--audio_dir", "audio_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Build (or complete) the feature cache from this corpus first (repeatable: several corpora train together): "
                   "LibriSpeech, VoxCeleb, CN-Celeb, <root>/<speaker>/**/<audio>, or a Kaldi data directory (wav.scp).")
@click.option("--genders", "genders_file", type=click.Path(dir_okay=False), help="With --audio_dir: speaker table with 'speaker' and 'gender' columns.")
@click.option("--mode", type=click.Choice(["reference", "softmax", "triplet", "mtl"]),
              help="reference (default): softmax pre-training then triplet training; softmax: speaker-classification pre-training alone "
                   "(the reference's name: its head is a softmax Dense, or with --head aam an additive angular margin head); "
                   "triplet: triplet training alone; mtl: Hive-MTL speaker, gender and --tasks heads.")
@click.option("--model_size", type=click.Choice(["full", "small"]), help="full: the reference ResCNN (default); small: fewer filters, for CPUs.")
@click.option("--epochs", type=int, help="Epochs (default 1000, with early stopping in softmax and mtl modes).")
@click.option("--steps_per_epoch", type=int, help="Batches per epoch (default: one pass over the utterances; triplet: 2000).")
@click.option("--validation_steps", type=int, help="Validation batches per epoch (default 10; 0 disables validation).")
@click.option("--batch_size", type=int, help="Windows per batch (default 96 = 32 triplets; triplet and mtl need a multiple of 3).")
@click.option("--learning_rate", type=float, help="Default: Adam 1e-3 (softmax, mtl), SGD 1e-2 (triplet).")
@click.option("--seed", type=int, help="Seed of batch sampling (default 0).")
@click.option("--held_out_speakers", help="Comma-separated speakers kept out of training, for speaker-disjoint evaluation.")
@click.option("--calibration_speakers", help="Comma-separated speakers kept out of training and of every figure, for `calibrate-model` to fit on.")
@click.option("--hard_negative", is_flag=True, default=None, help="Triplet mode: mine hard negatives from recent embeddings.")
@click.option("--initial_checkpoint", type=click.Path(dir_okay=False), help="Triplet mode: start from this .h5 (default: the softmax run's best.h5).")
@click.option("--speaker_loss_weight", type=float, help="Hive-MTL: weight of the speaker-identity loss (default 1).")
@click.option("--gender_loss_weight", type=float, help="Hive-MTL: weight of the gender loss (default 1).")
@click.option("--triplet_loss_weight", type=float, help="Hive-MTL: weight of the triplet loss on the embedding (default 0: off).")
@click.option("--input_workers", type=int, help="Threads (or processes) reading batches ahead of the model (default 4).")
@click.option("--input_processes", is_flag=True, default=None,
              help="Read batches in --input_workers worker processes instead of threads: on a GPU host with many cores the "
                   "threads are bound by Python's interpreter lock (an H200 host, end to end: 1,815 windows/s with 4 threads, "
                   "5,650 with 4 processes; bench/README.md, GPU). Each process is a fork of the training process.")
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed"]),
              help="float32 (default); auto: the fastest this machine does well (float16 compute on a GPU, bfloat16 on a CPU with "
                   "AVX512-BF16 or AMX, else float32), said in one line and recorded in config.json; mixed: float16 or bfloat16, "
                   "refused where neither is native.")
@click.option("--mixed_precision", is_flag=True, default=None, help="The same as --precision mixed.")
@click.option("--distribution", type=click.Choice(["none", "mirrored", "multi_worker", "data_parallel"]),
              help="mirrored / multi_worker: tf.distribute (TensorFlow backend); data_parallel: keras.distribution (JAX backend).")
@click.option("--early_stopping_patience", type=int, help="Softmax, mtl: stop after this many epochs without improvement (default 20).")
@click.option("--reduce_lr_patience", type=int, help="Softmax, mtl: halve the learning rate after this many flat epochs (default 10).")
@click.option("--min_learning_rate", type=float, help="Floor of the learning-rate halving (default 1e-4).")
@click.option("--head", type=click.Choice(["softmax", "aam"]), help="Speaker head (softmax, mtl): the reference's softmax (default), or additive angular margin (ArcFace) on the embedding.")
@click.option("--aam_margin", type=float, help="AAM head: margin in radians (default 0.2).")
@click.option("--aam_scale", type=float, help="AAM head: logit scale (default 30).")
@click.option("--balanced_sampling/--no_balanced_sampling", default=None, help="Draw speakers uniformly, then their utterances, for softmax rows and triplets alike (default off: rows uniform over utterances).")
@click.option("--fixed_validation/--no_fixed_validation", default=None, help="Draw the validation batches once, not every epoch (default on).")
@click.option("--trim", type=click.Choice(["reference", "energy", "none"]), help="Silence trim of the audio training reads (default reference).")
@click.option("--pad", type=click.Choice(["zeros", "repeat"]), help="Fill windows of short clips with zeros (reference, default) or repeat their frames.")
@click.option("--speed_perturb", is_flag=True, default=None, help="Augment: speeds 0.9 and 1.1, each perturbed speaker a new class.")
@click.option("--noise_probability", type=float, help="Augment: chance of babble or coloured noise per window (default 0).")
@click.option("--band_limit_probability", type=float, help="Augment: chance of band limiting through 8 kHz per window (default 0).")
@click.option("--spec_mask_probability", type=float, help="Augment: chance of a time and a frequency mask per window (default 0).")
@click.option("--reverb_probability", type=float, help="Augment: chance of reverberation per window (default 0): rooms of --rir_dir, else simulated shoebox rooms.")
@click.option("--rir_dir", type=click.Path(file_okay=False), help="Room impulse responses for reverberation: RIRS_NOISES' simulated_rirs/ or any folder of audio.")
@click.option("--noise_dir", type=click.Path(file_okay=False),
              help="Noise for --noise_probability instead of babble and coloured noise: MUSAN (noise/ 0-15 dB, music/ 5-15 dB, "
                   "speech/ 13-20 dB babble of 3 to 7 files) or any folder of audio (0-15 dB).")
@click.option("--window_seconds",
              help="Training windows of variable length: shortest,longest in seconds, e.g. 0.5,2; one length per batch "
                   "(default: the reference's fixed 160 frames).")
@click.option("--snapshot_every", type=int, help="Keep snapshots/epoch_<n>.h5 every n epochs, for learning curves (default 0: none).")
@click.option("--validation_split", type=float,
              help="Validate on this share of each speaker's training utterances (e.g. 0.1), so the test utterances stay unseen by model selection "
                   "(default 0: validate on the test utterances, as the reference).")
@click.option("--tasks", "tasks_json", help='Hive-MTL: label tasks besides speaker and gender, as JSON or a JSON file, e.g. '
                                             '\'{"language": {"labels": {"LibriSpeech": "en", "CommonVoice-fa": "fa"}, "loss": "binary", "weight": 1}}\' '
                                             '(labels: corpus folder name -> label of its speakers; or per clip, "clips": a table with a path column and '
                                             '"column": its label column; "adversarial": true puts the head behind a gradient reversal).')
@click.option("--recipe", "recipe_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON recipe (e.g. recipes/pretrained_small.json): option names as keys, audio_dirs relative to the file; "
                   "options given on the command line win.")
def train(working_dir: str, audio_dirs: tuple[str, ...], genders_file: str | None, mode: str | None, held_out_speakers: str | None, calibration_speakers: str | None,
          recipe_file: str | None, tasks_json: str | None, **options) -> None:
    """Train on the feature cache of WORKING_DIR; rerun the same command to resume.

    Each run directory (checkpoints-softmax/, checkpoints-triplets/, checkpoints-mtl/) holds
    config.json, speakers.json, split.json, best.h5 (loads by layer name), final.h5 (after the last epoch), latest-<epoch>.weights.h5,
    state.json, metrics.csv and TensorBoard logs.
    """
    from corpus import CorpusError
    from feature_cache import build_feature_cache
    from train import train as train_mode, train_reference_recipe
    from train_config import TrainConfig, TrainingError

    if options.pop("mixed_precision"):
        if options["precision"] not in (None, "mixed"):
            _fail(ValueError(f"--mixed_precision is --precision mixed; it contradicts --precision {options['precision']}"))
        options["precision"] = "mixed"
    if options["window_seconds"] is not None:
        try:
            options["window_seconds"] = parse_window_seconds(options["window_seconds"])
        except ValueError as error:
            _fail(error)
    given = {name: value for name, value in options.items() if value is not None}
    if recipe_file:
        try:
            recipe = read_recipe(recipe_file)
        except ValueError as error:
            _fail(error)
        audio_dirs = audio_dirs or tuple(recipe.pop("audio_dirs", ()))
        recipe.pop("audio_dirs", None)
        mode = mode or recipe.pop("mode", None)
        recipe.pop("mode", None)
        given = {**recipe, **given}
    mode = mode or "reference"
    for name, speakers in (("held_out_speakers", held_out_speakers), ("calibration_speakers", calibration_speakers)):
        if speakers:
            given[name] = [s.strip() for s in speakers.split(",") if s.strip()]
    if tasks_json:
        given["tasks"] = read_tasks_option(tasks_json)
    try:
        config = TrainConfig(mode="softmax" if mode == "reference" else mode, **given)
        if mode == "reference":  # --hard_negative belongs to the triplet phase of the reference recipe.
            TrainConfig(**{**given, "mode": "softmax", "hard_negative": False}).validate()
            TrainConfig(**{**given, "mode": "triplet"}).validate()
        else:
            config.validate()
        for audio_dir in audio_dirs:
            waveform_trim = config.trim if config.uses_waveforms else None
            click.echo(build_feature_cache(audio_dir, working_dir, genders_file=genders_file, waveform_trim=waveform_trim).summary())
        run_dirs = train_reference_recipe(working_dir, config) if mode == "reference" else [train_mode(working_dir, config)]
    except (CorpusError, TrainingError, ValueError, FileNotFoundError) as error:
        _fail(error)
    except Exception as error:
        if not is_lost_worker_error(error):
            raise
        _fail(TrainingError(f"training stopped: a process of the cluster stopped or cannot be reached. TensorFlow says: {error}\n"
                            "The run directory holds the last finished epoch: run the same command on every worker again to resume."))
    for directory in run_dirs:
        click.echo(f"run: {directory} (best checkpoint: {directory / 'best.h5'})")


def is_lost_worker_error(error: Exception) -> bool:
    """TensorFlow's errors when a multi-worker collective loses a peer (killed, crashed, unreachable)."""
    kind = type(error)
    if not kind.__module__.startswith("tensorflow"):
        return False
    message = str(error)
    return kind.__name__ in ("UnavailableError", "AbortedError", "DeadlineExceededError") or any(
        sign in message for sign in ("Collective ops is aborted", "tasks are unhealthy", "Socket closed"))


def parse_window_seconds(value: str) -> list[float]:
    """--window_seconds "0.5,2" -> [0.5, 2.0]; TrainConfig checks the range."""
    try:
        seconds = [float(part) for part in value.split(",")]
    except ValueError:
        seconds = []
    if len(seconds) != 2:
        raise ValueError(f"--window_seconds: expected shortest,longest in seconds, e.g. 0.5,2; got {value!r}")
    return seconds


def read_tasks_option(value: str) -> dict:
    """--tasks: a JSON object, or the path of a file holding one; a relative clips table is taken relative to that file
    (else to the current folder)."""
    import json
    from pathlib import Path

    from tasks import resolve_clip_tables

    is_file = Path(value).is_file()
    text = Path(value).read_text() if is_file else value
    try:
        tasks = json.loads(text)
    except ValueError as error:
        _fail(ValueError(f"--tasks: neither a JSON object nor a JSON file ({error})"))
    if not isinstance(tasks, dict):
        _fail(ValueError("--tasks: expected a JSON object mapping task names to {labels or clips, loss, weight}"))
    return resolve_clip_tables(tasks, Path(value).parent if is_file else Path.cwd())


def read_recipe(path: str) -> dict:
    """A training recipe: TrainConfig fields (plus `mode` and `audio_dirs`; folders relative to the file)."""
    import dataclasses
    import json
    from pathlib import Path

    from tasks import resolve_clip_tables
    from train_config import TrainConfig, resolve_recipe_folders

    try:
        recipe = json.loads(Path(path).read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {"audio_dirs", "mode", "comment"}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {', '.join(unknown)} (keys are train options without the dashes)")
    recipe.pop("comment", None)
    recipe["audio_dirs"] = [str((Path(path).parent / d).resolve()) for d in recipe.get("audio_dirs", [])]
    recipe = resolve_recipe_folders(recipe, Path(path).parent)  # rir_dir, noise_dir: relative to the file, as audio_dirs.
    if "tasks" in recipe:
        recipe["tasks"] = resolve_clip_tables(recipe["tasks"], Path(path).parent)
    return recipe


# ----------------------------------------------------------------------------------------------
# The reference's command names, which its README and scripts run: each says what it is now.


@cli.command("train-model", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Folder with the feature cache, as for train.")
@click.option("--pre_training_phase/--no_pre_training_phase", default=False, show_default=True,
              help="With it: softmax pre-training (train --mode softmax); without: triplet training (train --mode triplet).")
@click.pass_context
def train_model(ctx: click.Context, working_dir: str, pre_training_phase: bool) -> None:
    """The reference's name for one training phase: runs `train --mode softmax` or `train --mode triplet`.

    Any other option is passed on to train (e.g. --model_size small): see `python cli.py train --help`.
    """
    import shlex

    if any(arg == "--mode" or arg.startswith("--mode=") for arg in ctx.args):
        raise click.UsageError("train-model sets the mode with --pre_training_phase; for another mode run: python cli.py train --mode MODE")
    args = ["--working_dir", working_dir, "--mode", "softmax" if pre_training_phase else "triplet", *ctx.args]
    name = "train-model --pre_training_phase" if pre_training_phase else "train-model"
    click.echo(f"{name} is the reference's name for: python cli.py train {shlex.join(args)}")
    with train.make_context("train", args, parent=ctx.parent) as train_context:
        train.invoke(train_context)


@cli.command("build-keras-inputs")
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Folder with the feature cache.")
@click.option("--counts_per_speaker", default="600,100", show_default=True,
              help="The reference's training and test windows per speaker; unused: training draws its windows as it runs.")
def build_keras_inputs(working_dir: str, counts_per_speaker: str) -> None:
    """The reference's step that wrote every training window to disk: not needed here, so it only says so."""
    from feature_cache import cache_dir

    cache = cache_dir(working_dir)
    click.echo(f"build-keras-inputs is not needed: training streams its batches from the feature cache of build-mfcc-cache ({cache}). "
               f"Next: python cli.py train-model --working_dir {working_dir} --pre_training_phase (= train --mode softmax).")
    if not cache.is_dir():
        click.echo(f"note: {cache} does not exist yet: run python cli.py build-mfcc-cache --working_dir {working_dir} --audio_dir CORPUS first.")


# ----------------------------------------------------------------------------------------------
# Using a trained model: embed, verify, enroll, identify. Files, checkpoints and profiles are
# checked before Keras starts, so bad input fails fast with one line.

from constants import (  # noqa: E402
    CALIBRATION_CROP_SECONDS, DCF_COST_FALSE_ALARM, DCF_COST_MISS, EMBEDDING_PAD_MODES, IDENTIFY_TOP, INFERENCE_BATCH_SIZE, VERIFY_PRIOR,
    VERIFY_THRESHOLD,
)

_checkpoint_option = click.option(
    "--checkpoint_file",
    help="Model to embed with: a reference Keras 2 .h5 (e.g. ResCNN_triplet_training_checkpoint_265.h5), a run's best.h5 "
         "(softmax, triplet or mtl), or a .keras file. Default: the shipped model, pretrained/model.h5.",
)


def _seconds_list(text: str, option: str) -> list[float]:
    """`1,2,4` -> [1.0, 2.0, 4.0]; a clear error for anything but positive numbers."""
    try:
        seconds = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"comma-separated seconds, e.g. 1,2,4; got {text!r}", param_hint=option) from None
    if any(not value > 0 for value in seconds):
        raise click.BadParameter(f"every duration must be a positive number of seconds; got {text!r}", param_hint=option)
    return seconds


def _checkpoint(checkpoint_file: str | None) -> str:
    """The given checkpoint, or the shipped model when none is given."""
    from inference import pretrained_checkpoint

    if checkpoint_file:
        return checkpoint_file
    try:
        return str(pretrained_checkpoint())
    except FileNotFoundError as error:
        _fail(error)
_batch_size_option = click.option("--batch_size", type=click.IntRange(min=1), default=INFERENCE_BATCH_SIZE, show_default=True,
                                  help="160-frame windows per model call.")
_precision_option = click.option("--precision", type=click.Choice(["float32", "bfloat16", "auto"]), default="float32", show_default=True,
                                 help="Arithmetic of the model. bfloat16: about twice as fast on CPUs with AVX512-BF16 or AMX (Intel Xeon "
                                      "Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), embeddings within a cosine of about "
                                      "0.9999 of float32's; auto: bfloat16 where TensorFlow runs on such a CPU, else float32.")
@cli.command("test-model")
@click.option("--working_dir", type=click.Path(file_okay=False),
              help="Folder with the feature cache the model was trained on (for the reference protocol and training-speaker figures; optional).")
@click.option("--checkpoint_file", type=click.Path(dir_okay=False), help="best.h5 of a run, a reference .h5, or a .keras file. Default: the shipped model.")
@click.option("--eval_audio_dir", "eval_audio_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Corpus of speakers unseen in training to draw trials from (repeatable): each is scored on its own, named by its folder, "
                   "then all pooled. Default: the run's held-out speakers.")
@click.option("--trials", "trials_files", multiple=True, type=click.Path(dir_okay=False),
              help="Published trial list to score instead (repeatable, each scored on its own): VoxCeleb's veri_test2.txt, list_test_all2.txt, "
                   "list_test_hard2.txt (label path1 path2) or CN-Celeb's eval/lists/trials.lst (enroll_id test_path label, enroll.lst beside it).")
@click.option("--trials_root", type=click.Path(file_okay=False, exists=True),
              help="Folder the lists' paths are relative to. Default: VoxCeleb, the list's folder or its wav/; CN-Celeb, eval/.")
@click.option("--num_trials", type=int, help="Sample this many trials, half same-speaker (default: all pairs).")
@click.option("--window", type=click.Choice(["mean", "random"]), default="mean", show_default=True, help="Embedding of a trial file: mean over sliding windows, or one random window.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Write score histograms, a DET curve and an embedding projection (PNG) here.")
@click.option("--output", type=click.Path(dir_okay=False), help="JSON of every figure (default: test-model.json beside the checkpoint).")
@click.option("--score_norm", type=click.Choice(["none", "mean", "asnorm"]), default="none", show_default=True,
              help="Normalise each corpus's scores against the cohort beside the checkpoint (cohort.npy, `build-cohort`): "
                   "mean-centring, or adaptive s-norm over the top 50 cohort scores.")
@click.option("--durations", default="", help="Also score each corpus on centred crops of every file of these seconds, e.g. 1,2,4 "
                                               "(of the front end's frames after the trim; a file no longer is scored whole).")
@_precision_option
def test_model(working_dir: str | None, checkpoint_file: str | None, eval_audio_dirs: tuple[str, ...], trials_files: tuple[str, ...], trials_root: str | None,
               num_trials: int | None, window: str, seed: int, plots_dir: str | None, output: str | None, score_norm: str, durations: str,
               precision: str) -> None:
    """Score a checkpoint: the reference's protocol and speaker-disjoint trials.

    \b
    Prints the reference's line (1 positive and 99 negatives per test speaker, threshold grid),
    then EER and minDCF on trials between speakers never seen in training: one line per held-out
    corpus (trials among its own speakers), then the pooled line (all corpora together; with
    --trials, each list alone, as published), then the gender accuracy of a probe on the embedding and, for a
    Hive-MTL checkpoint, of its heads.
    """
    from pathlib import Path

    from audio import AudioError
    from corpus import CorpusError
    from test import evaluate_checkpoint

    checkpoint_file = _checkpoint(checkpoint_file)
    try:
        report = evaluate_checkpoint(working_dir, checkpoint_file, eval_audio_dirs, trials_files, num_trials, window, seed, plots_dir, precision=precision,
                                     trials_root=trials_root, crop_seconds=_seconds_list(durations, "--durations"), score_norm=score_norm)
    except (AudioError, CorpusError, ValueError, FileNotFoundError) as error:
        _fail(error)
    if report.reference:
        click.echo(report.reference["line"])
    for line in report.verification_lines():
        click.echo(line)
    for name, value in report.heads.items():
        click.echo(f"{name.replace('_', ' ')} = {value:.3f}")
    for task, counts in report.unseen_labels.items():
        click.echo(f"{task} of the unseen speakers: " + ", ".join(f"{label} {count}" for label, count in counts.items()))
    for task, clips in report.clip_predictions.items():
        labels = clips["labels"]
        click.echo(f"{task} of {len(labels)} clips of {len(set(clips['speakers']))} unseen speakers: "
                   + ", ".join(f"{label} {labels.count(label)}" for label in sorted(set(labels))))
    if score_norm != "none":
        click.echo(f"scores normalised with {score_norm}; no Cllr or actual DCF: the calibration was fitted on raw scores")
    else:
        click.echo(f"calibration: {report.calibration['description']}" if report.calibration
                   else "no calibration.json beside the checkpoint: no Cllr or actual DCF (fit one with `cli.py calibrate-model`)")
    for note in report.notes:
        click.echo(f"note: {note}")
    written = report.to_json(output or Path(checkpoint_file).parent / "test-model.json")
    click.echo(f"figures written to {written}")


@cli.command()
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False), help="Recipe file, e.g. recipes/mtl_vs_single.json.")
@click.option("--working_dir", required=True, type=click.Path(file_okay=False), help="Feature cache and one run folder per configuration and seed.")
@click.option("--readme", type=click.Path(dir_okay=False), help="Also put the results table into this README between <!-- MARKER --> markers.")
@click.option("--marker", default="mtl-results", show_default=True, help="Name of the README markers around the table.")
def experiment(config_file: str, working_dir: str, readme: str | None, marker: str) -> None:
    """Train and score every configuration x seed of a recipe; write the CSV, the table and the plot.

    Runs that finished are skipped when the command runs again.
    """
    from corpus import CorpusError
    from experiment import results_table, run_experiment, update_readme_table
    from train_config import TrainingError

    try:
        csv_path = run_experiment(config_file, working_dir)
    except (CorpusError, TrainingError, ValueError, FileNotFoundError) as error:
        _fail(error)
    click.echo(results_table(csv_path))
    click.echo(f"rows: {csv_path}")
    if readme:
        update_readme_table(csv_path, readme, marker)


@cli.command("results-table")
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False), help="CSV written by the experiment verb.")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False), help="Replace the table between <!-- MARKER --> markers in this file.")
@click.option("--marker", default="mtl-results", show_default=True, help="Name of the README markers around the table.")
@click.option("--answer", "answer_csv", type=click.Path(exists=True, dir_okay=False),
              help="Also the answer table (<name>_answer.csv: each configuration minus its baseline, with intervals and a verdict), "
                   "between <!-- MARKER-answer --> markers.")
def results_table_command(csv_path: str, readme: str | None, marker: str, answer_csv: str | None) -> None:
    """Print the Markdown table (mean ± std over seeds) of an experiment's CSV, and its answer table if given."""
    from experiment import answer_table, replace_marked_section, results_table, update_readme_table

    click.echo(results_table(csv_path))
    if answer_csv:
        click.echo("\n" + answer_table(answer_csv))
    if readme:
        update_readme_table(csv_path, readme, marker)
        if answer_csv:
            replace_marked_section(readme, f"{marker}-answer", answer_table(answer_csv))


@cli.command("learning-curve")
@click.option("--run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="A run trained with --snapshot_every.")
@click.option("--eval_audio_dir", "eval_audio_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Held-out corpus (repeatable); each is scored on its own.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="CSV to write, e.g. results/learning_curve.csv (a PNG is written beside it).")
def learning_curve_command(run_dir: str, eval_audio_dirs: tuple[str, ...], output: str) -> None:
    """EER per held-out corpus of every snapshot of a run, against training windows (CSV and PNG)."""
    from model_card import learning_curve
    from plots import plot_learning_curve

    try:
        csv_path = learning_curve(run_dir, list(eval_audio_dirs), output)
    except (OSError, ValueError) as error:
        _fail(error)
    png = plot_learning_curve(csv_path, csv_path.with_suffix(".png"))
    click.echo(f"wrote {csv_path} and {png}")


@cli.command("ship-model")
@click.option("--checkpoint_file", required=True, type=click.Path(exists=True, dir_okay=False), help="best.h5 of a run (its folder holds config.json).")
@click.option("--eval_audio_dir", "eval_audio_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Held-out corpus the card reports (repeatable). Nothing shipped is chosen on it.")
@click.option("--output_dir", default="pretrained", show_default=True, type=click.Path(file_okay=False), help="Folder of the shipped model.")
@click.option("--training_corpus", "training_corpora", multiple=True, required=True, help="Name of a training corpus, for the card (repeatable).")
@click.option("--command", "retrain_command", required=True, help="The one command that retrains the model, for the card.")
@click.option("--train_seconds", type=float, help="Training wall time, when the run's state.json does not record it.")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False), help="Also put the figures table into this README between <!-- pretrained-model --> markers.")
@click.option("--embedding_pad", type=click.Choice(["auto", *EMBEDDING_PAD_MODES]), default="auto", show_default=True,
              help="How to embed clips shorter than a window: auto chooses the padding with the lowest mean EER on the calibration "
                   f"split ({', '.join(f'{s:g}' for s in CALIBRATION_CROP_SECONDS)} s crops and whole files; the training padding on a tie); "
                   "the card records the choice and, "
                   "where it differs from the training padding, the figures with both.")
@click.option("--working_dir", type=click.Path(exists=True, file_okay=False),
              help="Feature cache the run trained from: its calibration speakers and its training speakers (the cohort). "
                   "Default: the folder above the run's.")
@click.option("--calibration_audio_dir", "calibration_audio_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Fit the calibration on the speakers of this folder (repeatable), for a run trained without --calibration_speakers: "
                   "speakers neither trained on nor in any --eval_audio_dir. Default: the run's calibration speakers.")
@click.option("--durations", default=",".join(f"{s:g}" for s in CALIBRATION_CROP_SECONDS), show_default=True,
              help="The card's figures also on centred crops of every file of these seconds ('' for none).")
def ship_model_command(checkpoint_file: str, eval_audio_dirs: tuple[str, ...], output_dir: str, training_corpora: tuple[str, ...],
                       retrain_command: str, train_seconds: float | None, readme: str | None, embedding_pad: str | None, working_dir: str | None,
                       calibration_audio_dirs: tuple[str, ...], durations: str) -> None:
    """Package a run's checkpoint as the shipped model: model.h5, config.json, calibration.json, cohort.npy, model_card.json, README.md.

    The calibration is fitted on the speakers the run set aside for it (train --calibration_speakers), or on
    --calibration_audio_dir; without either, shipping is refused: nothing is chosen on the corpora the card scores.
    The cohort is the run's training speakers. The card's figures are measured on the shipped files.
    """
    import json

    from constants import MODEL_CARD_FILE_NAME
    from experiment import replace_marked_section
    from model_card import figures_table, ship_model

    crop_seconds = _seconds_list(durations, "--durations")
    try:
        output = ship_model(checkpoint_file, list(eval_audio_dirs), output_dir, retrain_command, list(training_corpora), train_seconds, embedding_pad,
                            working_dir, calibration_audio_dirs, crop_seconds)
        if readme:
            replace_marked_section(readme, "pretrained-model", figures_table(json.loads((output / MODEL_CARD_FILE_NAME).read_text())))
    except (OSError, ValueError) as error:
        _fail(error)
    click.echo((output / "README.md").read_text())


@cli.command("build-cohort")
@_checkpoint_option
@click.option("--audio_dir", "audio_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of training speakers (repeatable); each speaker's files make one cohort row. Not the speakers of any test figure.")
@_precision_option
def build_cohort_command(checkpoint_file: str | None, audio_dirs: tuple[str, ...], precision: str) -> None:
    """Write cohort.npy beside the checkpoint, for --score_norm mean or asnorm."""
    from audio import AudioError
    from corpus import CorpusError, index_corpus
    from score_norm import build_cohort

    checkpoint_file = _checkpoint(checkpoint_file)
    try:
        speakers: dict[str, list] = {}
        for directory in audio_dirs:
            for speaker, utterances in index_corpus(directory).utterances_by_speaker().items():
                speakers.setdefault(speaker, []).extend(u.path for u in utterances)
        path = build_cohort(checkpoint_file, speakers, precision)
    except (AudioError, CorpusError, ValueError, FileNotFoundError) as error:
        _fail(error)
    click.echo(f"cohort of {len(speakers)} speakers written to {path}")


@cli.command("card-durations")
@click.option("--results", "results_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="test-model's JSON of the shipped model, written with --durations (e.g. results/pretrained_durations.json).")
@click.option("--pretrained_dir", default="pretrained", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--note", default="", help="A sentence the card prints under the table (what the figures are, where they are not speaker-disjoint).")
@click.option("--readme", type=click.Path(exists=True, dir_okay=False),
              help="Also put the table into this README between <!-- pretrained-durations --> markers, and the score normalisations "
                   "measured beside it (model_card.SCORE_NORM_RESULTS) between <!-- pretrained-score-norm --> markers.")
def card_durations(results_file: str, pretrained_dir: str, note: str, readme: str | None) -> None:
    """Put the figures by duration and the calibration into the shipped model's card and render its README again."""
    from pathlib import Path

    from experiment import replace_marked_section
    from model_card import duration_table, record_duration_figures, score_norm_table

    try:
        card = record_duration_figures(pretrained_dir, results_file, note)
        if readme:
            replace_marked_section(readme, "pretrained-durations", duration_table(card["by_duration"]))
            replace_marked_section(readme, "pretrained-score-norm", score_norm_table(Path(results_file).parent))
    except (OSError, ValueError, KeyError) as error:
        _fail(error)
    click.echo(duration_table(card["by_duration"]))


@cli.command()
@click.option("--checkpoint_file", type=click.Path(dir_okay=False), help="best.h5 of a run, a reference .h5, or a .keras file. Default: the shipped model.")
@click.option("--output_dir", required=True, type=click.Path(file_okay=False),
              help="New folder for saved_model/, embedding.tflite, embedding_int8.tflite and export.json.")
@click.option("--tflite/--no-tflite", default=True, show_default=True, help="Also convert to TensorFlow Lite.")
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="With --tflite, also embedding_int8.tflite: int8 weights (dynamic-range quantisation), a quarter of the size.")
def export(checkpoint_file: str, output_dir: str, tflite: bool, int8: bool) -> None:
    """Export the embedding model as a SavedModel (and TFLite) that takes raw 16 kHz PCM.

    Silence trim, filterbanks, normalisation, sliding windows and their mean all run in the
    graph: feed float32 samples of any length, get the 512-d embedding. Needs TensorFlow.
    """
    from inference import inspect_checkpoint

    checkpoint_file = _checkpoint(checkpoint_file)
    try:
        inspect_checkpoint(checkpoint_file)  # Fail fast, before TensorFlow loads.
        from export import export_embedding_model

        exported = export_embedding_model(checkpoint_file, output_dir, tflite, int8)
    except (OSError, ValueError) as error:
        _fail(error)
    for path in (exported.saved_model, exported.tflite, exported.tflite_int8, exported.metadata):
        if path is not None:
            click.echo(f"wrote {path}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


_profiles_option = click.option("--profiles", "profiles_path", required=True, type=click.Path(dir_okay=False),
                                help="Profiles store P.npz (with its index P.json beside it).")


@cli.command("embed")
@click.argument("files_or_dirs", nargs=-1, required=True)
@_checkpoint_option
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="NPZ to write: embeddings (n, 512) float32 and paths (n,).")
@click.option("--window", type=click.Choice(["mean", "random"]), default="mean", show_default=True,
              help="mean: whole utterance, the mean of sliding 160-frame windows; random: one random 160-frame window, as the reference.")
@_batch_size_option
@_precision_option
def embed_command(files_or_dirs: tuple[str, ...], checkpoint_file: str | None, output: str, window: str, batch_size: int, precision: str) -> None:
    """Embed audio FILES_OR_DIRS (folders: every audio file inside, recursively) into an NPZ of 512-d unit vectors."""
    from inference import Embedder, expand_audio_paths, inspect_checkpoint, save_embeddings

    checkpoint_file = _checkpoint(checkpoint_file)
    try:
        paths = expand_audio_paths(files_or_dirs)
        inspect_checkpoint(checkpoint_file)
        embedder = Embedder.from_checkpoint(checkpoint_file, batch_size, precision=precision)
        embeddings = embedder.embed_files(paths, window)
        written = save_embeddings(output, embeddings, paths, checkpoint=checkpoint_file, window=window, precision=embedder.precision)
    except (OSError, ValueError) as error:
        _fail(error)
    click.echo(f"embedded {_count(len(paths), 'file')} ({window} window, {checkpoint_file}) -> {written}")


@cli.command("verify")
@click.argument("file_a")
@click.argument("file_b")
@_checkpoint_option
@click.option("--prior", type=float, default=VERIFY_PRIOR, show_default=True, help="Prior probability that the two files hold the same speaker.")
@click.option("--cost_miss", type=float, default=DCF_COST_MISS, show_default=True, help="Cost of rejecting the same speaker.")
@click.option("--cost_fa", type=float, default=DCF_COST_FALSE_ALARM, show_default=True, help="Cost of accepting another speaker.")
@click.option("--threshold", type=float,
              help="Same speaker when the cosine score is at least this, overriding the calibrated decision. Without a calibration.json "
                   f"beside the checkpoint the default is {VERIFY_THRESHOLD}, which is tuned to no model: fit a calibration with "
                   "`python cli.py calibrate-model` on speakers set aside for it.")
@click.option("--score_norm", type=click.Choice(["none", "mean", "asnorm"]), default="none", show_default=True,
              help="Normalise the score against the cohort beside the checkpoint (cohort.npy); then give --threshold on the normalised score.")
@_batch_size_option
@_precision_option
def verify_command(file_a: str, file_b: str, checkpoint_file: str | None, prior: float, cost_miss: float, cost_fa: float, threshold: float | None,
                   score_norm: str, batch_size: int, precision: str) -> None:
    """Say whether FILE_A and FILE_B hold the same speaker: cosine score of their whole-utterance embeddings.

    With a calibration beside the checkpoint (calibration.json, `calibrate-model`), also the score's
    log-likelihood ratio (given both files' durations) and the probability of the same speaker at
    --prior, deciding at the Bayes threshold of --prior, --cost_miss and --cost_fa.

    \b
    python cli.py verify samples/PhilippeRemy/PhilippeRemy_001.wav samples/PhilippeRemy/PhilippeRemy_002.wav
    """
    import numpy as np

    from calibration import decide, read_calibration
    from inference import Embedder, audio_file, inspect_checkpoint
    from score_norm import normalised_scores, read_cohort
    from verification import EmbeddingsOnce

    checkpoint_file = _checkpoint(checkpoint_file)
    if score_norm != "none" and threshold is None:
        _fail(ValueError(f"--score_norm {score_norm}: give --threshold; normalised scores have neither a calibration nor a default threshold"))
    try:
        paths = [str(audio_file(file_a)), str(audio_file(file_b))]
        inspect_checkpoint(checkpoint_file)
        calibration = read_calibration(checkpoint_file) if score_norm == "none" else None
        cohort = read_cohort(checkpoint_file) if score_norm != "none" else None
        embed = EmbeddingsOnce(Embedder.from_checkpoint(checkpoint_file, batch_size, precision=precision), "mean", np.random.default_rng(0))
        embeddings = embed(paths)
        score = float(normalised_scores(embeddings[:1], embeddings[1:], score_norm, cohort)[0])
        decision = decide(score, (embed.seconds[paths[0]], embed.seconds[paths[1]]), calibration, prior, cost_miss, cost_fa, threshold,
                          VERIFY_THRESHOLD)
    except (OSError, ValueError) as error:
        _fail(error)
    if calibration is None and score_norm == "none":
        click.echo("no calibration.json beside the checkpoint: deciding on the cosine score alone, without an LLR", err=True)
    click.echo(decision.line())


@cli.command("calibrate-model")
@_checkpoint_option
@click.option("--working_dir", type=click.Path(file_okay=False), help="Feature cache of the run: fit on the speakers it set aside (--calibration_speakers).")
@click.option("--audio_dir", "audio_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Fit on the speakers of this folder instead (repeatable): speakers neither trained on nor scored by any figure.")
@click.option("--speakers", help="Comma-separated: only these speakers of the folders or of the run.")
@click.option("--description", required=True, help="What the speakers are, for calibration.json and the model card, e.g. 'EmoDB, 10 actors'.")
@click.option("--durations", default=",".join(f"{s:g}" for s in CALIBRATION_CROP_SECONDS), show_default=True,
              help="Seconds of the centred crops scored besides the whole files.")
@click.option("--num_trials", type=int, help="Sample this many trials, half same-speaker (default: all pairs).")
@click.option("--seed", type=int, default=0, show_default=True)
@_precision_option
def calibrate_model(checkpoint_file: str | None, working_dir: str | None, audio_dirs: tuple[str, ...], speakers: str | None, description: str,
                    durations: str, num_trials: int | None, seed: int, precision: str) -> None:
    """Fit the duration-aware calibration of scores to log-likelihood ratios; write calibration.json beside the checkpoint."""
    from audio import AudioError
    from calibration import calibrate_checkpoint, calibration_file, speakers_to_calibrate_on
    from corpus import CorpusError

    checkpoint_file = _checkpoint(checkpoint_file)
    only = [s.strip() for s in speakers.split(",") if s.strip()] if speakers else None
    try:
        chosen = speakers_to_calibrate_on(checkpoint_file, working_dir, audio_dirs, only)
        calibration = calibrate_checkpoint(checkpoint_file, chosen, description, _seconds_list(durations, "--durations"), num_trials, seed, precision)
    except (AudioError, CorpusError, ValueError, FileNotFoundError) as error:
        _fail(error)
    weights = ", ".join(f"{name} {value:+.3f}" for name, value in calibration.weights.items())
    click.echo(f"LLR = {calibration.bias:+.3f} + {weights}, fitted on {calibration.fitted_on['num_trials']} trials of {len(chosen)} speakers "
               f"({description})")
    click.echo(f"written to {calibration_file(checkpoint_file)}")


@cli.command("enroll")
@click.argument("name")
@click.argument("files", nargs=-1, required=True)
@_checkpoint_option
@_profiles_option
@_batch_size_option
def enroll_command(name: str, files: tuple[str, ...], checkpoint_file: str | None, profiles_path: str, batch_size: int) -> None:
    """Enroll speaker NAME from audio FILES (or folders) into a profiles store, created when missing.

    The profile is the normalised mean of the whole-utterance embeddings of all files enrolled
    under NAME: enrolling NAME again adds to it. A store is tied to the checkpoint that made it.
    """
    from inference import Embedder, expand_audio_paths, inspect_checkpoint
    from profiles import enroll, load_profiles, profiles_files

    checkpoint_file = _checkpoint(checkpoint_file)
    try:
        paths = expand_audio_paths(files)
        inspect_checkpoint(checkpoint_file)
        if any(path.exists() for path in profiles_files(profiles_path)):
            load_profiles(profiles_path, checkpoint_file, allow_empty=True)
        embeddings = Embedder.from_checkpoint(checkpoint_file, batch_size).embed_files(paths)
        result = enroll(profiles_path, name, embeddings, paths, checkpoint_file)
    except (OSError, ValueError) as error:
        _fail(error)
    skipped = f", {len(result.already_enrolled)} already enrolled" if result.already_enrolled else ""
    click.echo(f"{result.name}: profile of {_count(result.profile_files, 'file')} ({len(result.added)} added{skipped}) "
               f"in {result.npz_path} ({_count(result.speakers, 'speaker')} enrolled)")


@cli.command("identify")
@click.argument("file")
@_checkpoint_option
@_profiles_option
@click.option("--top", type=click.IntRange(min=1), default=IDENTIFY_TOP, show_default=True, help="How many names to print.")
@_batch_size_option
def identify_command(file: str, checkpoint_file: str | None, profiles_path: str, top: int, batch_size: int) -> None:
    """Rank the speakers enrolled in a profiles store by cosine score against one audio FILE."""
    from inference import Embedder, audio_file, inspect_checkpoint
    from profiles import load_profiles, rank

    checkpoint_file = _checkpoint(checkpoint_file)
    try:
        path = audio_file(file)
        inspect_checkpoint(checkpoint_file)
        store = load_profiles(profiles_path, checkpoint_file)
        embedding = Embedder.from_checkpoint(checkpoint_file, batch_size).embed_files([path])[0]
    except (OSError, ValueError) as error:
        _fail(error)
    ranking = rank(store, embedding, top)
    click.echo(f"{path}: {len(ranking)} of {_count(len(store.names), 'enrolled speaker')}, best first")
    width = max(len(name) for name, _ in ranking)
    for position, (name, score) in enumerate(ranking, start=1):
        click.echo(f"{position:3d}. {name:<{width}}  {score:.3f}")


if __name__ == "__main__":
    cli()
