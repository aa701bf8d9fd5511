"""Shared fixtures: tiny local models and small corpora. Nothing here touches the network."""

from __future__ import annotations

import os
import shutil
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

REPO = Path(__file__).resolve().parents[1]
# the real Multi30K text (task1/, task2/): the folder LECCR_MULTI30K names, else shared/data/multi30k
# beside the repository; tests that need it are skipped without it
MULTI30K = Path(os.environ.get("LECCR_MULTI30K") or REPO.parent / "shared" / "data" / "multi30k")


@pytest.fixture(scope="session")
def multi30k_text() -> Path:
    """The real Multi30K text layout (task1/, task2/) shipped beside the repository."""
    if not (MULTI30K / "task1").is_dir():
        pytest.skip(f"Multi30K text not found at {MULTI30K}")
    return MULTI30K


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIPVisionModelWithProjection folder (32 px, patch 8)."""
    from leccr_cli.testing import build_tiny_clip_vision

    return build_tiny_clip_vision(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT folder with a word-level tokenizer."""
    from leccr_cli.testing import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA folder (model + processor with a chat template)."""
    from leccr_cli.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_marian_dir(tmp_path_factory) -> Path:
    """A tiny Marian-like seq2seq folder (model + word-level tokenizer)."""
    from leccr_cli.testing import build_tiny_marian

    return build_tiny_marian(tmp_path_factory.mktemp("tiny-marian"))


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (120 images: 90 train, 15 val, 15 test; de, fr, cs). Read-only."""
    from leccr_cli.corpus.synthetic.image import build_synthetic

    out = tmp_path_factory.mktemp("synthetic") / "corpus"
    build_synthetic(out, images=120, seed=3, image_size=32)
    return out


@pytest.fixture(scope="session")
def trained_run(synthetic_corpus, tmp_path_factory) -> Path:
    """A run folder of `tiny_recipe` trained for 6 steps (validation every 3) on the synthetic corpus."""
    from leccr_cli.config import recipe_from_dict
    from leccr_cli.testing import tiny_recipe
    from leccr_cli.training.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(recipe_from_dict(tiny_recipe(synthetic_corpus)), out)
    return out


@pytest.fixture
def own_run(trained_run, tmp_path) -> Path:
    """A copy of `trained_run` for a test that writes into its run folder (eval files): the shared run stays as is."""
    return Path(shutil.copytree(trained_run, tmp_path / "own-run"))
