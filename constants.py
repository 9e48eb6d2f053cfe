"""Constants of the reference Deep Speaker system and of Hive-MTL.

Every number the pipeline depends on lives here, so the feature extractor, the model,
the batchers and the CLI agree without passing magic numbers around.
"""

# Audio.
SAMPLE_RATE = 16_000  # Hz; every file is resampled to this rate and downmixed to mono.
SOUNDFILE_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg")  # Decoded by libsndfile (MP3 since 1.1); an Ogg it cannot read goes to FFmpeg.
FFMPEG_EXTENSIONS = (".m4a", ".aac", ".opus", ".webm")  # Decoded by FFmpeg through PyAV: VoxCeleb2's AAC, Opus.
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS
SILENCE_PERCENTILE = 95  # The trim keeps audio between the first and last sample louder than this.
RESAMPLE_QUALITY = "HQ"  # soxr quality; librosa's default 'soxr_hq', so samples match the reference.

# Filterbank features (python_speech_features.fbank defaults, except the number of filters).
NUM_FBANKS = 64
WINDOW_LENGTH_S = 0.025
WINDOW_STEP_S = 0.01
NFFT = 512
MEL_BLOCKS = 8  # audio.py multiplies the spectra by the mel matrix in this many bands of consecutive filters.
FFT_CHUNK_FRAMES = 256  # Frames transformed and filtered at a time: see audio.filterbank_energies.
NPY_PREFIX_BYTES = 128  # np.save's magic, version and header of a 1-D array, padded to 64 bytes: where a cached waveform's samples start.
PRE_EMPHASIS = 0.97
NORMALISATION_STD_FLOOR = 1e-12
NUM_FRAMES = 160  # Frames per training/inference window, about 1.6 s.
WINDOW_LENGTH_STREAM = 1  # Batches draw their window length from the generator seeded (seed, epoch, index, this).
MIN_WINDOW_FRAMES = 20  # Shortest variable training window (--window_seconds), 0.2 s: the ResCNN's four strides leave one frame.

# Raw PCM input (`DeepSpeakerModel(pcm_input=True)`, the reference's example_pcm.py): features in the
# graph, as the reference computes them there with tf.signal, which differs from read_mfcc's.
PCM_FRAME_LENGTH = 400  # Samples per STFT frame (25 ms); tf.signal.stft framing: no padding at either end.
PCM_FRAME_STEP = 160  # Samples between frames (10 ms).
PCM_MEL_LOWER_HZ = 0.0  # tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 0, 8000).
PCM_MEL_UPPER_HZ = SAMPLE_RATE / 2
HTK_MEL_BREAK_HZ = 700.0  # mel(f) = 1127 ln(1 + f / 700): TensorFlow's (HTK's) mel scale.
HTK_MEL_SCALE = 1127.0

# Front end: how silence is trimmed and how a clip shorter than a window is filled. The
# reference trims between the first and last sample above the 95th percentile and pads with
# zero frames; on short clips that leaves mostly zeros, so trained models may choose otherwise.
TRIM_MODES = ("reference", "energy", "none")
PAD_MODES = ("zeros", "repeat")  # repeat: tile the clip's frames up to the window.
EMBEDDING_PAD_MODES = (*PAD_MODES, "exact")  # exact: embed a short clip's own frames, unpadded (the ResCNN takes any length).
ENERGY_TRIM_TOP_DB = 30  # energy trim: drop leading/trailing audio this far below the loudest frame.
GENDER_TABLE_NAMES = ("speakers.tsv", "vox1_meta.csv", "vox2_meta.csv")  # A corpus's own speaker table (speaker, gender columns; VoxCeleb's meta files).

# Model.
EMBEDDING_SIZE = 512
CLIP_RELU_MAX = 20.0
CONV_WEIGHT_DECAY = 1e-4
SOFTMAX_DROPOUT = 0.5
MTL_SHARED_UNITS = 1024  # Hive-MTL: Dense 'shared' on top of the embedding.
MTL_SPEAKER_UNITS = 1024  # Hive-MTL: Dense 'speaker_task' before the speaker softmax.

# Training.
BATCH_SIZE = 32 * 3  # Triplet batches are stacked anchors, positives, negatives.
TRAIN_TEST_RATIO = 0.8
TRIPLET_ALPHA = 0.1
TRIPLET_STEPS_PER_EPOCH = 2_000

# Augmentation of training windows (augment.py).
AUGMENT_SPEEDS = (1.0, 0.9, 1.1)  # Speed perturbation; class of speaker s at speed k: s + k * num_speakers.
AUGMENT_NOISE_SNR_DB = (0.0, 15.0)  # Coloured noise SNR range (WeSpeaker's MUSAN noise range).
AUGMENT_BABBLE_SNR_DB = (13.0, 20.0)  # Babble SNR range (WeSpeaker's MUSAN babble range).
AUGMENT_BABBLE_SPEAKERS = (3, 6)  # Utterances of other training speakers summed into one babble.
AUGMENT_BAND_LIMIT_RATE = 8_000  # Hz; band limiting resamples through this rate.
SPEC_MASK_MAX_FRAMES = 20  # Longest time mask, frames.
SPEC_MASK_MAX_BANDS = 8  # Widest frequency mask, filterbank bands.
# Folder noise (--noise_dir, MUSAN's layout) and reverberation (--rir_dir or simulated rooms): augment_sources.py.
MUSAN_SNR_DB = {"noise": (0.0, 15.0), "music": (5.0, 15.0), "speech": (13.0, 20.0)}  # WeSpeaker's and SpeechBrain's MUSAN ranges.
MUSAN_BABBLE_SPEAKERS = (3, 7)  # Files of MUSAN speech/ summed into one babble.
FOLDER_NOISE_CATEGORY = "noise"  # A noise folder without MUSAN's noise/ music/ speech/ is all of this category.
RIR_CACHE_FILES = 64  # Impulse responses (read or simulated) kept decoded; each about 0.1 to 1 s of audio.
SIMULATED_ROOMS = 200  # Simulated rooms of a run: room k is the same for a seed whenever it is drawn.
SIMULATED_ROOM_DIMS_M = ((3.0, 3.0, 2.5), (10.0, 8.0, 4.0))  # Shoebox length, width, height: lowest, highest.
SIMULATED_RT60_S = (0.2, 0.8)  # Reverberation time drawn per room; wall absorption from Sabine's formula.
SIMULATED_MAX_ORDER = 40  # Image-source reflection order cap (about 0.1 s per room on one core).
SIMULATED_WALL_MARGIN_M = 0.5  # Source and microphone stay this far from the walls.

# Additive angular margin (ArcFace) softmax head (margin_softmax.py).
AAM_MARGIN = 0.2  # Radians added to the angle of the true class (WeSpeaker, SpeechBrain: 0.2).
AAM_SCALE = 30.0  # Logit scale s: cosines in [-1, 1] times s.

# Evaluation (reference protocol).
NUM_NEGATIVES_PER_SPEAKER = 99
THRESHOLD_STEP = 0.001

# Working directory layout.
CACHE_DIR_NAME = "audio-fbanks"
WAVEFORM_CACHE_DIR_NAME = "audio-waveforms"  # Decoded 16 kHz audio (float16), for augmentation.
CHECKPOINTS_SOFTMAX_DIR = "checkpoints-softmax"
CHECKPOINTS_TRIPLET_DIR = "checkpoints-triplets"
CHECKPOINTS_MTL_DIR = "checkpoints-mtl"
SPEAKERS_FILE_NAME = "SPEAKERS.TXT"

VERSION = "0.1.0"

# Model architecture (ResCNN). The filter table keeps the reference layer names
# (`conv{filters}-s`) for every size; only 'full' matches the published checkpoint.
MODEL_FILTERS = {
    "full": (64, 128, 256, 512),  # The reference ResCNN: 24,185,728 weights.
    "small": (16, 32, 64, 128),  # Same graph, 1/16 of the conv work, 1.7 M weights: CPU tests, quick runs.
}
STAGE_CONV_KERNEL = 5  # 'conv{filters}-s': 5x5, stride 2.
STAGE_CONV_STRIDES = 2
RES_CONV_KERNEL = 3  # Identity blocks: 3x3, stride 1.
NUM_RES_BLOCKS = 3  # Identity blocks per stage.
FUSED_BATCH_NORM_MIN_EPSILON = 1.001e-5  # TensorFlow's fused batch-norm kernel refuses a smaller epsilon.
L2_NORMALIZE_EPSILON = 1e-12  # As Keras 2 K.l2_normalize: x / sqrt(max(sum(x^2), eps)).

# Hard-negative triplet mining (the reference's history of recent embeddings).
HARD_NEGATIVE_HISTORY_SPEAKERS = 640  # Speakers embedded at each refresh.
HARD_NEGATIVE_HISTORY_UTTERANCES = 2  # Utterances of each of them.
HARD_NEGATIVE_HISTORY_REFRESHES = 4  # Refreshes kept in the history.
HARD_NEGATIVE_REFRESH_EVERY = 100  # Batches between refreshes.
HARD_NEGATIVE_CANDIDATES = 1_280  # Random history rows searched for each anchor's hardest negative.

# Verification metrics (eval_metrics.py): normalised minDCF as in NIST SRE / VoxCeleb.
MIN_DCF_P_TARGETS = (0.01, 0.05)  # Prior of a same-speaker trial; reported as min_dcf_001 and min_dcf_005.
DCF_COST_MISS = 1.0
DCF_COST_FALSE_ALARM = 1.0
FRAMES_PER_SECOND = 100  # Front-end frames per second of audio (10 ms hop): a duration crop of s seconds keeps 100 s frames.

# Calibration of scores to log-likelihood ratios (calibration.py) and `verify`'s decision.
CALIBRATION_FILE_NAME = "calibration.json"  # Beside a checkpoint: its duration-aware score-to-LLR calibration.
CALIBRATION_CROP_SECONDS = (1.0, 2.0, 4.0)  # Centred crops the calibration trials are scored on, besides the whole files.
CALIBRATION_REGULARISATION = 1e4  # Inverse L2 strength of the logistic regression: 4 weights on thousands of trials need almost none.
COHORT_FILE_NAME = "cohort.npy"  # Beside a checkpoint: per-speaker mean embeddings of training speakers, float16 (score_norm.py).
ASNORM_TOP_K = 50  # Cohort scores of each side that adaptive s-norm standardises by.
ASNORM_STD_FLOOR = 1e-6  # Their spread's floor: a cohort of identical scores divides by this, not by zero.
VERIFY_PRIOR = 0.5  # Prior of the same speaker that `verify` decides for by default (with DCF_COST_MISS and DCF_COST_FALSE_ALARM).

# Plots (plots.py).
PLOT_DPI = 120

# Inference (inference.py) and the embed / verify / enroll / identify verbs.
INFERENCE_BATCH_SIZE = 32  # Windows per compiled inference call; the last batch of a call is zero-padded.
INFERENCE_WINDOW_HOP = 80  # Frames between the sliding windows of a whole-utterance ('mean') embedding.
INFERENCE_FILES_PER_CHUNK = 256  # Files whose features are held in memory at once by Embedder.embed_files.
VERIFY_THRESHOLD = 0.5  # Cosine threshold of `verify` for a model without a calibration.json, tuned to no model.

# The model shipped in the repository: what every verb uses when no --checkpoint_file is given.
PRETRAINED_DIR_NAME = "pretrained"
PRETRAINED_CHECKPOINT_NAME = "model.h5"  # Embedding model only (legacy HDF5, reference layer names).
MODEL_CARD_FILE_NAME = "model_card.json"  # Beside a shipped checkpoint: its data, recipe, calibration split and figures.
IDENTIFY_TOP = 5  # Names `identify` prints by default.

# Export (export.py): one TensorFlow graph from 16 kHz PCM to the whole-utterance embedding.
EXPORT_WINDOWS_PER_CALL = 32  # Windows per model call inside the exported graph's loop; bounds memory on long audio.

# Uncertainty of experiment results (experiment.mtl_answer).
CONFIDENCE_LEVEL = 0.95
# Fewest seeds a verdict is read from: a t interval over two seeds (one degree of freedom) excludes zero
# wherever the two differences agree in sign and size, however large the spread between seeds may be.
MIN_SEEDS_FOR_VERDICT = 3
# Beyond this many seeds an estimate of the seeds that would decide a figure says only that the difference is
# too small for its spread: answer tables print "no difference at this spread" instead of a count in the thousands.
MAX_SEEDS_ESTIMATED = 30
BOOTSTRAP_RESAMPLES = 1000
