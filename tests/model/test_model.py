"""The LECCR model: building, switches, gradients, description encoders, saving, errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from leccr_cli.config import LossConfig, ModelConfig, TextConfig, VideoConfig, VisionConfig, load_recipe
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.errors import InvalidArgument, ModelError
from leccr_cli.model.factory import build_model, load_model
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel
from leccr_cli.testing import raises_on_command_line

SWITCHES = ("slots", "interaction", "multi_level_matching", "english_guidance", "description_vision", "slot_diversity")
LOSS = LossConfig(w_c=0.3, w_kl=0.4, w_cv=0.2, w_reg=0.1)
ALL_TERMS = {
    "itc_vs", "itc_st", "itc_vt", "slot_match_s", "slot_match_t", "english_kl", "description_vision", "slot_diversity",
}


def tiny_config(clip_dir, bert_dir, **changes) -> ModelConfig:
    config = ModelConfig(
        vision=VisionConfig(name_or_path=str(clip_dir), image_size=32),
        text=TextConfig(name_or_path=str(bert_dir), max_tokens=32, description_max_tokens=64),
        joint_dim=16,
        num_slots=3,
        slot_layers=1,
        interaction_layers=1,
        heads=4,
    )
    return dataclasses.replace(config, **changes)


def build(config: ModelConfig, seed: int = 0, **kwargs) -> LeccrModel:
    torch.manual_seed(seed)
    return build_model(config, **kwargs)


def pixels(model: LeccrModel, paths) -> torch.Tensor:
    size = model.image_size
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size)), dtype=np.float32) / 255 for p in paths]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean, std = torch.tensor(model.image_mean)[:, None, None], torch.tensor(model.image_std)[:, None, None]
    return (images - mean) / std


def corpus_batch(model: LeccrModel, corpus_dir, count: int = 4, target_lang: str = "de") -> dict:
    """`count` training images of the synthetic corpus with their first English caption,
    its machine translation and the image's description."""
    corpus = Corpus.open(corpus_dir)
    rows = corpus.images("train")[:count]
    paths = corpus.image_paths("train")
    first = lambda lang: {c.image_id: c.text for c in reversed(corpus.captions("train", lang))}  # noqa: E731
    english, target, descriptions = first("en"), first(target_lang), corpus.descriptions("synthetic")
    ids = [r.image_id for r in rows]
    source = model.tokenize([english[i] for i in ids], model.config.text.max_tokens)
    translated = model.tokenize([target[i] for i in ids], model.config.text.max_tokens)
    described = model.tokenize([descriptions[i] for i in ids], model.config.text.description_max_tokens)
    return {
        "pixel_values": pixels(model, [paths[i] for i in ids]),
        "source_ids": source["input_ids"],
        "source_mask": source["attention_mask"],
        "target_ids": translated["input_ids"],
        "target_mask": translated["attention_mask"],
        "description_ids": described["input_ids"],
        "description_mask": described["attention_mask"],
        "image_index": torch.arange(len(ids)),
    }


@pytest.fixture(scope="module")
def config(tiny_clip_dir, tiny_bert_dir) -> ModelConfig:
    return tiny_config(tiny_clip_dir, tiny_bert_dir)


@pytest.fixture(scope="module")
def batch(config, synthetic_corpus) -> dict:
    return corpus_batch(build(config), synthetic_corpus)


def weighted_sum(terms: dict, loss: LossConfig) -> torch.Tensor:
    guided = "english_kl" in terms
    total = terms["itc_vs"] + terms["itc_st"] + (1 - loss.w_kl if guided else 1.0) * terms["itc_vt"]
    if "slot_match_s" in terms:
        total = total + loss.w_c * (terms["slot_match_s"] + terms["slot_match_t"])
    if guided:
        total = total + loss.w_kl * terms["english_kl"]
    if "description_vision" in terms:
        total = total + loss.w_cv * terms["description_vision"]
    if "slot_diversity" in terms:
        total = total + loss.w_reg * terms["slot_diversity"]
    return total


# ------------------------------------------------------------------ forward, backward, gradients


def test_forward_backward_on_four_synthetic_images(config, batch):
    model = build(config)
    assert model.image_size == 32 and model.modality == "image" and not model.interpolate_pos_encoding
    output = model(batch, LOSS)
    assert set(output.terms) == ALL_TERMS
    assert torch.isfinite(output.loss) and output.loss.requires_grad
    assert all(not t.requires_grad and t.ndim == 0 for t in output.terms.values())
    assert output.loss.item() == pytest.approx(weighted_sum(output.terms, LOSS).item(), rel=1e-6)
    output.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for module in ("vision", "text_encoder", "slot_generator", "visual_over_slots", "slots_over_visual", "slot_head",
                   "description_projection", "description_vision_slot_head", "description_vision_token_head"):
        assert sum(p.grad.abs().sum() for p in getattr(model, module).parameters()) > 0, module
    assert model.temperature.grad is not None and model.slot_queries.grad.abs().sum() > 0


def test_embeddings_are_normalized_with_one_slot_embedding_per_slot(config, batch):
    model = build(config).eval()
    with torch.no_grad():
        images = model.embed_images(
            pixel_values=batch["pixel_values"],
            description_ids=batch["description_ids"],
            description_mask=batch["description_mask"],
        )
        texts = model.embed_texts(batch["source_ids"], batch["source_mask"])
    assert images.global_embeds.shape == (4, 16) and images.slot_embeds.shape == (4, 3, 16) and images.slot_mask is None
    assert torch.allclose(images.global_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(images.slot_embeds.norm(dim=-1), torch.ones(4, 3), atol=1e-5)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(4), atol=1e-5)
    # scoring: plain dot products, or fused with the best slot
    assert torch.allclose(model.score(texts, images), texts @ images.global_embeds.T)
    fused = model.score(texts, images, fusion=0.7)
    best_slot = torch.einsum("ikd,td->tik", images.slot_embeds, texts).max(dim=2).values
    assert torch.allclose(fused, 0.7 * texts @ images.global_embeds.T + 0.3 * best_slot, atol=1e-6)
    # cached description features give the same embeddings as description ids
    features, mask = model.encode_descriptions(batch["description_ids"], batch["description_mask"])
    with torch.no_grad():
        cached = model.embed_images(
            pixel_values=batch["pixel_values"], description_features=features, description_features_mask=mask
        )
    assert torch.allclose(cached.global_embeds, images.global_embeds, atol=1e-6)


def test_every_switch_off_is_exactly_the_baseline(config, batch):
    baseline = build(dataclasses.replace(config, variant="baseline")).eval()
    switched_off = build(dataclasses.replace(config, **{s: False for s in SWITCHES})).eval()
    assert switched_off.state_dict().keys() == baseline.state_dict().keys()
    base_out, off_out = baseline(batch, LOSS), switched_off(batch, LOSS)
    assert set(base_out.terms) == set(off_out.terms) == {"itc_vs", "itc_st", "itc_vt"}
    assert torch.equal(base_out.loss, off_out.loss)
    assert base_out.loss.item() == pytest.approx(sum(base_out.terms.values()).item(), rel=1e-6)
    # the baseline reads no descriptions at all
    no_descriptions = {k: v for k, v in batch.items() if not k.startswith("description")}
    assert torch.equal(baseline(no_descriptions, LOSS).loss, base_out.loss)
    with torch.no_grad():
        assert baseline.embed_images(pixel_values=batch["pixel_values"]).slot_embeds is None


def test_each_switch_changes_the_loss(config, batch):
    full = build(config).eval()
    full_loss = full(batch, LOSS).loss.item()
    for switch in SWITCHES:
        model = build(dataclasses.replace(config, **{switch: False})).eval()
        missing, _ = model.load_state_dict(full.state_dict(), strict=False)
        assert not missing, switch  # a switched-off model is the full model minus some layers
        output = model(batch, LOSS)
        assert abs(output.loss.item() - full_loss) > 1e-5, switch
        assert output.loss.item() == pytest.approx(weighted_sum(output.terms, LOSS).item(), rel=1e-6)
    assert "english_kl" not in build(dataclasses.replace(config, english_guidance=False))(batch, LOSS).terms


def test_no_gradient_through_the_shared_description_branch(config, batch):
    model = build(config)
    images = model.embed_images(
        pixel_values=batch["pixel_values"],
        description_ids=batch["description_ids"],
        description_mask=batch["description_mask"],
    )
    (images.global_embeds.sum() + images.slot_embeds.sum()).backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.description_projection.weight.grad.abs().sum() > 0
    # shared mode encodes with the live text encoder
    model.eval()
    features, mask = model.encode_descriptions(batch["description_ids"], batch["description_mask"])
    live = model.text_encoder(
        input_ids=batch["description_ids"], attention_mask=batch["description_mask"]
    ).last_hidden_state
    assert not features.requires_grad and torch.equal(features, live.detach()) and mask.dtype == torch.bool


def test_frozen_description_encoder_gets_no_gradient(config, batch):
    model = build(dataclasses.replace(config, description_encoder="frozen"))
    frozen = model.description_encoder
    assert frozen is not None and not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    model.train()
    assert not frozen.training and model.text_encoder.training
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    model(batch, LOSS).loss.backward()
    assert all(p.grad is None for p in frozen.parameters())
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    # the copy started as the pretrained text encoder; the live encoder moved away from it
    model.eval()
    features, _ = model.encode_descriptions(batch["description_ids"], batch["description_mask"])
    with torch.no_grad():
        live = model.text_encoder(
            input_ids=batch["description_ids"], attention_mask=batch["description_mask"]
        ).last_hidden_state
    pristine = (
        build(config).eval().text_encoder(input_ids=batch["description_ids"], attention_mask=batch["description_mask"])
    )
    assert torch.allclose(features, pristine.last_hidden_state, atol=1e-6)
    assert not torch.allclose(features, live, atol=1e-3)


@pytest.mark.parametrize("slots", [True, False])
def test_each_switch_alone_trains_every_trainable_parameter(config, batch, slots):
    for switch in SWITCHES[1:]:
        model = build(dataclasses.replace(config, slots=slots, **{s: s == switch for s in SWITCHES[1:]}))
        model(batch, LOSS).loss.backward()
        untrained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not untrained, (switch, untrained)
    # English guidance alone reads the slot embeddings only through its detached target:
    # the layers that make them stay as initialised
    guided = build(dataclasses.replace(config, **{s: s in ("slots", "english_guidance") for s in SWITCHES}))
    assert not any(p.requires_grad for p in guided.slot_head.parameters())
    assert not guided.slot_queries.requires_grad and id(guided.slot_queries) not in map(id, guided.new_parameters())


def test_parameter_groups_cover_every_trainable_parameter_once(config):
    for changes in ({}, {"description_encoder": "frozen"}, {"variant": "baseline"}):
        model = build(dataclasses.replace(config, **changes))
        pretrained, new = model.pretrained_parameters(), model.new_parameters()
        ids = [id(p) for p in pretrained + new]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
        assert {id(p) for p in model.text_encoder.parameters()} <= set(id(p) for p in pretrained)
        assert id(model.temperature) in {id(p) for p in new}


def test_autocast_forward_backward_is_finite(config, batch):
    batch = {k: v[:2] for k, v in batch.items()}  # CPU autocast is slow; two images show the numerics
    for dtype in (torch.bfloat16, torch.float16):
        model = build(config)
        with torch.autocast("cpu", dtype=dtype):
            output = model(batch, LOSS)
        assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss), dtype
        output.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), dtype


# ------------------------------------------------------------------ variants of the architecture


def test_mean_pooling_is_the_masked_token_mean(config, batch):
    model = build(dataclasses.replace(config, text=dataclasses.replace(config.text, pooling="mean"))).eval()
    ids, mask = batch["source_ids"], batch["source_mask"]
    hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(len(ids))])
    expected = torch.nn.functional.normalize(model.text_head(expected), dim=-1)
    assert torch.allclose(model.embed_texts(ids, mask), expected, atol=1e-6)
    cls = build(config).eval()
    assert not torch.allclose(cls.embed_texts(ids, mask), expected, atol=1e-3)


def test_slots_off_uses_the_description_tokens_and_ignores_padding(config, batch):
    model = build(dataclasses.replace(config, slots=False)).eval()
    features, mask = model.encode_descriptions(batch["description_ids"], batch["description_mask"])
    assert not mask.all()  # descriptions of different lengths: some rows are padded
    clean = features.masked_fill(~mask[..., None], 0.0)
    noisy = features.masked_fill(~mask[..., None], 50.0)
    inputs = {k: v for k, v in batch.items() if not k.startswith("description")}
    losses = [
        model({**inputs, "description_features": f, "description_features_mask": mask}, LOSS) for f in (clean, noisy)
    ]
    assert losses[0].loss.item() == pytest.approx(losses[1].loss.item(), abs=1e-5)
    with torch.no_grad():
        images = model.embed_images(
            pixel_values=batch["pixel_values"], description_features=clean, description_features_mask=mask
        )
    assert images.slot_embeds.shape[:2] == mask.shape and torch.equal(images.slot_mask, mask)
    # gallery chunks with different description lengths concatenate with padding
    both = ImageEmbeddings.cat(
        [images, ImageEmbeddings(images.global_embeds[:1], images.slot_embeds[:1, :2], mask[:1, :2])]
    )
    assert both.slot_embeds.shape == (5, mask.shape[1], 16) and both.slot_mask[4, 2:].sum() == 0
    texts = model.embed_texts(batch["source_ids"], batch["source_mask"]).detach()
    fused = model.score(texts, images, fusion=0.5)
    best = torch.einsum("ikd,td->tik", images.slot_embeds, texts).masked_fill(~mask[None], -2.0).max(dim=2).values
    assert torch.allclose(fused, 0.5 * texts @ images.global_embeds.T + 0.5 * best, atol=1e-6)


def test_interaction_off_builds_no_interaction_layers(config, batch):
    model = build(dataclasses.replace(config, interaction=False))
    assert not hasattr(model, "visual_over_slots") and not hasattr(model, "slots_over_visual")
    model(batch, LOSS).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    only_regulariser = dataclasses.replace(config, multi_level_matching=False, english_guidance=False)
    model = build(only_regulariser)
    assert not hasattr(model, "slot_head") and not hasattr(model, "slots_over_visual")
    model(batch, LOSS).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with raises_on_command_line(InvalidArgument, "--fusion needs slot embeddings", "evaluate"):
        with torch.no_grad():
            images = model.embed_images(
                pixel_values=batch["pixel_values"],
                description_ids=batch["description_ids"],
                description_mask=batch["description_mask"],
            )
            model.score(torch.zeros(1, 16), images, fusion=0.5)


def _video_model(tiny_bert_dir, layer: dict | None = None, **video) -> LeccrModel:
    config = ModelConfig(
        vision=VisionConfig(name_or_path=None, config={}),
        video=VideoConfig(**{"width": 24, "layers": 1, "heads": 4, "max_frames": 6, **video}),
        text=TextConfig(name_or_path=str(tiny_bert_dir), max_tokens=16, description_max_tokens=32),
        joint_dim=16,
        num_slots=2,
        slot_layers=1,
        interaction_layers=1,
        heads=4,
        **(layer or {}),
    )
    return build(config, modality="video", frame_dim=12).eval()


@pytest.mark.parametrize(
    "video",
    [{"pooling": "mean"}, {"pooling": "cls"}, {"pooling": "mean", "positions": True, "width": None, "heads": 3}],
)
def test_padding_frames_never_change_a_video(tiny_bert_dir, video):
    model = _video_model(tiny_bert_dir, **video)
    assert (model.video.cls is None) == (video["pooling"] == "mean")
    assert model.video.width == (video.get("width", 24) or 12) and (model.video.input is None) == ("width" in video)
    descriptions = model.tokenize(["a man is playing in the street", "two dogs in the water", "a woman sitting"], 32)
    frames = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0))
    lengths = [5, 3, 1]
    alone = [
        model.embed_images(
            frames=frames[i : i + 1, :length],
            frame_mask=torch.ones(1, length, dtype=torch.bool),
            description_ids=descriptions["input_ids"][i : i + 1],
            description_mask=descriptions["attention_mask"][i : i + 1],
        )
        for i, length in enumerate(lengths)
    ]
    frame_mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    padded = torch.cat([frames, torch.zeros(3, 1, 12)], dim=1).masked_fill(~frame_mask[..., None], 99.0)
    together = model.embed_images(
        frames=padded,
        frame_mask=frame_mask,
        **{"description_ids": descriptions["input_ids"], "description_mask": descriptions["attention_mask"]},
    )
    for i in range(3):
        assert torch.allclose(together.global_embeds[i], alone[i].global_embeds[0], atol=1e-5)
        assert torch.allclose(together.slot_embeds[i], alone[i].slot_embeds[0], atol=1e-5)
    if video["pooling"] == "mean":  # h_v is the projected mean of the real frames' interaction outputs
        tokens, mask = model.video(padded, frame_mask)
        memory, memory_mask = model._description_memory(
            descriptions["input_ids"], descriptions["attention_mask"], None, None
        )
        slots = model.slot_generator(model.slot_queries.expand(3, -1, -1), memory, memory_mask)
        visual = model.visual_over_slots(tokens, slots)
        expected = torch.stack([visual[i, :length].mean(0) for i, length in enumerate(lengths)])
        assert torch.allclose(
            together.global_embeds, torch.nn.functional.normalize(model.image_head(expected), dim=-1), atol=1e-5
        )


def test_video_model_trains_saves_and_loads(tiny_bert_dir, tmp_path):
    model = _video_model(tiny_bert_dir)
    captions = model.tokenize(["a man playing", "two dogs", "a woman sitting"], 16)
    descriptions = model.tokenize(["a man is playing in the street", "two dogs in the water", "a woman sitting"], 32)
    frames = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0))
    frame_mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True, False, False, False, False]])
    batch = {
        "frames": frames,
        "frame_mask": frame_mask,
        "source_ids": captions["input_ids"],
        "source_mask": captions["attention_mask"],
        "target_ids": captions["input_ids"],
        "target_mask": captions["attention_mask"],
        "description_ids": descriptions["input_ids"],
        "description_mask": descriptions["attention_mask"],
        "image_index": torch.tensor([0, 1, 2]),
    }
    output = model(batch, LOSS)
    assert set(output.terms) == ALL_TERMS
    noisy = {**batch, "frames": frames.masked_fill(~frame_mask[..., None], 99.0)}
    assert model(noisy, LOSS).loss.item() == pytest.approx(output.loss.item(), abs=1e-5)
    model.train()
    model(batch, LOSS).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert {id(p) for p in model.video.parameters()} <= {id(p) for p in model.pretrained_parameters()}
    with pytest.raises(ModelError, match="max_frames=6"):
        model({**batch, "frames": torch.randn(3, 7, 12), "frame_mask": None}, LOSS)

    model.eval().save_pretrained(tmp_path / "video-model")
    loaded = load_model(tmp_path / "video-model").eval()
    assert loaded.modality == "video" and loaded.frame_dim == 12
    assert torch.equal(loaded(batch, LOSS).loss, model(batch, LOSS).loss)


def test_the_frame_encoder_takes_the_layer_settings_of_the_model(tiny_bert_dir):
    reference = _video_model(tiny_bert_dir, layer={"mlp_ratio": 1, "dropout": 0.1}, width=None, heads=4)
    default = _video_model(tiny_bert_dir, width=None, heads=4)
    layer = reference.video.layers[0]
    assert (layer.mlp[0].out_features, layer.attention.dropout, layer.dropout.p) == (
        12,
        0.1,
        0.1,
    )  # the reference's SelfAttention
    assert (default.video.layers[0].mlp[0].out_features, default.video.layers[0].attention.dropout) == (48, 0.0)


def test_video_heads_must_divide_the_frame_width(tiny_bert_dir):
    with pytest.raises(
        ModelError,
        match=r"model.video.heads=5 does not divide the frame-feature width \(model.video.width: null\) \(12\)",
    ):
        _video_model(tiny_bert_dir, width=None, heads=5)


def test_interpolated_position_embeddings(tiny_clip_dir, tiny_bert_dir, batch):
    model = build(
        tiny_config(tiny_clip_dir, tiny_bert_dir, vision=VisionConfig(name_or_path=str(tiny_clip_dir), image_size=48))
    )
    assert model.interpolate_pos_encoding and model.image_size == 48
    large = torch.nn.functional.interpolate(batch["pixel_values"], size=48, mode="bilinear")
    tokens, _ = model._visual_tokens(large, None, None)
    assert tokens.shape == (4, 1 + 6 * 6, 24)  # 48 px / patch 8, plus CLS; projection width 24
    assert torch.isfinite(model({**batch, "pixel_values": large}, LOSS).loss)


def test_demo_recipe_builds_tiny_encoders_from_scratch(synthetic_corpus):
    recipe = load_recipe("recipes/demo.yaml")
    corpus = Corpus.open(synthetic_corpus)
    texts = [c.text for c in corpus.captions("train")] + list(corpus.descriptions("synthetic").values())
    model = build(recipe.model, tokenizer_texts=texts)
    assert model.tokenizer.convert_ids_to_tokens(model.tokenize(["Malá zelená hvězda"], 8)["input_ids"][0]) == [
        "[CLS]",
        "malá",
        "zelená",
        "hvězda",
        "[SEP]",
    ]
    assert model.text_encoder.config.vocab_size == len(model.tokenizer) and model.visual_width == 64
    assert model.image_mean == (0.48145466, 0.4578275, 0.40821073)
    output = model(corpus_batch(model, synthetic_corpus, count=4, target_lang="cs"), recipe.loss)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_full_clip_checkpoint_loads_its_vision_tower(tmp_path, tiny_bert_dir, batch):
    from transformers import CLIPConfig, CLIPModel

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    clip = CLIPModel(
        CLIPConfig(text_config=small, vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=20)
    )
    clip.save_pretrained(tmp_path / "clip")
    model = build(tiny_config(tmp_path / "clip", tiny_bert_dir))
    assert model.visual_width == 20
    assert torch.equal(model.vision.visual_projection.weight, clip.visual_projection.weight)
    assert torch.isfinite(model(batch, LOSS).loss)


# ------------------------------------------------------------------ saving and loading


def test_save_and_load_rebuilds_the_same_model(config, batch, tmp_path):
    model = build(dataclasses.replace(config, description_encoder="frozen"))
    model(batch, LOSS).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()  # differ from the checkpoints
    model.eval().save_pretrained(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors", "text", "vision", "description_encoder", "tokenizer.json"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left behind
    loaded = load_model(tmp_path / "model").eval()
    assert loaded.config == model.config and loaded.image_mean == model.image_mean and loaded.image_size == 32
    assert (
        loaded.tokenize(["a red circle"], 8)["input_ids"].tolist()
        == model.tokenize(["a red circle"], 8)["input_ids"].tolist()
    )
    assert torch.equal(loaded(batch, LOSS).loss, model(batch, LOSS).loss)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # saving again over the same folder replaces it
    loaded.save_pretrained(tmp_path / "model")
    assert load_model(tmp_path / "model").config == model.config


def test_image_statistics_come_from_the_preprocessor_config(tmp_path, tiny_clip_dir, tiny_bert_dir):
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor.update(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    model = build(tiny_config(folder, tiny_bert_dir))
    assert model.image_mean == (0.5, 0.5, 0.5) and model.image_std == (0.25, 0.25, 0.25)
    (folder / "preprocessor_config.json").unlink()
    assert build(tiny_config(folder, tiny_bert_dir)).image_std == (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------ user errors


def test_user_errors_are_model_errors(tmp_path, tiny_clip_dir, tiny_bert_dir):
    from leccr_cli.testing import build_tiny_bert

    with pytest.raises(ModelError, match="'bert' model, not a CLIP vision model"):
        build_model(tiny_config(tiny_bert_dir, tiny_bert_dir))
    with pytest.raises(ModelError, match="cannot be loaded"):
        build_model(tiny_config(tmp_path / "nowhere", tiny_bert_dir))

    no_tokenizer = tmp_path / "bert-without-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, no_tokenizer / name)
    with pytest.raises(ModelError, match="no usable tokenizer"):
        build_model(tiny_config(tiny_clip_dir, no_tokenizer))

    other = build_tiny_bert(tmp_path / "other-bert", texts=["completely different words here"])
    frozen_other = tiny_config(
        tiny_clip_dir, tiny_bert_dir, description_encoder="frozen", description_encoder_name=str(other)
    )
    with pytest.raises(ModelError, match="another vocabulary"):
        build_model(frozen_other)
    same = tiny_config(
        tiny_clip_dir, tiny_bert_dir, description_encoder="frozen", description_encoder_name=str(tiny_bert_dir)
    )
    assert build_model(same).description_encoder is not None
    with pytest.raises(ModelError, match="description_encoder is 'shared'"):
        build_model(tiny_config(tiny_clip_dir, tiny_bert_dir, description_encoder_name=str(tiny_bert_dir)))

    with pytest.raises(ModelError, match="frame_dim"):
        build_model(tiny_config(tiny_clip_dir, tiny_bert_dir), modality="video")
    with pytest.raises(ModelError, match="model.heads=5 does not divide"):
        build_model(tiny_config(tiny_clip_dir, tiny_bert_dir, heads=5))
    scratch_text = TextConfig(
        name_or_path=None, config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    )
    with pytest.raises(ModelError, match="tokenizer_texts"):
        build_model(tiny_config(tiny_clip_dir, tiny_bert_dir, text=scratch_text))
    with pytest.raises(ModelError, match="is not a leccr model"):
        load_model(tiny_bert_dir)
    with pytest.raises(ModelError, match="cannot read config.json"):
        load_model(tmp_path / "nowhere")
    saved = tmp_path / "saved"
    build_model(tiny_config(tiny_clip_dir, tiny_bert_dir, variant="baseline")).save_pretrained(saved)
    meta = json.loads((saved / "config.json").read_text())
    meta["model"]["num_slot"] = 4
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="model.num_slot: unknown key"):
        load_model(saved)
