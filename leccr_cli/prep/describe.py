"""Detailed visual descriptions from a multimodal LLM (`leccr caption`).

A *describer* turns pictures into text: `describe(images, prompt) -> list[str]`, one
description per entry of `images`, where an entry is the list of pictures of one gallery
item (one image, or the sampled frames of a video). `HFDescriber` implements it for Hugging
Face image-text-to-text models (`llava`, `llava-next`, `auto`).

`caption_corpus` describes a corpus gallery into `descriptions/<source>/` (image_id, text,
model, prompt), resumably: every `shard_size` described images are written as a shard
(`leccr_cli.prep.shards`) under the hidden folder `descriptions/.<source>.shards/`; when the
run ends, the shards and the rows already in `descriptions/<source>/` are merged,
in gallery order, into a new `descriptions/<source>/` (atomically) and the shard folder is
removed. A rerun skips images that are already in the final dataset or in a shard, so an
interrupted run finishes where it stopped and gives the same rows as an uninterrupted one.
Under `torchrun` / `accelerate launch` the images still to do are split between the
processes (`split_between_processes`) and the main process merges every process's shards.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
import transformers
from accelerate.utils import gather_object
from PIL import Image
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from rich.console import Console

from leccr_cli.corpus.corpus import DESCRIPTION_COLUMNS, Corpus
from leccr_cli.corpus.importers.descriptions import check_description_name
from leccr_cli.defaults import CAPTION_BATCH_SIZE, CAPTION_FRAMES, CAPTION_SHARD_SIZE, MAX_NEW_TOKENS, ON_ERROR, OnError
from leccr_cli.errors import CorpusError, InvalidArgument, LeccrError, ModelError, Param, at_least, one_of, parts
from leccr_cli.prep.shards import ShardStore
from leccr_cli.utils.console import RateColumn, progress
from leccr_cli.utils.devices import is_main_process, process_state, resolve_dtype, select_device
from leccr_cli.utils.fs import disk_full_reported

if TYPE_CHECKING:
    from PIL.Image import Image as Picture


@dataclass(frozen=True)
class Backend:
    """A named way to load a multimodal LLM."""

    default_model: str | None
    model_class: str
    model_types: tuple[str, ...] | None  # accepted config.model_type values; None: any image-text-to-text model
    fallback_prompt_format: bool  # without a chat template, use LLaVA-1.5's `USER: <image>\n... ASSISTANT:`


MLLMS: dict[str, Backend] = {
    "llava": Backend("llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration", ("llava",), True),
    "llava-next": Backend(
        "llava-hf/llava-v1.6-mistral-7b-hf", "LlavaNextForConditionalGeneration", ("llava_next",), True
    ),
    "auto": Backend(None, "AutoModelForImageTextToText", None, False),
}

# Models that take one picture per prompt: video items get their middle frame only.
SINGLE_IMAGE_MODEL_TYPES = frozenset(
    {"blip", "blip-2", "fuyu", "git", "instructblip", "kosmos-2", "mllama", "paligemma", "pix2struct"}
)

DEFAULT_IMAGE_PROMPT = (
    "Describe this image in detail and factually. Name every visible object, person and animal with its "
    "attributes (colour, size, shape, material, clothing), say how many there are of each, where they are "
    "in the image and relative to each other, what they are doing, and the setting (place, background, "
    "time of day, weather). Describe only what is visible."
)
DEFAULT_VIDEO_PROMPT = (
    "These images are frames sampled from one video, in order. Describe the video in detail and factually: "
    "every visible object, person and animal with its attributes (colour, size, shape, clothing), how many "
    "there are of each, where they are, what they do and how it changes over time, and the setting (place, "
    "background, time of day, weather). Describe only what is visible."
)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class Describer(Protocol):
    """What `caption_corpus` needs from a backend."""

    model_id: str  # recorded in the `model` column
    multi_image: bool  # whether one prompt may hold several pictures (video frames)
    max_new_tokens: int

    def describe(self, images: Sequence[Sequence["Picture"]], prompt: str) -> list[str]:
        """One description per entry; an entry is the pictures of one item."""
        ...


# ------------------------------------------------------------------- the HF backend


def get_backend(mllm: str) -> Backend:
    """The backend called `mllm`; an unknown name lists the known ones."""
    one_of("mllm", mllm, list(MLLMS), what="is not a known backend")
    return MLLMS[mllm]


def _model_type(model_id: str) -> str:
    try:
        return transformers.AutoConfig.from_pretrained(model_id).model_type
    except (OSError, ValueError) as error:
        where = "folder" if Path(model_id).exists() else "Hub id (is the Hub reachable? offline, give a local folder)"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(
            parts(Param("model", model_id), f": cannot read a model config from this {where}: {reason}")
        ) from None


def open_describer(
    mllm: str = "llava",
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str = "auto",
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> "HFDescriber":
    """Check the model's config and processor and return a describer that loads the weights on first use.

    `dtype` is auto, bf16, fp16 or fp32 (or a long spelling such as bfloat16); `auto` is bf16
    or fp16 on a GPU, fp32 on the CPU.
    """
    backend = get_backend(mllm)
    at_least("max_new_tokens", max_new_tokens)
    model_id = model or backend.default_model
    if model_id is None:
        raise InvalidArgument(
            "model",
            None,
            "a Hub id or a local model folder",
            "give a Hub id such as Qwen/Qwen2-VL-2B-Instruct or a local model folder",
            message=parts(Param("mllm", mllm), " needs ", Param("model")),
        )
    if Path(model_id).exists():
        model_id = str(Path(model_id).resolve())
    model_type = _model_type(model_id)
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelError(
            parts(Param("model", model_id), f" is a {model_type!r} model, not an image-text-to-text model"),
            "give a multimodal LLM such as llava-hf/llava-1.5-7b-hf or Qwen/Qwen2-VL-2B-Instruct",
        )
    if backend.model_types is not None and model_type not in backend.model_types:
        raise ModelError(
            parts(Param("model", model_id), f" is a {model_type!r} model, which ", Param("mllm", mllm), " cannot load"),
            parts("use ", Param("mllm", "auto"), " for any image-text-to-text model"),
        )
    chosen = select_device(device)
    return HFDescriber(
        model_id=model_id,
        backend=backend,
        device=chosen,
        dtype=resolve_dtype(dtype, chosen),
        max_new_tokens=max_new_tokens,
        multi_image=model_type not in SINGLE_IMAGE_MODEL_TYPES,
    )


class HFDescriber:
    """A Hugging Face image-text-to-text model: batched, left-padded, greedy generation.

    The processor is loaded (and checked) at once, the weights on first use.
    """

    def __init__(self, *, model_id: str, backend: Backend, device, dtype, max_new_tokens: int, multi_image: bool):
        hf_logging.disable_progress_bar()
        self.model_id = model_id
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.multi_image = multi_image
        self.model = None
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise ModelError(parts(Param("model", model_id), f": cannot load its processor ({error})")) from None
        if getattr(self.processor, "chat_template", None) is None and not backend.fallback_prompt_format:
            raise ModelError(
                parts(
                    Param("model", model_id), ": its processor has no chat template, so the prompt cannot be formatted"
                ),
                parts("use a chat/instruct model, or ", Param("mllm", "llava"), " for LLaVA-1.5-style models"),
            )
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    def load(self) -> None:
        """Load the weights (once)."""
        if self.model is not None:
            return
        try:
            model = getattr(transformers, self.backend.model_class).from_pretrained(
                self.model_id, dtype=self.dtype, device_map=self.device
            )
        except (OSError, ValueError) as error:
            raise ModelError(parts(Param("model", self.model_id), f": cannot load it ({error})")) from None
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self.processor.tokenizer.pad_token_id
        self.model = model.eval()

    def format_prompt(self, prompt: str, images: int) -> str:
        """The model's text input for `images` pictures followed by `prompt`."""
        if getattr(self.processor, "chat_template", None) is not None:
            content = [{"type": "image"}] * images + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        image_token = getattr(self.processor, "image_token", "<image>")
        return "USER: " + f"{image_token}\n" * images + f"{prompt} ASSISTANT:"

    def describe(self, images: Sequence[Sequence["Picture"]], prompt: str) -> list[str]:
        """Greedy descriptions of a batch: one per entry of `images` (a list of pictures each)."""
        self.load()
        texts = [self.format_prompt(prompt, len(pictures)) for pictures in images]
        inputs = self.processor(images=[list(p) for p in images], text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


# --------------------------------------------------------------------- reading images


def sample_frames(available: int, wanted: int) -> list[int]:
    """Indices of `wanted` frames spread evenly over `available` (segment centres; 1 -> the middle)."""
    count = min(available, wanted)
    return [int((i + 0.5) * available / count) for i in range(count)]


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _open_image(path: Path) -> "Picture":
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(str(error) or type(error).__name__) from None


def load_pictures(path: Path, frames: int | None) -> list["Picture"]:
    """The pictures of one gallery item: the image, or `frames` evenly sampled frames of a video folder.

    Raises ValueError with the reason when they cannot be read.
    """
    if frames is None:
        return [_open_image(path)]
    if not path.is_dir():
        raise ValueError("not a folder of frame images" + (" (no such folder)" if not path.exists() else ""))
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
    if not files:
        raise ValueError("the folder holds no frame images")
    return [_open_image(files[i]) for i in sample_frames(len(files), frames)]


# ------------------------------------------------------------------ the resumable run


class FailedImage(NamedTuple):
    """An item that could not be read (`on_error="skip"`)."""

    image_id: str
    path: str
    reason: str


@dataclass
class CaptionReport:
    """What a `caption_corpus` run did (the same on every process)."""

    path: Path
    selected: int  # distinct images of the chosen splits
    already: int  # of those, described before this run (final dataset or unfinished shards)
    described: int  # described by this run, all processes together
    rows: int  # rows in the final dataset
    failed: list[FailedImage] = field(default_factory=list)

    @property
    def missing(self) -> int:
        """Selected images still without a description (failed, or left out by a limit)."""
        return self.selected - self.already - self.described


def check_prompt(prompt: str) -> str:
    """Refuse an empty prompt, or one that already holds the image placeholder leccr adds."""
    if not prompt or not prompt.strip():
        raise LeccrError(
            "the prompt is empty",
            parts(
                "give a non-empty ",
                Param("prompt"),
                " or ",
                Param("prompt_file"),
                ", or leave both out for the default",
            ),
        )
    if "<image>" in prompt:
        raise LeccrError("the prompt contains '<image>'", "leave the image placeholder out; leccr adds one per picture")
    return prompt.strip()


def shard_folder(corpus: Corpus, source: str) -> Path:
    """Where unfinished descriptions of `source` wait to be merged."""
    return corpus.path / "descriptions" / f".{source}.shards"


def _check_final(
    rows: list[dict], folder: Path, model_id: str, prompt: str, recorded: dict | None, settings: dict
) -> None:
    """Refuse to add rows to descriptions made with another model, prompt or generation setting."""
    other = next((r for r in rows if (r["model"], r["prompt"]) != (model_id, prompt)), None)
    what = None
    if other is not None:
        what = f"another model ({other['model']})" if other["model"] != model_id else "another prompt"
    elif rows and recorded is not None:
        differing = [key for key in settings if recorded.get(key) != settings[key]]
        if differing:
            what = parts(
                "other settings (",
                *[(", " if i else "", Param(k, recorded.get(k))) for i, k in enumerate(differing)],
                ")",
            )
    if what is not None:
        raise LeccrError(
            parts(f"{folder} holds descriptions made with ", what),
            parts(
                "rerun with the same settings, pass ", Param("overwrite", True), " to describe every image again, or ",
                Param("source"), " to write another description source",
            ),
        )  # fmt: skip


def _describe_share(
    image_ids: list[str],
    gallery: dict[str, Path],
    describer: Describer,
    prompt: str,
    frames: int | None,
    batch_size: int,
    on_error: str,
    *,
    write,
    shard_size: int,
    advance,
) -> tuple[int, list[FailedImage]]:
    """Describe `image_ids` batch by batch; `write(rows)` every `shard_size` rows, and when stopped."""
    failed: list[FailedImage] = []
    described = 0
    pending: list[dict] = []
    try:
        for start in range(0, len(image_ids), batch_size):
            batch, pictures = [], []
            for image_id in image_ids[start : start + batch_size]:
                try:
                    pictures.append(load_pictures(gallery[image_id], frames))
                    batch.append(image_id)
                except ValueError as error:
                    if on_error == "stop":
                        raise CorpusError(
                            f"image {image_id!r} at {gallery[image_id]}: cannot read it ({error})",
                            parts("fix or remove the file, or pass ", Param("on_error", "skip"), "; a rerun resumes"),
                        ) from None
                    failed.append(FailedImage(image_id, str(gallery[image_id]), str(error)))
            if batch:
                texts = describer.describe(pictures, prompt)
                pending.extend(
                    {"image_id": i, "text": t, "model": describer.model_id, "prompt": prompt}
                    for i, t in zip(batch, texts)
                )
                described += len(batch)
            if len(pending) >= shard_size:
                write(pending)
                pending = []
            advance(len(image_ids[start : start + batch_size]))
    finally:
        if pending:  # what is described is kept, also when the run stops
            write(pending)
    return described, failed


def caption_corpus(
    corpus: Corpus,
    describer: Describer,
    *,
    source: str,
    splits: Sequence[str] | None = None,
    prompt: str | None = None,
    frames: int | None = None,
    batch_size: int = CAPTION_BATCH_SIZE,
    limit: int | None = None,
    overwrite: bool = False,
    on_error: OnError = "stop",
    shard_size: int = CAPTION_SHARD_SIZE,
    console: Console | None = None,
) -> CaptionReport:
    """Describe the images of `splits` (default: all) into `descriptions/<source>/`, resumably.

    Without `overwrite`, images that `descriptions/<source>/` already holds are kept and only
    the others are described (the existing rows must come from the same model and prompt);
    with it, every selected image is described again and the new dataset holds this run's
    rows only. Shards left by an interrupted run with the same settings are always reused.
    `frames` (video corpora, default 4) frames per video are described in one prompt when
    the model takes several pictures, else the middle frame. `limit` caps how many images
    this run describes. An unreadable image stops the run (`on_error="stop"`, naming its id
    and path) or is listed in `report.failed` (`"skip"`). Runs under `torchrun`/`accelerate
    launch` split the work between processes. Progress goes to `console`.
    """
    source = check_description_name(source)
    for name, value in (("batch_size", batch_size), ("limit", limit), ("frames", frames), ("shard_size", shard_size)):
        at_least(name, value)
    one_of("on_error", on_error, ON_ERROR)
    video = corpus.modality == "video"
    if frames is not None and not video:
        raise InvalidArgument(
            "frames", frames, "video corpora only", parts("leave ", Param("frames"), " out"),
            message=parts(Param("frames"), f" applies to video corpora; {corpus.path} is an image corpus"),
        )  # fmt: skip
    if video:
        frames = (frames or CAPTION_FRAMES) if describer.multi_image else 1
    if prompt is None:
        prompt = DEFAULT_VIDEO_PROMPT if video and frames > 1 else DEFAULT_IMAGE_PROMPT
    prompt = check_prompt(prompt)

    gallery: dict[str, Path] = {}
    for row in corpus.images():
        gallery.setdefault(row.image_id, corpus.media_root / row.path)
    chosen = list(
        dict.fromkeys(image_id for split in (splits or corpus.splits) for image_id in corpus.image_ids(split))
    )

    state = process_state(getattr(describer, "device", None))
    on_full = f"finished batches are kept in {shard_folder(corpus, source)}; rerun the same command to go on"
    lock = corpus.writing() if is_main_process() else contextlib.nullcontext()
    with lock, disk_full_reported(corpus.path, on_full):
        final = corpus.path / "descriptions" / source
        generation = {"frames": frames, "max_new_tokens": describer.max_new_tokens}
        settings = {"model": describer.model_id, "prompt": prompt, **generation}
        shards = ShardStore(shard_folder(corpus, source), settings, DESCRIPTION_COLUMNS)
        shards.check(overwrite)
        kept = [] if overwrite or not final.is_dir() else corpus.description_rows(source)
        _check_final(kept, final, describer.model_id, prompt, corpus.description_settings(source), generation)
        state.wait_for_everyone()
        if is_main_process():
            shards.start()
        state.wait_for_everyone()
        done = {row["image_id"] for row in kept} | {row["image_id"] for row in shards.rows()}
        todo = [image_id for image_id in chosen if image_id not in done][:limit]
        already = sum(image_id in done for image_id in chosen)
        state.wait_for_everyone()  # nobody writes a shard before every process has read the done set

        with state.split_between_processes(todo) as mine:
            bar = progress(console, RateColumn("images"))
            with bar:
                task = bar.add_task(f"Describing ({source})", total=len(mine))
                described, failed = _describe_share(
                    mine,
                    gallery,
                    describer,
                    prompt,
                    frames,
                    batch_size,
                    on_error,
                    write=lambda rows: shards.write(uuid.uuid4().hex[:16], rows),
                    shard_size=shard_size,
                    advance=lambda n: bar.advance(task, n),
                )

        failed = [f for part in gather_object([failed]) for f in part]
        described = sum(gather_object([described]))
        state.wait_for_everyone()
        if is_main_process():
            new_rows = shards.rows()
            if new_rows or overwrite or not final.is_dir():
                merged = {row["image_id"]: row for row in kept}
                merged.update((row["image_id"], row) for row in new_rows)
                order = {image_id: i for i, image_id in enumerate(gallery)}
                rows = sorted(merged.values(), key=lambda r: order.get(r["image_id"], len(order)))
                if rows:  # every image failed: nothing to write (an empty dataset cannot be read back)
                    corpus.write_descriptions(source, rows, generation)
            shards.remove()
        state.wait_for_everyone()
        rows_written = len(corpus.description_rows(source)) if final.is_dir() else 0
        return CaptionReport(final, len(chosen), already, described, rows_written, failed)
