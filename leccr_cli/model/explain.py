"""What a model's semantic slots attend to: each slot's attention over the words of a description (the app's slot view).

`LeccrModel.slot_attention` gives the attention of the N slot queries over the description
tokens in the last slot layer, averaged over heads; `slot_words` sums it per word (the
tokenizer's word ids) and returns each slot's share of attention on every word.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leccr_cli.model.leccr import LeccrModel


@dataclass
class SlotWords:
    """How one slot's attention spreads over the words of a description."""

    slot: int
    weights: list[float]  # one per word, summing to 1 over the words


def slot_words(model: LeccrModel, description: str) -> tuple[list[str], list[SlotWords]]:
    """The words of a description (as the model reads it, cut at its token limit) and each slot's attention over them.

    Token weights (last slot layer, averaged over heads) are summed per word; special tokens are left out.
    """
    if not (model.reads_descriptions and model.config.slots) or not description.strip():
        return [], []
    tokenizer = model.tokenizer
    encoded = tokenizer(
        [description], truncation=True, max_length=model.config.text.description_max_tokens,
        return_tensors="pt", return_offsets_mapping=True,
    )  # fmt: skip
    device = next(model.text_encoder.parameters()).device
    with torch.inference_mode():
        attention = model.slot_attention(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))[0].cpu()
    word_ids = encoded.word_ids(0)
    offsets = encoded["offset_mapping"][0].tolist()
    spans: dict[int, list[int]] = {}
    for position, word in enumerate(word_ids):
        if word is not None:
            start, stop = offsets[position]
            span = spans.setdefault(word, [start, stop])
            span[0], span[1] = min(span[0], start), max(span[1], stop)
    order = sorted(spans)
    words = [description[spans[w][0] : spans[w][1]] for w in order]
    slots = []
    for slot in range(attention.shape[0]):
        per_word = dict.fromkeys(order, 0.0)
        for position, word in enumerate(word_ids):
            if word is not None:
                per_word[word] += float(attention[slot, position])
        total = sum(per_word.values()) or 1.0
        slots.append(SlotWords(slot + 1, [per_word[w] / total for w in order]))
    return words, slots
