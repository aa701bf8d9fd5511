"""Batches: dataset items into the model's batch dict (tokenized texts, stacked images, padded features)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from leccr_cli.data.datasets import VisualSource


class Collator:
    """Turns dataset items into the model's batch dict (tokenizing texts, stacking visuals, padding
    cached description features to the batch's longest row)."""

    def __init__(
        self, tokenizer, caption_max_tokens: int, description_max_tokens: int, frames=None, max_frames: int = 64
    ):
        self.tokenizer = tokenizer
        self.caption_max_tokens = caption_max_tokens
        self.description_max_tokens = description_max_tokens
        self.frames = frames
        self.max_frames = max_frames

    @classmethod
    def for_model(cls, model, visual: "VisualSource | None" = None) -> "Collator":
        """The collator of `model`, with the model's own token limits (and frame features for video)."""
        config = model.config
        return cls(
            model.tokenizer,
            config.text.max_tokens,
            config.text.description_max_tokens,
            frames=visual.frames if visual is not None and visual.modality == "video" else None,
            max_frames=config.video.max_frames,
        )

    def _tokenize(self, texts: list[str], max_length: int):
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {}
        if "visual" in items[0]:
            if self.frames is not None:
                batch["frames"], batch["frame_mask"] = self.frames.batch([i["visual"] for i in items], self.max_frames)
            else:
                batch["pixel_values"] = torch.stack([i["visual"] for i in items])
            batch["image_index"] = torch.tensor([i["image_index"] for i in items], dtype=torch.long)
        for key, prefix in (("source", "source"), ("target", "target"), ("text", "text")):
            if key in items[0]:
                batch[f"{prefix}_ids"], batch[f"{prefix}_mask"] = self._tokenize(
                    [i[key] for i in items], self.caption_max_tokens
                )
        if "description" in items[0]:
            batch["description_ids"], batch["description_mask"] = self._tokenize(
                [i["description"] for i in items], self.description_max_tokens
            )
        if "description_features" in items[0]:
            batch["description_features"], batch["description_features_mask"] = pad_features(
                [i["description_features"] for i in items]
            )
        if "index" in items[0]:
            batch["index"] = torch.tensor([i["index"] for i in items], dtype=torch.long)
        return batch


def pad_features(rows: list) -> tuple:
    """Stack [length_i, D] feature rows into [B, max length, D] (zero padding) and a [B, max length] bool mask."""
    longest = max(r.shape[0] for r in rows)
    features = rows[0].new_zeros(len(rows), longest, rows[0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        features[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return features, mask
