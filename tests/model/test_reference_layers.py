"""The reference's cross-attention layer, weight decay by name and zero slot queries."""

from __future__ import annotations


import pytest
import torch
from typer.testing import CliRunner

from leccr_cli.config import recipe_from_dict, recipe_to_dict
from leccr_cli.model.factory import build_model
from leccr_cli.model.layers import CrossAttentionLayer
from leccr_cli.training.pipeline import build_optimizer

runner = CliRunner()

# the table, read from the reference's configs and run scripts


def test_cross_attention_layer_with_the_reference_settings():
    d = 512
    layer = CrossAttentionLayer(d, 8, mlp_ratio=1, dropout=0.1)
    # the reference's layer: attention (4d^2 + 4d), two Linear(d, d), norm2; its norm1 (2d) is never used
    reference_used = (4 * d * d + 4 * d) + 2 * (d * d + d) + 2 * d
    assert sum(p.numel() for p in layer.parameters()) == reference_used == 6 * d * d + 8 * d
    assert layer.attention.dropout == 0.1
    assert [m.p for m in layer.modules() if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1]
    default = CrossAttentionLayer(d, 8)
    assert sum(p.numel() for p in default.parameters()) == 12 * d * d + 11 * d
    assert not any(isinstance(m, torch.nn.Dropout) for m in default.modules())
    # the weights keep the names of models saved before these settings existed, which still load
    names = {
        "attention.in_proj_weight",
        "attention.in_proj_bias",
        "attention.out_proj.weight",
        "attention.out_proj.bias",
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "norm.weight",
        "norm.bias",
    }
    assert set(default.state_dict()) == set(layer.state_dict()) == names

    small = CrossAttentionLayer(16, 4, mlp_ratio=1, dropout=0.1).eval()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    attended, _ = small.attention(query, memory, memory)
    first, second = small.mlp[0], small.mlp[2]
    expected = small.norm(query + second(torch.nn.functional.gelu(first(attended))))
    assert torch.allclose(small(query, memory), expected, atol=1e-5)
    small.train()
    assert not torch.equal(small(query, memory), small(query, memory))  # dropout while training


@pytest.fixture(scope="module")
def paper_model_recipe(tiny_clip_dir, tiny_bert_dir, tmp_path_factory):
    raw = {
        "data": {"corpus": str(tmp_path_factory.mktemp("unused")), "target_langs": ["de"]},
        "model": {
            "vision": {"name_or_path": str(tiny_clip_dir), "image_size": 32},
            "text": {"name_or_path": str(tiny_bert_dir), "max_tokens": 32, "description_max_tokens": 64},
            "joint_dim": 16,
            "num_slots": 2,
            "slot_layers": 1,
            "interaction_layers": 1,
            "heads": 4,
            "mlp_ratio": 1,
            "dropout": 0.1,
            "slot_init": "zeros",
            "description_vision_dim": 24,
        },
        "optim": {"no_decay": "names", "betas": [0.9, 0.98], "eps": 1e-6},
    }
    recipe = recipe_from_dict(raw)
    torch.manual_seed(0)
    return recipe, build_model(recipe.model)


def test_weight_decay_by_name_skips_exactly_the_biases_and_norms(paper_model_recipe):
    recipe, model = paper_model_recipe
    optimizer = build_optimizer(model, recipe)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    assert no_decay == {n for n in names.values() if "bias" in n.lower() or "norm" in n.lower()}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    # HF CLIP's LayerNorms (pre_layrnorm, layer_norm1/2, post_layernorm), BERT's LayerNorm, our cross-attention norm
    for part in (
        "pre_layrnorm.weight",
        "layer_norm1.weight",
        "post_layernorm.weight",
        "LayerNorm.weight",
        ".norm.weight",
    ):
        assert any(part in n for n in no_decay), part
    # decayed as in the reference: the temperature, the slot queries, the position and class embeddings
    for part in ("temperature", "slot_queries", "position_embedding.weight", "class_embedding"):
        assert any(part in n for n in decay), part
    by_ndim = build_optimizer(model, recipe_from_dict({**recipe_to_dict(recipe), "optim": {"no_decay": "ndim"}}))
    ndim_no_decay = {names[id(p)] for g in by_ndim.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert ndim_no_decay == {n for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2}
    assert by_ndim.defaults["betas"] == (0.9, 0.999) and by_ndim.defaults["eps"] == 1e-8


def test_zero_slot_queries_and_the_description_vision_width(paper_model_recipe):
    _, model = paper_model_recipe
    assert torch.equal(model.slot_queries, torch.zeros(2, 24))
    assert model.description_vision_slot_head.out_features == 24 == model.description_vision_token_head.out_features
