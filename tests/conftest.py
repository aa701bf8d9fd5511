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
