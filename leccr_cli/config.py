"""Recipes: the typed schema, YAML loading, `--set a.b=value` overrides and validation.

A recipe is a YAML mapping with the blocks `data`, `model`, `loss`, `optim`, `eval` and
`train` (plus `name` and `seed`). Every key is checked against the schema below: unknown
keys, wrong types and out-of-range values are `RecipeError`s that name the file, the
dotted key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from leccr_cli import defaults
from leccr_cli.defaults import (
    DescriptionEncoder,
    DescriptionFeatures,
    EvalTransform,
    FusionMode,
    GalleryMode,
    LogWith,
    MixedPrecision,
    Modality,
    NoDecay,
    SlotInit,
    StripPunctuation,
    TextPooling,
    TrainTransform,
    Variant,
    VideoPooling,
)
from leccr_cli.errors import InvalidArgument, LeccrError, Param, RecipeError, Step, Text, parts
from leccr_cli.utils.fs import atomic_write_text
from leccr_cli.utils.languages import check_language

RECIPE_FILE = "recipe.yaml"  # the resolved recipe of a run, in its folder


def _limits(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> dict:
    return {"low": low, "high": high, "low_open": low_open, "high_open": high_open}


def _positive() -> dict:
    return _limits(1)


# ---------------------------------------------------------------------------- schema


@dataclass
class SynthSpec:
    """How to build the synthetic corpus (`leccr data synth`) when `data.corpus` does not exist yet.

    `modality: image` renders scenes (`images`, `image_size`); `modality: video` writes frame
    features (`videos`, `frames`, `frame_dim`, `noise`). Unset keys take the generator's
    defaults; keys of the other modality are refused.
    """

    modality: Modality = "image"
    images: int | None = field(default=None, metadata=_limits(30))
    videos: int | None = field(default=None, metadata=_limits(30))
    langs: list[str] = field(default_factory=lambda: list(defaults.SYNTH_LANGS))
    seed: int = 0
    image_size: int | None = field(default=None, metadata=_limits(16))
    frames: int | None = field(default=None, metadata=_limits(2))
    frame_dim: int | None = field(default=None, metadata=_limits(8))
    noise: float | None = field(default=None, metadata=_limits(0.0))

    def generator_options(self) -> dict[str, Any]:
        """The keyword arguments of the generator of `modality` that the recipe sets."""
        keys = ("images", "image_size") if self.modality == "image" else ("videos", "frames", "frame_dim", "noise")
        options = {key: getattr(self, key) for key in keys if getattr(self, key) is not None}
        return {**options, "langs": list(self.langs), "seed": self.seed}


@dataclass
class DataConfig:
    """Where the corpus is and how captions and images are prepared."""

    corpus: str = ""
    synth: SynthSpec | None = None
    source_lang: str = defaults.SOURCE_LANG
    target_langs: list[str] = field(default_factory=list)
    descriptions: str = defaults.DESCRIPTIONS
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_words: int = field(default=defaults.MAX_WORDS, metadata=_positive())
    lowercase: bool = True
    # unicode: every Unicode punctuation mark (CJK "，。、" too); ascii: the reference's ASCII
    # marks only; none: keep all. true/false (older recipes) mean unicode/none.
    strip_punctuation: StripPunctuation = field(
        default="unicode", metadata={"booleans": {True: "unicode", False: "none"}}
    )
    train_transform: TrainTransform = "random_resized_crop"
    crop_scale_min: float = field(default=0.5, metadata=_limits(0.0, 1.0, low_open=True))
    # a horizontal flip of half the training images; off by default, since flips swap the
    # "left" and "right" of the captions
    train_flip: bool = False
    # evaluation images: short side to image_size and a centre crop, or the whole image
    # resized to image_size x image_size (the reference's test transform)
    eval_transform: EvalTransform = "center_crop"
    num_workers: int = field(default=0, metadata=_limits(0))
    video_features: str | None = None


@dataclass
class VisionConfig:
    """The CLIP vision tower: a folder or Hub id, or an inline config trained from scratch."""

    name_or_path: str | None = "openai/clip-vit-base-patch32"
    config: dict[str, Any] | None = None
    image_size: int = field(default=384, metadata=_limits(16))
    projection_dim: int = field(default=512, metadata=_positive())


@dataclass
class VideoConfig:
    """The frame-feature encoder of video corpora (docs/architecture.md, "The model").

    As in the reference: self-attention layers over the frame features, then the masked mean
    over frames (`pooling: mean`). `width: null` runs them on the features as they are (the
    reference); a number adds a linear input projection to that width first. `pooling: cls`
    prepends a learned CLS token and pools at it; `positions` adds learned frame positions
    (the reference has none).
    """

    width: int | None = field(default=None, metadata=_positive())
    layers: int = field(default=1, metadata=_positive())
    heads: int = field(default=8, metadata=_positive())
    max_frames: int = field(default=64, metadata=_positive())
    pooling: VideoPooling = "mean"
    positions: bool = False


@dataclass
class TokenizerConfig:
    """The word-level tokenizer trained on the corpus for from-scratch text encoders."""

    vocab_size: int = field(default=8000, metadata=_limits(16))
    min_frequency: int = field(default=1, metadata=_positive())


@dataclass
class TextConfig:
    """The multilingual text encoder: a folder or Hub id, or an inline config."""

    name_or_path: str | None = "bert-base-multilingual-cased"
    config: dict[str, Any] | None = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    max_tokens: int = field(default=64, metadata=_limits(4))
    description_max_tokens: int = field(default=200, metadata=_limits(4))
    # cls: h = W_t last_hidden[CLS], as in the reference; mean: the masked mean of all tokens,
    # which tiny encoders trained from scratch learn far faster
    pooling: TextPooling = "cls"


@dataclass
class ModelConfig:
    """The LECCR model and its ablation switches (docs/architecture.md, "The model")."""

    variant: Variant = "leccr"
    vision: VisionConfig = field(default_factory=VisionConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    description_encoder: DescriptionEncoder = "shared"
    description_encoder_name: str | None = None
    description_features: DescriptionFeatures = "auto"
    joint_dim: int = field(default=256, metadata=_positive())
    num_slots: int = field(default=4, metadata=_positive())
    slot_layers: int = field(default=3, metadata=_positive())
    interaction_layers: int = field(default=2, metadata=_positive())
    heads: int = field(default=8, metadata=_positive())
    # a cross-attention layer: attention (dropout) -> Linear(d, mlp_ratio*d) -> GELU -> dropout
    # -> Linear(mlp_ratio*d, d) -> dropout -> residual -> LayerNorm (reference: mlp_ratio 1, dropout 0.1)
    mlp_ratio: int = field(default=4, metadata=_positive())
    dropout: float = field(default=0.0, metadata=_limits(0.0, 1.0, high_open=True))
    # the learned slot queries start as randn * 0.02 (normal) or as zeros (the reference)
    slot_init: SlotInit = "normal"
    # width of the description-vision projections; null = joint_dim (the reference: 512, the visual width)
    description_vision_dim: int | None = field(default=None, metadata=_positive())
    temperature: float = field(default=0.07, metadata=_limits(0.0, 1.0, low_open=True))
    slots: bool = True
    interaction: bool = True
    multi_level_matching: bool = True
    english_guidance: bool = True
    description_vision: bool = True
    slot_diversity: bool = True


@dataclass
class LossConfig:
    """Loss weights: w_c multi-level matching, w_kl English guidance, w_cv description-vision, w_reg slot diversity."""

    w_c: float = field(default=0.01, metadata=_limits(0.0))
    w_kl: float = field(default=0.5, metadata=_limits(0.0, 1.0))
    w_cv: float = field(default=0.01, metadata=_limits(0.0))
    w_reg: float = field(default=0.01, metadata=_limits(0.0))
    kl_alpha: float = field(default=0.8, metadata=_limits(0.0, 1.0))


@dataclass
class OptimConfig:
    """AdamW, the linear warm-up/decay schedule, batch and precision."""

    lr: float = field(default=1e-5, metadata=_limits(0.0, low_open=True))
    new_layer_lr_scale: float = field(default=2.0, metadata=_limits(0.0, low_open=True))
    weight_decay: float = field(default=0.01, metadata=_limits(0.0))
    warmup_ratio: float = field(default=0.1, metadata=_limits(0.0, 1.0))
    epochs: int = field(default=50, metadata=_positive())
    max_steps: int | None = field(default=None, metadata=_positive())
    batch_size: int = field(default=128, metadata=_positive())
    gradient_accumulation_steps: int = field(default=1, metadata=_positive())
    max_grad_norm: float | None = field(default=1.0, metadata=_limits(0.0, low_open=True))
    mixed_precision: MixedPrecision = "no"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_limits(0.0, 1.0, high_open=True))
    eps: float = field(default=1e-8, metadata=_limits(0.0, low_open=True))
    # which parameters get no weight decay: ndim (vectors and scalars: biases, norms, the
    # temperature) or names (names containing "bias" or "norm", the reference's rule)
    no_decay: NoDecay = "ndim"


@dataclass
class EvalConfig:
    """Validation during training and the defaults of `leccr evaluate`."""

    every_steps: int | None = field(default=None, metadata=_positive())
    langs: list[str] = field(default_factory=list)
    batch_size: int = field(default=defaults.EVAL_BATCH_SIZE, metadata=_positive())
    fusion: float | None = field(default=None, metadata=_limits(0.0, 1.0))
    # linear: fusion * global + (1 - fusion) * slot score; minmax: each score matrix min-max
    # scaled to [0, 1] over the whole matrix first (the reference's video scoring)
    fusion_mode: FusionMode = "linear"
    # language: each language against its own images (the corpus's gallery of the language);
    # all: every language against every image of the split
    gallery: GalleryMode = "language"
    memory_budget_mb: int = field(default=defaults.EVAL_MEMORY_BUDGET_MB, metadata=_limits(16))


@dataclass
class TrainConfig:
    """Checkpointing and logging of the training loop."""

    keep_checkpoints: int = field(default=2, metadata=_positive())
    checkpoint_every_steps: int | None = field(default=None, metadata=_positive())
    log_every_steps: int = field(default=10, metadata=_positive())
    log_with: LogWith = "none"


@dataclass
class Recipe:
    """A whole recipe."""

    name: str = "leccr"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ------------------------------------------------------------------------ validation


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _range_text(meta: dict) -> str:
    low, high = meta.get("low"), meta.get("high")
    parts = []
    if low is not None:
        parts.append(f"{'>' if meta.get('low_open') else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if meta.get('high_open') else '<='} {high:g}")
    return " and ".join(parts)


class _Checker:
    def __init__(self, source: Text):
        self.source = parts(source)

    def fail(self, key: str, problem: str) -> None:
        raise RecipeError(parts(self.source, f": {key}: {problem}"))

    def build(self, cls: type, raw: Any, prefix: str) -> Any:
        if not isinstance(raw, dict):
            self.fail(prefix or "(top level)", f"expected a mapping, got {type(raw).__name__} {raw!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in raw.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'? " if close else ""
                self.fail(dotted, f"unknown key; {hint}(allowed: {', '.join(fields)})")
            kwargs[key] = self.convert(hints[key], value, dotted, fields[key].metadata)
        return cls(**kwargs)

    def convert(self, tp: Any, value: Any, key: str, meta: Any) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None:
                if type(None) in args:
                    return None
                self.fail(key, f"expected {_describe(tp)}, got null")
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, key, meta)
        if origin is Literal:
            choices = typing.get_args(tp)
            if isinstance(value, bool) and "booleans" in (meta or {}):
                value = meta["booleans"][value]
            elif isinstance(value, bool):
                # YAML 1.1 reads an unquoted `no` (or off/yes/on) as a boolean
                words = (("no", "off", "false"), ("yes", "on", "true"))[value]
                spelled = [c for c in choices if str(c).lower() in words]
                value = spelled[0] if spelled else value
            if value not in choices:
                close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.fail(key, f"got {value!r}, allowed: {', '.join(map(str, choices))}{hint}")
            return value
        if dataclasses.is_dataclass(tp):
            return self.build(tp, {} if value is None else value, key)
        if origin is list:
            (item,) = typing.get_args(tp)
            if isinstance(value, str) and item is str:
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                self.fail(key, f"expected {_describe(tp)}, got {value!r}")
            return [self.convert(item, v, f"{key}[{i}]", meta) for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(key, f"expected a mapping, got {value!r}")
            return dict(value)
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true/false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"expected an integer, got {value!r}")
        elif tp is float:
            if isinstance(value, str):
                value = _yaml_float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, f"expected a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                self.fail(key, f"got {value!r}, expected a finite number")
        elif tp is str:
            if not isinstance(value, str):
                self.fail(key, f"expected a string, got {value!r}")
            return value
        self.check_range(key, value, meta or {})
        return value

    def check_range(self, key: str, value: float, meta: dict) -> None:
        low, high = meta.get("low"), meta.get("high")
        too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
        too_high = high is not None and (value >= high if meta.get("high_open") else value > high)
        if too_low or too_high:
            self.fail(key, f"got {value!r}, must be {_range_text(meta)}")


def _yaml_float(text: str) -> float | str:
    """PyYAML reads `1e-5` as a string (YAML 1.1 wants `1.0e-5`); accept it as the number it is."""
    try:
        return float(text)
    except ValueError:
        return text


def recipe_from_dict(raw: Any, source: Text = "recipe") -> Recipe:
    """Validate a raw mapping against the schema; raise `RecipeError` naming `source` and the key."""
    recipe = _Checker(source).build(Recipe, {} if raw is None else raw, "")
    _check_consistency(recipe, parts(source))
    return recipe


def model_config_from_dict(raw: Any, source: str = "model") -> ModelConfig:
    """Validate a raw `model` block (e.g. from a saved model's config.json) against the schema."""
    return _Checker(source).build(ModelConfig, {} if raw is None else raw, "model")


def data_config_from_dict(raw: Any, source: str = "data", prefix: str = "data") -> DataConfig:
    """Validate some keys of a `data` block (e.g. a model's saved preprocessing) against the schema."""
    return _Checker(source).build(DataConfig, {} if raw is None else raw, prefix)


def uses_descriptions(config: ModelConfig) -> bool:
    """Whether the model's switches leave anything that reads the descriptions."""
    return config.variant == "leccr" and (
        config.interaction
        or config.multi_level_matching
        or config.english_guidance
        or config.description_vision
        or config.slot_diversity
    )


def uses_slot_embeddings(config: ModelConfig) -> bool:
    """Whether the slot embeddings m̂ (multi-level matching, English guidance, fused scores) exist."""
    return config.variant == "leccr" and (config.multi_level_matching or config.english_guidance)


def check_scoring(
    fusion: float | None,
    fusion_mode: str = "linear",
    gallery: str = "language",
    *,
    slot_embeddings: bool = True,
    what: str = "model",
) -> None:
    """The rules of scoring, for recipes (`eval.*`), evaluation and search alike.

    `fusion` α (or None: global scores only) in [0, 1] needs slot embeddings (`slot_embeddings`:
    whether the `what`, a model or an index, has them); `fusion_mode` is linear or minmax, and
    minmax needs `fusion`; `gallery` is language or all. A broken rule is an `InvalidArgument`
    naming the parameter.
    """
    if fusion_mode not in defaults.FUSION_MODES:
        expected = f"expected {' or '.join(defaults.FUSION_MODES)}"
        raise InvalidArgument(
            "fusion_mode",
            fusion_mode,
            expected,
            message=parts(Param("fusion_mode", fusion_mode, quote=True), f": {expected}"),
        )
    if gallery not in defaults.GALLERY_MODES:
        raise InvalidArgument("gallery", gallery, f"expected one of {', '.join(defaults.GALLERY_MODES)}")
    if fusion is not None and not 0.0 <= fusion <= 1.0:
        raise InvalidArgument("fusion", fusion, "must be between 0 and 1 (the weight of the global scores)")
    if fusion is None and fusion_mode == "minmax":
        expected = parts("needs ", Param("fusion", metavar="ALPHA"), ", the weight of the global scores")
        raise InvalidArgument(
            "fusion_mode",
            fusion_mode,
            expected,
            parts("e.g. ", Param("fusion", 0.9), " (the reference's video setting)"),
            message=parts(Param("fusion_mode", fusion_mode), " ", expected),
        )
    if fusion is not None:
        check_slot_embeddings(slot_embeddings, fusion, what)


def check_slot_embeddings(present: bool, fusion: float | None = None, what: str = "model") -> None:
    """Fused scores (`fusion`) need slot embeddings: refuse a `what` (model or index) without them."""
    if not present:
        owner = "its model" if what == "index" else "it"
        raise InvalidArgument(
            "fusion", fusion, f"needs slot embeddings; this {what} has none",
            f"{owner} is a baseline, or multi_level_matching and english_guidance are both off",
            message=parts(Param("fusion"), f" needs slot embeddings; this {what} has none"),
        )  # fmt: skip


def _check_consistency(recipe: Recipe, source: tuple) -> None:
    data = recipe.data

    def fail(message: Text, hint: Text = None) -> None:
        raise RecipeError(parts(source, ": ", message), hint)

    if not data.corpus:
        fail(
            (
                "data.corpus: missing; set it to a corpus folder (see ",
                Step("data --help", python="leccr_cli.corpus"),
                ")",
            )
        )
    if not data.target_langs:
        fail("data.target_langs: empty; list the target languages, e.g. [de, fr, cs]")
    for key, code in [("data.source_lang", data.source_lang)] + [
        (f"data.target_langs[{i}]", c) for i, c in enumerate(data.target_langs + recipe.eval.langs)
    ]:
        try:
            check_language(code)
        except LeccrError as error:
            fail(f"{key}: {error}")
    if data.source_lang in data.target_langs:
        fail(f"data.target_langs: contains the source language '{data.source_lang}'")
    for key, cfg in (("model.vision", recipe.model.vision), ("model.text", recipe.model.text)):
        if (cfg.name_or_path is None) == (cfg.config is None):
            fail(
                f"{key}: set exactly one of name_or_path (a folder or Hub id) and config (an inline config trained "
                f"from scratch)"
            )
    synth = data.synth
    if synth is not None:
        other = ("videos", "frames", "frame_dim", "noise") if synth.modality == "image" else ("images", "image_size")
        for key in other:
            if getattr(synth, key) is not None:
                fail(
                    f"data.synth.{key}: belongs to the {'image' if synth.modality == 'video' else 'video'} "
                    f"benchmark, but data.synth.modality is {synth.modality!r}",
                    "remove it, or set data.synth.modality",
                )
    scoring = recipe.eval
    try:
        check_scoring(
            scoring.fusion, scoring.fusion_mode, scoring.gallery, slot_embeddings=uses_slot_embeddings(recipe.model)
        )
    except InvalidArgument as error:  # the rules are check_scoring's; a recipe words them with its keys
        if error.name == "fusion":
            fail(
                "eval.fusion: this model has no slot embeddings to fuse (a baseline, or multi_level_matching and "
                "english_guidance both off)",
                "set eval.fusion: null",
            )
        fail(
            "eval.fusion_mode: 'minmax' needs eval.fusion, the weight of the global scores (the reference's video "
            "setting is 0.9)"
        )
    if len(recipe.optim.betas) != 2:
        fail(f"optim.betas: expected two numbers [beta1, beta2], got {recipe.optim.betas}")
    if recipe.model.description_features == "cache" and recipe.model.description_encoder != "frozen":
        fail(
            "model.description_features: 'cache' needs model.description_encoder: frozen (shared-mode features change "
            "while training)"
        )


def resolve_paths(recipe: Recipe) -> Recipe:
    """The recipe with `data.corpus` made absolute (a run must not depend on the working directory)."""
    corpus = str(Path(recipe.data.corpus).expanduser().resolve())
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, corpus=corpus))


# -------------------------------------------------------------------- files, overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise RecipeError(
            parts(
                Param("overrides", text, quote=True), ": expected KEY=VALUE, e.g. ", Param("overrides", "optim.lr=2e-5")
            )
        )
    key, raw_value = text.split("=", 1)
    keys = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in keys):
        raise RecipeError(
            parts(Param("overrides", text, quote=True), ": the key must be dotted names, e.g. model.num_slots")
        )
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return keys, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with each `a.b=value` override applied."""
    merged = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise RecipeError(parts(Param("overrides", text), f": {'.'.join(keys[: depth + 1])} is not a mapping"))
            node = child
        node[keys[-1]] = value
    return merged


def read_recipe_file(path: str | Path) -> dict:
    """Read a recipe YAML file into a raw mapping (no validation)."""
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder", "give the path of a YAML recipe file, e.g. recipes/demo.yaml")
    if not path.is_file():
        raise RecipeError(f"recipe {path}: no such file", "give the path of a YAML recipe, e.g. recipes/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"recipe {path}:{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"recipe {path}: cannot be read ({error})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: the top level must be a mapping of blocks (data, model, ...)")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override (`a.b=value` strings, values YAML) and validate a recipe file."""
    raw = read_recipe_file(path)
    return recipe_with_overrides(raw, str(path), overrides)


def recipe_with_overrides(raw: dict, source: str, overrides: list[str] | None) -> Recipe:
    """Validate a raw recipe (read from `source`) with `overrides` applied; each mistake is blamed on its origin."""
    if not overrides:
        return recipe_from_dict(raw, source)
    _Checker(source).build(Recipe, raw, "")  # blame the file for its own mistakes
    return recipe_from_dict(apply_overrides(raw, overrides), parts(f"{source} with ", Param("overrides")))


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain YAML-ready data."""
    return dataclasses.asdict(recipe)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True))
