"""Defaults and allowed values, in one place.

Torch-free and quick to import: the command modules import it at module level for their
option defaults and help texts, the recipe schema (`config.py`) for its choices, and the
core for its keyword defaults. Each set of choices is a `Literal` type and the tuple of its
values.
"""

from __future__ import annotations

from typing import Literal, get_args

# ------------------------------------------------------------------------- vocabulary

Modality = Literal["image", "video"]
MODALITIES: tuple[str, ...] = get_args(Modality)
Origin = Literal["human", "mt", "back"]  # human-written, machine-translated, back-translated
ORIGINS: tuple[str, ...] = get_args(Origin)
Dtype = Literal["auto", "bf16", "fp16", "fp32"]  # auto: bf16 (or fp16) on a GPU, fp32 on the CPU
DTYPES: tuple[str, ...] = get_args(Dtype)
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
StorageDtype = Literal["fp16", "bf16", "fp32"]
STORAGE_DTYPES: tuple[str, ...] = get_args(StorageDtype)
OnError = Literal["stop", "skip"]  # an unreadable image stops the run, or is skipped and listed
ON_ERROR: tuple[str, ...] = get_args(OnError)

# ------------------------------------------------------------------------- scoring

FusionMode = Literal["linear", "minmax"]  # α·global + (1 − α)·slot, or each score matrix min-max scaled first
FUSION_MODES: tuple[str, ...] = get_args(FusionMode)
GalleryMode = Literal["language", "all"]  # each language against its own images, or against the whole split
GALLERY_MODES: tuple[str, ...] = get_args(GalleryMode)
RECALL_KS = (1, 5, 10)
EVAL_BATCH_SIZE = 128
EVAL_MEMORY_BUDGET_MB = 1024  # temporaries of one chunk of ranked scores

# ------------------------------------------------------------------------- recipes

Variant = Literal["leccr", "baseline"]
DescriptionEncoder = Literal["shared", "frozen"]
DescriptionFeatures = Literal["auto", "cache", "live"]
TextPooling = Literal["cls", "mean"]
VideoPooling = Literal["mean", "cls"]
SlotInit = Literal["normal", "zeros"]
StripPunctuation = Literal["unicode", "ascii", "none"]
TrainTransform = Literal["random_resized_crop", "resize_center_crop"]
EvalTransform = Literal["center_crop", "resize"]  # short side and a centre crop, or the whole image resized
MixedPrecision = Literal["no", "fp16", "bf16"]
NoDecay = Literal["ndim", "names"]
LogWith = Literal["none", "tensorboard"]
SOURCE_LANG = "en"
DESCRIPTIONS = "llava"  # the description source a recipe reads (descriptions/<name>/)
MAX_WORDS = 30  # caption cleaning: words kept
RUNS_ROOT = "runs"

# ------------------------------------------------------------------------- leccr caption

Mllm = Literal["llava", "llava-next", "auto"]
MLLMS: tuple[str, ...] = get_args(Mllm)
CAPTION_BATCH_SIZE = 8
MAX_NEW_TOKENS = 256
CAPTION_FRAMES = 4  # video frames described per video
CAPTION_SHARD_SIZE = 64  # images per finished shard

# ------------------------------------------------------------------------- leccr translate

Engine = Literal["marian", "nllb", "m2m100", "auto"]
ENGINES: tuple[str, ...] = get_args(Engine)
TRANSLATE_BATCH_SIZE = 32
TRANSLATE_MAX_TOKENS = 256
NUM_BEAMS = 1
TRANSLATE_SPLIT = "train"
TRANSLATE_SHARD_SIZE = 2048

# ------------------------------------------------------------------------- build-slots, index, search

SLOT_CACHE_DTYPE: StorageDtype = "fp16"
INDEX_DTYPE: StorageDtype = "fp16"
INDEX_SPLIT = "gallery"  # the split `leccr index` takes from a corpus with several
TOP_K = 10
SEARCH_MEMORY_BUDGET_MB = 256  # first-pass scores of one block of rows

# ------------------------------------------------------------------------- corpora

IMAGE_FOLDER_SPLIT = "gallery"
IMPORTED = "imported"  # the model and prompt recorded for imported descriptions
SYNTH_LANGS = ("de", "fr", "cs")
SYNTH_IMAGES = 2000
SYNTH_IMAGE_SIZE = 64
SYNTH_FRAMES = 8
SYNTH_FRAME_DIM = 64
SYNTH_NOISE = 2.0

# ------------------------------------------------------------------------- leccr app

APP_HOST = "127.0.0.1"
APP_PORT = 7860  # the first port tried
