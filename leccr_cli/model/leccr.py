"""The LECCR module: semantic slots, visual-semantic interaction, embeddings and losses.

Notation (docs/architecture.md, "The model"): Z_v visual tokens (CLS first, width d_v), F_c description
token features, M the semantic slots, Ẑ_v / M̂ the two interaction outputs, h_v / h_t the
global embeddings (D = joint_dim), m̂ the slot embeddings. Modules that the recipe's switches
leave unused are not built, so every trainable parameter receives a gradient (DDP needs that).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

from leccr_cli.config import (
    RECIPE_FILE,
    DataConfig,
    LossConfig,
    ModelConfig,
    check_slot_embeddings,
    uses_descriptions,
    uses_slot_embeddings,
)
from leccr_cli.defaults import DESCRIPTIONS, MAX_WORDS, EvalTransform, StripPunctuation
from leccr_cli.errors import ModelError
from leccr_cli.model import losses
from leccr_cli.model.layers import CrossAttention, masked_mean
from leccr_cli.utils.fs import atomic_directory
from leccr_cli.utils.text import TextCleaning

MODEL_FORMAT = "leccr-model"
MODEL_FORMAT_VERSION = 1
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 0.5  # the learnable temperature is clamped to this range
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


IMAGE_INPUTS = (
    "pixel_values",
    "frames",
    "frame_mask",
    "description_ids",
    "description_mask",
    "description_features",
    "description_features_mask",
)


def image_inputs(batch: dict) -> dict:
    """The image-side entries of a batch dict, as keyword arguments of `LeccrModel.embed_images`."""
    return {key: batch.get(key) for key in IMAGE_INPUTS}


def best_slot_scores(per_slot: torch.Tensor, slot_mask: torch.Tensor | None) -> torch.Tensor:
    """[T, I] the best slot of each image from [T, I, K] per-slot similarities (padded slots, mask False, never win)."""
    if slot_mask is not None:
        per_slot = per_slot.masked_fill(~slot_mask[None], float("-inf"))
    return per_slot.max(dim=2).values


def fuse_scores(global_scores: torch.Tensor, slot_scores: torch.Tensor, fusion: float) -> torch.Tensor:
    """α·global + (1 − α)·slot similarities (`LeccrModel.score` with `fusion` α)."""
    return fusion * global_scores + (1 - fusion) * slot_scores.to(global_scores.dtype)


@dataclass(frozen=True)
class Preprocessing:
    """What using the model needs besides its weights, saved with it (`config.json`): caption cleaning, the
    evaluation image transform and the description source it was trained with (a recipe's `data` keys)."""

    lowercase: bool = True
    strip_punctuation: StripPunctuation = "unicode"
    max_words: int = MAX_WORDS
    eval_transform: EvalTransform = "center_crop"
    descriptions: str = DESCRIPTIONS

    @classmethod
    def of(cls, data: DataConfig) -> "Preprocessing":
        """The preprocessing a recipe's `data` block gives."""
        return cls(data.lowercase, data.strip_punctuation, data.max_words, data.eval_transform, data.descriptions)

    @property
    def text_cleaning(self) -> TextCleaning:
        return TextCleaning(self.lowercase, self.strip_punctuation, self.max_words)


@dataclass
class ImageEmbeddings:
    """What the gallery side of retrieval needs.

    global_embeds: [B, D] L2-normalized h_v. slot_embeds: [B, N, D] L2-normalized m̂, or None
    when the model has none (baseline, or multi-level matching and English guidance both off).
    slot_mask: [B, N] bool (True = valid) when slots are padded description tokens (`slots: false`),
    else None.
    """

    global_embeds: torch.Tensor
    slot_embeds: torch.Tensor | None = None
    slot_mask: torch.Tensor | None = None

    def to(self, device) -> "ImageEmbeddings":
        def move(tensor):
            return None if tensor is None else tensor.to(device)

        return ImageEmbeddings(move(self.global_embeds), move(self.slot_embeds), move(self.slot_mask))

    def select(self, indices: torch.Tensor) -> "ImageEmbeddings":
        """The gallery rows `indices` (a 1-D long tensor), in that order."""

        def pick(tensor):
            return None if tensor is None else tensor.index_select(0, indices.to(tensor.device))

        return ImageEmbeddings(pick(self.global_embeds), pick(self.slot_embeds), pick(self.slot_mask))

    @staticmethod
    def cat(parts: list["ImageEmbeddings"]) -> "ImageEmbeddings":
        """Concatenate gallery chunks; padded slot sequences of different lengths are padded to the longest."""
        global_embeds = torch.cat([p.global_embeds for p in parts])
        if parts[0].slot_embeds is None:
            return ImageEmbeddings(global_embeds)
        longest = max(p.slot_embeds.shape[1] for p in parts)
        if all(p.slot_mask is None for p in parts) and all(p.slot_embeds.shape[1] == longest for p in parts):
            return ImageEmbeddings(global_embeds, torch.cat([p.slot_embeds for p in parts]))
        slots, masks = [], []
        for p in parts:
            extra = longest - p.slot_embeds.shape[1]
            mask = (
                p.slot_mask
                if p.slot_mask is not None
                else p.slot_embeds.new_ones(p.slot_embeds.shape[:2], dtype=torch.bool)
            )
            slots.append(F.pad(p.slot_embeds, (0, 0, 0, extra)))
            masks.append(F.pad(mask, (0, extra), value=False))
        return ImageEmbeddings(global_embeds, torch.cat(slots), torch.cat(masks))


@dataclass
class LeccrOutput:
    """The training loss and its unweighted terms (detached scalars, for logging)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


@dataclass
class EncoderParts:
    """The encoders `build_model` (or `from_pretrained`) hands to `LeccrModel`."""

    tokenizer: Any
    text: nn.Module
    vision: nn.Module | None = None  # CLIPVisionModelWithProjection (image modality)
    video: nn.Module | None = None  # VideoEncoder (video modality)
    description: nn.Module | None = None  # the frozen description encoder (frozen mode)
    frame_dim: int | None = None
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    interpolate_pos_encoding: bool = False


class LeccrModel(nn.Module):
    """Two-stream LECCR (or the plain baseline) built from the recipe's `model` block."""

    def __init__(
        self,
        config: ModelConfig,
        parts: EncoderParts,
        modality: str = "image",
        preprocessing: Preprocessing | None = None,
    ):
        super().__init__()
        self.config = config
        self.modality = modality
        self.preprocessing = preprocessing or Preprocessing()
        self.tokenizer = parts.tokenizer
        self.frame_dim = parts.frame_dim
        self.image_mean = tuple(parts.image_mean)
        self.image_std = tuple(parts.image_std)
        self.image_size = config.vision.image_size
        self.interpolate_pos_encoding = parts.interpolate_pos_encoding
        self.source_folder: Path | None = None  # the folder it was loaded from (set by factory.load_model)

        # the parts the baseline shares come first, so one seed gives both variants the same weights
        self.text_encoder = parts.text
        if modality == "image":
            self.vision = parts.vision
            visual_width = parts.vision.config.projection_dim
        else:
            self.video = parts.video
            visual_width = parts.video.width
        self.visual_width = visual_width
        text_width = parts.text.config.hidden_size
        joint = config.joint_dim
        self.text_head = nn.Linear(text_width, joint)
        self.image_head = nn.Linear(visual_width, joint)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature)))

        self.description_encoder = parts.description
        if self.description_encoder is not None:
            self.description_encoder.requires_grad_(False)
            self.description_encoder.eval()
        self.reads_descriptions = uses_descriptions(config)
        if not self.reads_descriptions:
            return
        description_width = (parts.description or parts.text).config.hidden_size
        layer = {"dim": visual_width, "heads": config.heads, "mlp_ratio": config.mlp_ratio, "dropout": config.dropout}
        self.description_projection = nn.Linear(description_width, visual_width)
        if config.slots:
            if config.slot_init == "zeros":
                queries = torch.zeros(config.num_slots, visual_width)
            else:
                queries = torch.randn(config.num_slots, visual_width) * 0.02
            self.slot_queries = nn.Parameter(queries)
            self.slot_generator = CrossAttention(layers=config.slot_layers, **layer)
        if config.interaction:
            self.visual_over_slots = CrossAttention(layers=config.interaction_layers, **layer)
            if uses_slot_embeddings(config):
                self.slots_over_visual = CrossAttention(layers=config.interaction_layers, **layer)
        if uses_slot_embeddings(config):
            self.slot_head = nn.Linear(visual_width, joint)
        if config.description_vision:
            width = config.description_vision_dim or joint
            self.description_vision_slot_head = nn.Linear(visual_width, width)
            self.description_vision_token_head = nn.Linear(visual_width, width)
        self._freeze_guidance_only_layers()

    def _freeze_guidance_only_layers(self) -> None:
        """English guidance reads the slot embeddings only through its detached target P: layers
        that nothing else trains keep their initial weights (frozen, so DDP sees no unused parameter)."""
        config = self.config
        untrained = []
        if not (
            config.interaction or config.multi_level_matching or config.description_vision or config.slot_diversity
        ):
            untrained += [self.description_projection, getattr(self, "slot_generator", None)]
            if config.slots:
                self.slot_queries.requires_grad_(False)
        if not config.multi_level_matching:
            untrained += [getattr(self, "slot_head", None), getattr(self, "slots_over_visual", None)]
        for module in filter(None, untrained):
            module.requires_grad_(False)

    # ------------------------------------------------------------------ housekeeping

    @property
    def run_folder(self) -> Path | None:
        """The run folder this model was loaded from (the folder holding its `model/` and a recipe), if any."""
        folder = self.source_folder
        if folder is not None and (Path(folder).parent / RECIPE_FILE).is_file():
            return Path(folder).parent
        return None

    def train(self, mode: bool = True) -> "LeccrModel":
        super().train(mode)
        if self.description_encoder is not None:
            self.description_encoder.eval()  # the frozen copy never leaves eval mode
        return self

    def _encoder_modules(self) -> list[nn.Module]:
        visual = self.vision if self.modality == "image" else self.video
        return [visual, self.text_encoder]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the vision/video and text encoders (loaded or built from scratch)."""
        seen, params = set(), []
        for module in self._encoder_modules():
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def new_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the randomly initialised LECCR layers (heads, slots, interaction, temperature)."""
        pretrained = {id(p) for p in self.pretrained_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in pretrained]

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask, padded to the longest text, truncated to max_length."""
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """h_t = normalize(W_t · last_hidden[CLS]): [B, D] (with `text.pooling: mean`, the masked token mean)."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        else:
            pooled = hidden[:, 0]
        return F.normalize(self.text_head(pooled), dim=-1)

    def encode_descriptions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """F_c(description): token features [B, L, d_desc] and a bool mask [B, L], without gradient.

        shared mode: the live text encoder; frozen mode: the frozen description encoder
        (exactly what `leccr build-slots` caches).
        """
        encoder = self.description_encoder if self.description_encoder is not None else self.text_encoder
        with torch.no_grad():
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, attention_mask.bool()

    def slot_attention(self, description_ids: torch.Tensor, description_mask: torch.Tensor) -> torch.Tensor:
        """How much each semantic slot attends to each description token: [B, N, L].

        The attention of the slot queries over the description tokens in the last slot layer,
        averaged over heads (rows sum to 1; padding gets 0). Only models with slots have it.
        """
        if not (self.reads_descriptions and self.config.slots):
            raise ModelError(
                "this model has no semantic slots (a baseline, model.slots: false, or no component reads them)"
            )
        memory, mask = self._description_memory(description_ids, description_mask, None, None)
        queries = self.slot_queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        weights: list[torch.Tensor] = []
        self.slot_generator(queries, memory, mask, weights)
        return weights[-1]

    # ------------------------------------------------------------------ images

    def _visual_tokens(self, pixel_values, frames, frame_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Z_v [B, T, d_v] (CLS first) and its mask (None for images: every token is valid)."""
        if self.modality == "video":
            if frames is None:
                raise ModelError("this is a video model: give frames [B, F, frame_dim] (and frame_mask)")
            return self.video(frames, frame_mask)
        if pixel_values is None:
            raise ModelError("this is an image model: give pixel_values [B, 3, H, W]")
        tower = self.vision.vision_model
        hidden = tower(
            pixel_values=pixel_values, interpolate_pos_encoding=self.interpolate_pos_encoding
        ).last_hidden_state
        return self.vision.visual_projection(tower.post_layernorm(hidden)), None

    def _description_memory(self, ids, mask, features, features_mask) -> tuple[torch.Tensor, torch.Tensor]:
        if features is None:
            if ids is None:
                raise ModelError(
                    "this LECCR model reads descriptions: give description_ids/description_mask "
                    "or cached description_features/description_features_mask"
                )
            features, features_mask = self.encode_descriptions(ids, mask)
        elif features_mask is None:
            features_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        projection = self.description_projection
        return projection(features.to(projection.weight.dtype)), features_mask.bool()

    def _global_embedding(self, tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """h_v from Z_v or Ẑ_v: the CLS token, or for video with `pooling: mean` the mean over
        the real frames (the reference's masked mean pooling; padding frames never count)."""
        if self.modality == "video" and self.config.video.pooling == "mean":
            pooled = masked_mean(tokens, token_mask)
        else:
            pooled = tokens[:, 0]
        return F.normalize(self.image_head(pooled), dim=-1)

    def _encode_images(
        self,
        *,
        pixel_values=None,
        frames=None,
        frame_mask=None,
        description_ids=None,
        description_mask=None,
        description_features=None,
        description_features_mask=None,
    ) -> dict[str, torch.Tensor | None]:
        """Everything the losses need from the image side."""
        tokens, token_mask = self._visual_tokens(pixel_values, frames, frame_mask)
        state: dict[str, torch.Tensor | None] = {"tokens": tokens, "token_mask": token_mask}
        state.update(slots=None, slot_mask=None, slot_embeds=None)
        if not self.reads_descriptions:
            state["global"] = self._global_embedding(tokens, token_mask)
            return state
        memory, memory_mask = self._description_memory(
            description_ids, description_mask, description_features, description_features_mask
        )
        if self.config.slots:
            queries = self.slot_queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
            slots, slot_mask = self.slot_generator(queries, memory, memory_mask), None
        else:
            slots, slot_mask = memory, memory_mask
        state.update(slots=slots, slot_mask=slot_mask)
        if self.config.interaction:
            visual = self.visual_over_slots(tokens, slots, slot_mask)
            state["global"] = self._global_embedding(visual, token_mask)
            slot_states = (
                self.slots_over_visual(slots, tokens, token_mask) if uses_slot_embeddings(self.config) else None
            )
        else:
            state["global"] = self._global_embedding(tokens, token_mask)
            slot_states = slots
        if uses_slot_embeddings(self.config):
            state["slot_embeds"] = F.normalize(self.slot_head(slot_states), dim=-1)
        return state

    def embed_images(
        self,
        *,
        pixel_values=None,
        frames=None,
        frame_mask=None,
        description_ids=None,
        description_mask=None,
        description_features=None,
        description_features_mask=None,
    ) -> ImageEmbeddings:
        """h_v [B, D] and (LECCR) the slot embeddings m̂ [B, N, D], all L2-normalized.

        Give the descriptions either as token ids (encoded here with F_c) or as cached features.
        """
        state = self._encode_images(
            pixel_values=pixel_values,
            frames=frames,
            frame_mask=frame_mask,
            description_ids=description_ids,
            description_mask=description_mask,
            description_features=description_features,
            description_features_mask=description_features_mask,
        )
        slot_mask = state["slot_mask"] if state["slot_embeds"] is not None else None
        return ImageEmbeddings(state["global"], state["slot_embeds"], slot_mask)

    # ------------------------------------------------------------------ scoring and training

    def slot_scores(self, text_embeds: torch.Tensor, images: ImageEmbeddings) -> torch.Tensor:
        """[T, I] best-slot similarities max_k m̂_{i,k}·h_t (padded slots never win)."""
        check_slot_embeddings(images.slot_embeds is not None)
        per_slot = torch.einsum("ikd,td->tik", images.slot_embeds, text_embeds.to(images.slot_embeds.dtype))
        return best_slot_scores(per_slot, images.slot_mask)

    def score(self, text_embeds: torch.Tensor, images: ImageEmbeddings, fusion: float | None = None) -> torch.Tensor:
        """[T, I] similarities: h_t·h_v, or with `fusion` α: α·h_t·h_v + (1 − α)·max_k m̂_k·h_t.

        (The min-max fused scoring of video needs the whole matrices: `retrieval.metrics.minmax_fused_rows`.)
        """
        scores = text_embeds @ images.global_embeds.T
        if fusion is None:
            return scores
        return fuse_scores(scores, self.slot_scores(text_embeds, images), fusion)

    def forward(self, batch: dict[str, torch.Tensor], loss_config: LossConfig) -> LeccrOutput:
        """The training loss of one batch (see the README section "The model" for the formula).

        `image_index` must identify images across the whole dataset (e.g. the image's row in the
        split), not positions in the batch: in multi-process training rows from different
        processes with the same value are positives too.
        """
        config = self.config
        state = self._encode_images(**image_inputs(batch))
        english = self.embed_texts(batch["source_ids"], batch["source_mask"])
        target = self.embed_texts(batch["target_ids"], batch["target_mask"])
        image, ids = state["global"], batch.get("image_index")
        temperature = self.temperature.clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)

        leccr = config.variant == "leccr"
        guided = leccr and config.english_guidance
        terms = {
            "itc_vs": losses.itc_loss(image, english, temperature, ids),
            "itc_st": losses.itc_loss(english, target, temperature, ids),
            "itc_vt": losses.itc_loss(image, target, temperature, ids),
        }
        loss = terms["itc_vs"] + terms["itc_st"] + (1 - loss_config.w_kl if guided else 1.0) * terms["itc_vt"]
        slot_embeds, slot_mask = state["slot_embeds"], state["slot_mask"]
        if leccr and config.multi_level_matching:
            terms["slot_match_s"] = losses.slot_matching_loss(slot_embeds, english, temperature, ids, slot_mask)
            terms["slot_match_t"] = losses.slot_matching_loss(slot_embeds, target, temperature, ids, slot_mask)
            loss = loss + loss_config.w_c * (terms["slot_match_s"] + terms["slot_match_t"])
        if guided:
            terms["english_kl"] = losses.english_guided_kl(
                image, english, target, slot_embeds, loss_config.kl_alpha, slot_mask
            )
            loss = loss + loss_config.w_kl * terms["english_kl"]
        if leccr and config.description_vision:
            slot_side = F.normalize(self.description_vision_slot_head(state["slots"]), dim=-1)
            token_side = F.normalize(self.description_vision_token_head(state["tokens"]), dim=-1)
            terms["description_vision"] = losses.description_vision_loss(
                slot_side, token_side, ids, slot_mask, state["token_mask"]
            )
            loss = loss + loss_config.w_cv * terms["description_vision"]
        if leccr and config.slot_diversity:
            terms["slot_diversity"] = losses.slot_diversity(state["slots"], slot_mask)
            loss = loss + loss_config.w_reg * terms["slot_diversity"]
        return LeccrOutput(loss, {name: value.detach() for name, value in terms.items()})

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json, the encoders' HF configs, the tokenizer and model.safetensors (atomically)."""
        meta = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "modality": self.modality,
            "frame_dim": self.frame_dim,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "image_size": self.image_size,
            "interpolate_pos_encoding": self.interpolate_pos_encoding,
            "preprocessing": dataclasses.asdict(self.preprocessing),
            "model": dataclasses.asdict(self.config),
        }
        with atomic_directory(Path(folder), overwrite=True) as temporary:
            (temporary / "config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            self.text_encoder.config.save_pretrained(temporary / "text")
            if self.modality == "image":
                self.vision.config.save_pretrained(temporary / "vision")
            if self.description_encoder is not None:
                self.description_encoder.config.save_pretrained(temporary / "description_encoder")
            self.tokenizer.save_pretrained(temporary)
            save_model(self, str(temporary / "model.safetensors"))
