"""Shared fixtures: tiny local models and small corpora. Nothing here touches the network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models gain nothing from intra-op threads, and on a busy 2-core machine (or with the
# two-process tests) spinning OpenMP threads make them 20x slower
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
# the real Multi30K text ships beside the repository (../shared); clones elsewhere find it by
# LECCR_MULTI30K or at the workplace's fixed location
MULTI30K = next(
    (
        Path(p)
        for p in (os.environ.get("LECCR_MULTI30K", ""), REPO.parent / "shared/data/multi30k", "/work/shared/data/multi30k")
        if p and (Path(p) / "task1").is_dir()
    ),
    REPO.parent / "shared/data/multi30k",
)


@pytest.fixture(scope="session")
def multi30k_text() -> Path:
    """The real Multi30K text layout (task1/, task2/) shipped beside the repository."""
    if not (MULTI30K / "task1").is_dir():
        pytest.skip(f"Multi30K text not found at {MULTI30K}")
    return MULTI30K


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIPVisionModelWithProjection folder (32 px, patch 8)."""
    from tiny_models import build_tiny_clip_vision

    return build_tiny_clip_vision(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT folder with a word-level tokenizer."""
    from tiny_models import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA folder (model + processor with a chat template)."""
    from tiny_models import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_marian_dir(tmp_path_factory) -> Path:
    """A tiny Marian-like seq2seq folder (model + word-level tokenizer)."""
    from tiny_models import build_tiny_marian

    return build_tiny_marian(tmp_path_factory.mktemp("tiny-marian"))


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (120 images: 90 train, 15 val, 15 test; de, fr, cs). Read-only."""
    from leccr_cli.data.synth import build_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "corpus"
    build_synthetic(out, images=120, seed=3, image_size=32)
    return out


def tiny_recipe(corpus: Path, **blocks) -> dict:
    """A raw recipe for tiny from-scratch encoders on `corpus` (no dropout, so runs are comparable).

    Keyword arguments update whole blocks, e.g. optim={"max_steps": 4}.
    """
    recipe = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "corpus": str(corpus),
            "target_langs": ["de", "fr", "cs"],
            "descriptions": "synthetic",
            "train_transform": "resize_center_crop",
        },
        "model": {
            "vision": {
                "name_or_path": None,
                "image_size": 32,
                "projection_dim": 32,
                "config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "patch_size": 8},
            },
            "text": {
                "name_or_path": None,
                "max_tokens": 24,
                "description_max_tokens": 48,
                "pooling": "mean",
                "tokenizer": {"vocab_size": 500},
                "config": {
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "max_position_embeddings": 64,
                    "hidden_dropout_prob": 0.0,
                    "attention_probs_dropout_prob": 0.0,
                },
            },
            "joint_dim": 32,
            "num_slots": 2,
            "slot_layers": 1,
            "interaction_layers": 1,
            "heads": 4,
        },
        "optim": {"lr": 2e-3, "new_layer_lr_scale": 1.0, "warmup_ratio": 0.0, "max_steps": 6, "batch_size": 16},
        "eval": {"every_steps": 3, "batch_size": 64},
        "train": {"log_every_steps": 1, "keep_checkpoints": 2},
    }
    for block, values in blocks.items():
        if isinstance(values, dict) and isinstance(recipe.get(block), dict):
            recipe[block] = {**recipe[block], **values}
        else:
            recipe[block] = values
    return recipe


@pytest.fixture(scope="session")
def trained_run(synthetic_corpus, tmp_path_factory) -> Path:
    """A run folder of `tiny_recipe` trained for 6 steps (validation every 3) on the synthetic corpus."""
    from leccr_cli.config import recipe_from_dict
    from leccr_cli.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(recipe_from_dict(tiny_recipe(synthetic_corpus)), out)
    return out
