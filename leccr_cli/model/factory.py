"""The model factory: build LECCR from a recipe's `model` block (or a whole recipe and its corpus), and load a saved
model folder.

Pretrained parts load with `from_pretrained(name_or_path)` (a local folder or a Hub id);
inline `config` mappings build tiny encoders from scratch, with a word-level tokenizer
trained on the corpus text (the embedded demo). `load_model` rebuilds a model written by
`LeccrModel.save_pretrained` from its folder alone, with what inference needs besides the
weights (caption cleaning, the evaluation transform: `Preprocessing`); folders saved before
they carried it take it from the recipe of their run.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from accelerate.utils import set_seed
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.utils import cached_file

from leccr_cli.config import (
    RECIPE_FILE,
    ModelConfig,
    Recipe,
    TextConfig,
    VisionConfig,
    data_config_from_dict,
    model_config_from_dict,
    uses_descriptions,
)
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.video import frame_features
from leccr_cli.defaults import MODALITIES
from leccr_cli.errors import ModelError, RecipeError, Step, parts
from leccr_cli.model.layers import VideoEncoder
from leccr_cli.model.leccr import (
    CLIP_MEAN,
    CLIP_STD,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    EncoderParts,
    LeccrModel,
    Preprocessing,
)
from leccr_cli.model.tokenizer import build_word_tokenizer
from leccr_cli.utils.fs import recover


def _drop_pooler(model):
    # BERT-like encoders carry a pooler LECCR never uses; a parameter without gradient breaks DDP
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_error(what: str, name: str, error: Exception) -> ModelError:
    return ModelError(
        f"{what} {name!r} cannot be loaded: {_first_line(error)}",
        "give a local model folder or a Hub id (with the Hub reachable)",
    )


# ------------------------------------------------------------------------------ vision


def _image_statistics(name_or_path: str) -> tuple[tuple, tuple]:
    """image_mean/std from the checkpoint's preprocessor_config.json, else the CLIP defaults."""
    try:
        path = cached_file(
            name_or_path,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        path = None
    if not path:
        return CLIP_MEAN, CLIP_STD
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(raw.get("image_mean", CLIP_MEAN)), tuple(raw.get("image_std", CLIP_STD))


def _pretrained_vision(vision: VisionConfig):

    name = vision.name_or_path
    try:
        found = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _load_error("vision model", name, error) from None
    if found.model_type == "clip":  # a full CLIPModel checkpoint: take its vision tower and projection
        hf_config = found.vision_config
        hf_config.projection_dim = found.projection_dim
    elif found.model_type == "clip_vision_model":
        hf_config = found
    else:
        raise ModelError(
            f"vision model {name!r} is a {found.model_type!r} model, not a CLIP vision model",
            "set model.vision.name_or_path to a CLIPModel or CLIPVisionModelWithProjection folder or id",
        )
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(name, config=hf_config, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_error("vision model", name, error) from None
    mean, std = _image_statistics(name)
    return model, mean, std


def _scratch_vision(vision: VisionConfig):

    for key in ("image_size", "projection_dim"):
        if key in vision.config:
            raise ModelError(f"model.vision.config.{key}: set model.vision.{key} instead")
    hf_config = CLIPVisionConfig(**vision.config, image_size=vision.image_size, projection_dim=vision.projection_dim)
    return CLIPVisionModelWithProjection(hf_config), CLIP_MEAN, CLIP_STD


# ------------------------------------------------------------------------------ text


def _pretrained_text(text: TextConfig):

    name = text.name_or_path
    try:
        hf_config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise _load_error("text model", name, error) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as error:
        tokenizer, reason = None, _first_line(error)
    else:
        # transformers builds an empty tokenizer (special tokens only) when the files are missing
        vocabulary = getattr(hf_config, "vocab_size", None) or len(tokenizer)
        reason = f"it has {len(tokenizer)} tokens for a vocabulary of {vocabulary}"
    if tokenizer is None or not vocabulary // 2 <= len(tokenizer) <= vocabulary:
        raise ModelError(
            f"text model {name!r}: no usable tokenizer ({reason})",
            "the folder needs the tokenizer files of its model (tokenizer.json or vocab files)",
        )
    try:
        model = AutoModel.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_error("text model", name, error) from None
    return _drop_pooler(model), tokenizer


def _scratch_text(text: TextConfig, tokenizer_texts: Iterable[str] | None):

    if tokenizer_texts is None:
        raise ModelError(
            "model.text.config builds a text encoder from scratch: its tokenizer needs the corpus text "
            "(tokenizer_texts)"
        )
    raw = dict(text.config)
    if "vocab_size" in raw:
        raise ModelError(
            "model.text.config.vocab_size: comes from the trained tokenizer; set model.text.tokenizer.vocab_size "
            "instead"
        )
    model_type = raw.pop("model_type", "bert")
    tokenizer = build_word_tokenizer(
        tokenizer_texts, vocab_size=text.tokenizer.vocab_size, min_frequency=text.tokenizer.min_frequency
    )
    try:
        hf_config = AutoConfig.for_model(
            model_type, **raw, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id
        )
    except ValueError as error:
        raise ModelError(f"model.text.config.model_type: {error}") from None
    return _drop_pooler(AutoModel.from_config(hf_config)), tokenizer


def _check_text_lengths(text: TextConfig, hf_config) -> None:
    positions = getattr(hf_config, "max_position_embeddings", None)
    longest = max(text.max_tokens, text.description_max_tokens)
    if positions is not None and longest > positions:
        raise ModelError(
            f"model.text: max_tokens/description_max_tokens {longest} exceed the text encoder's {positions} positions",
            "lower them (or give the inline config a larger max_position_embeddings)",
        )


# ------------------------------------------------------------------------------ descriptions


def _frozen_description_encoder(config: ModelConfig, text_model, tokenizer):
    """A frozen deep copy of the text encoder, or `description_encoder_name` with the same vocabulary."""
    name = config.description_encoder_name
    if name is None:
        return copy.deepcopy(text_model)
    try:
        other_tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError):
        raise ModelError(
            f"model.description_encoder_name {name!r}: no tokenizer found",
            "the description encoder must share the text encoder's tokenizer; leave it unset to use a frozen copy",
        ) from None
    if other_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ModelError(
            f"model.description_encoder_name {name!r} uses another vocabulary than the text encoder",
            "only encoders that share the text encoder's tokenizer are supported; leave it unset to use a frozen copy",
        )
    try:
        return _drop_pooler(AutoModel.from_pretrained(name, dtype=torch.float32))
    except (OSError, ValueError, RuntimeError) as error:
        raise _load_error("description encoder", name, error) from None


# ------------------------------------------------------------------------------ the factory


def _check_heads(heads: int, width: int, key: str, what: str) -> None:
    if width % heads:
        raise ModelError(f"{key}={heads} does not divide {what} ({width})", "pick a number of heads that divides it")


def _video_width_name(config: ModelConfig) -> str:
    return "model.video.width" if config.video.width else "the frame-feature width (model.video.width: null)"


def _video_encoder(config: ModelConfig, frame_dim: int) -> VideoEncoder:
    video = config.video
    _check_heads(video.heads, video.width or frame_dim, "model.video.heads", _video_width_name(config))
    return VideoEncoder(
        frame_dim,
        video.width,
        video.layers,
        video.heads,
        video.max_frames,
        cls_token=video.pooling == "cls",
        positions=video.positions,
        mlp_ratio=config.mlp_ratio,
        dropout=config.dropout,
    )


def build_model(
    config: ModelConfig,
    *,
    modality: str = "image",
    frame_dim: int | None = None,
    tokenizer_texts: Iterable[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> LeccrModel:
    """Build from the recipe's `model` block (`preprocessing`: what inference needs, saved with the model).

    Pretrained parts via from_pretrained(name_or_path); inline `config` mappings build encoders
    from scratch (the text tokenizer is trained on `tokenizer_texts`, required then).
    `frame_dim` (the width of the pre-extracted frame features) is required for modality='video'.
    A pretrained CLIP keeps its own projection width; `vision.projection_dim` sizes from-scratch towers.
    """
    if modality not in MODALITIES:
        raise ModelError(f"modality {modality!r}: expected image or video")
    if config.description_encoder_name is not None and config.description_encoder != "frozen":
        raise ModelError(
            "model.description_encoder_name is set but model.description_encoder is 'shared'",
            "set model.description_encoder: frozen to encode descriptions with another encoder",
        )
    if modality == "video" and frame_dim is None:
        raise ModelError(
            "a video model needs the frame-feature width (frame_dim)",
            "set data.video_features to a frame-feature file of the corpus",
        )

    if config.text.config is not None:
        text_model, tokenizer = _scratch_text(config.text, tokenizer_texts)
    else:
        text_model, tokenizer = _pretrained_text(config.text)
    _check_text_lengths(config.text, text_model.config)

    parts = EncoderParts(tokenizer=tokenizer, text=text_model, frame_dim=frame_dim)
    if modality == "image":
        if config.vision.config is not None:
            vision, mean, std = _scratch_vision(config.vision)
        else:
            vision, mean, std = _pretrained_vision(config.vision)
        parts.vision, parts.image_mean, parts.image_std = vision, mean, std
        parts.interpolate_pos_encoding = vision.config.image_size != config.vision.image_size
        visual_width, what = vision.config.projection_dim, "the CLIP projection width"
    else:
        parts.video = _video_encoder(config, frame_dim)
        visual_width, what = parts.video.width, _video_width_name(config)

    if uses_descriptions(config):
        _check_heads(config.heads, visual_width, "model.heads", what)
    if config.description_encoder == "frozen" and uses_descriptions(config):
        parts.description = _frozen_description_encoder(config, text_model, tokenizer)
    return LeccrModel(config, parts, modality, preprocessing)


def tokenizer_texts(corpus: Corpus, recipe: Recipe) -> list[str]:
    """Texts a from-scratch tokenizer is trained on: training captions and (when read) descriptions."""
    split = recipe.data.train_split
    langs = {recipe.data.source_lang, *recipe.data.target_langs}
    texts = [c.text for c in corpus.captions(split) if c.lang in langs]
    if uses_descriptions(recipe.model) and recipe.data.descriptions in corpus.description_sources():
        train_ids = set(corpus.image_ids(split))
        texts += [
            text for image_id, text in corpus.descriptions(recipe.data.descriptions).items() if image_id in train_ids
        ]
    return texts


def build_model_for(recipe: Recipe, corpus: Corpus) -> LeccrModel:
    """The model exactly as `train` builds it from a recipe: the same seed, the same tokenizer texts.

    build-slots relies on this: a from-scratch frozen description encoder is a random init.
    """
    set_seed(recipe.seed)
    frame_dim = frame_features(corpus, recipe.data.video_features).dim if corpus.modality == "video" else None
    return build_model(
        recipe.model,
        modality=corpus.modality,
        frame_dim=frame_dim,
        tokenizer_texts=tokenizer_texts(corpus, recipe) if recipe.model.text.config is not None else None,
        preprocessing=Preprocessing.of(recipe.data),
    )


def _parts_from_folder(config: ModelConfig, folder: Path, meta: dict[str, Any], text_device=None) -> EncoderParts:
    """Encoders with the architecture saved in a model folder (weights are loaded afterwards).

    `text_device` builds the text encoder there whatever the surrounding default device (the
    query model builds everything else on the meta device).
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with contextlib.nullcontext() if text_device is None else torch.device(text_device):
            text = _drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(folder / "text")))
        parts = EncoderParts(
            tokenizer=tokenizer,
            text=text,
            frame_dim=meta.get("frame_dim"),
            image_mean=tuple(meta["image_mean"]),
            image_std=tuple(meta["image_std"]),
            interpolate_pos_encoding=bool(meta.get("interpolate_pos_encoding", False)),
        )
        if meta["modality"] == "image":
            parts.vision = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder / "vision"))
        else:
            parts.video = _video_encoder(config, meta["frame_dim"])
        if (folder / "description_encoder").is_dir():
            parts.description = _drop_pooler(
                AutoModel.from_config(AutoConfig.from_pretrained(folder / "description_encoder"))
            )
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"model {folder}: incomplete or unreadable ({error})", "give the model/ folder of a finished leccr run"
        ) from None
    return parts


def _read_model_folder(folder: Path) -> tuple[dict[str, Any], ModelConfig, Preprocessing]:
    """(config.json, model config, preprocessing) of a model folder written by `LeccrModel.save_pretrained`."""
    recover(folder)  # finish a replacement of the folder cut short by a kill
    meta_file = folder / "config.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        written_by = parts("is this a folder written by ", Step("train", python="train"), "?")
        raise ModelError(f"model {folder}: cannot read config.json ({error})", written_by) from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"model {folder}: config.json is not a leccr model", "give the model/ folder of a leccr run")
    if meta.get("version") != MODEL_FORMAT_VERSION:
        raise ModelError(
            f"model {folder}: format version {meta.get('version')} is not supported (this leccr reads "
            f"{MODEL_FORMAT_VERSION})"
        )
    try:
        config = model_config_from_dict(meta.get("model"), str(meta_file))
        preprocessing = _preprocessing(folder, meta)
    except RecipeError as error:
        raise ModelError(f"model {folder}: {error}", "was it written by another version of leccr?") from None
    return meta, config, preprocessing


def _preprocessing(folder: Path, meta: dict[str, Any]) -> Preprocessing:
    """The model's preprocessing: from config.json, or (models saved before it held it) from its run's recipe."""
    saved = meta.get("preprocessing")
    if saved is None:
        recipe_file = folder.parent / RECIPE_FILE
        if not recipe_file.is_file():
            return Preprocessing()
        saved = yaml.safe_load(recipe_file.read_text(encoding="utf-8")).get("data") or {}
        saved = {key: saved[key] for key in Preprocessing.__dataclass_fields__ if key in saved}
        source = str(recipe_file)
    else:
        source = str(folder / "config.json")
    if not isinstance(saved, dict):
        raise RecipeError(f"{source}: preprocessing: expected a mapping, got {saved!r}")
    return Preprocessing.of(
        data_config_from_dict(saved, source, "preprocessing" if meta.get("preprocessing") else "data")
    )


def _load_weights(
    model: LeccrModel, folder: Path, prefixes: tuple[str, ...] | None = None, device: str | torch.device = "cpu"
) -> None:
    """Copy the weights of model.safetensors (those under `prefixes`, or all) into the model's own tensors.

    Copying, never adopting the file's buffers, keeps every parameter in storage the model
    allocated itself: the same memory layout, so the same kernels and the same numbers
    whichever parts are loaded.
    """
    weights = folder / "model.safetensors"
    wanted = {key for key in model.state_dict() if prefixes is None or key.startswith(prefixes)}
    try:
        with safe_open(str(weights), framework="pt", device=str(device)) as handle:
            found = {key: handle.get_tensor(key) for key in handle.keys() if key in wanted or prefixes is None}
    except FileNotFoundError:
        raise ModelError(
            f"model {folder}: {weights.name} is missing", "give the model/ folder of a finished leccr run"
        ) from None
    except (OSError, SafetensorError) as error:
        raise ModelError(
            f"model {folder}: {weights.name} is damaged or truncated ({error})",
            "copy the folder again, or use another model folder (a run's checkpoints hold earlier weights)",
        ) from None
    if set(found) != wanted:
        missing, unexpected = sorted(wanted - set(found)), sorted(set(found) - wanted)
        raise ModelError(
            f"model {folder}: model.safetensors does not fit config.json (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    try:
        model.load_state_dict(found, strict=prefixes is None)
    except RuntimeError as error:
        raise ModelError(f"model {folder}: model.safetensors does not fit config.json ({error})") from None


def load_model(folder: str | Path) -> LeccrModel:
    """Rebuild a model saved by `LeccrModel.save_pretrained` from that folder alone (no Hub access)."""
    folder = Path(folder)
    meta, config, preprocessing = _read_model_folder(folder)
    model = LeccrModel(config, _parts_from_folder(config, folder, meta), meta["modality"], preprocessing)
    _load_weights(model, folder)
    model.source_folder = folder
    return model


QUERY_PARTS = ("text_encoder.", "text_head.")


def load_query_model(folder: str | Path, device: str | torch.device = "cpu") -> LeccrModel:
    """The query side of a saved model: tokenizer, text encoder and text head, on `device`.

    For search, which embeds texts only: the image side (vision tower or video encoder,
    description encoder, slots, interaction) stays on the meta device, so it takes no memory
    and its weights are never read; `embed_texts` and `score` work, `embed_images` does not.
    The text side is loaded as `load_model` loads it, so it gives the same numbers.
    """
    folder = Path(folder)
    meta, config, preprocessing = _read_model_folder(folder)
    with torch.device("meta"):
        parts_ = _parts_from_folder(config, folder, meta, text_device="cpu")
        model = LeccrModel(config, parts_, meta["modality"], preprocessing)
    model.text_head.to_empty(device="cpu")
    model.text_encoder.to(device)
    model.text_head.to(device)
    _load_weights(model, folder, QUERY_PARTS, device)
    model.source_folder = folder
    return model.eval()
