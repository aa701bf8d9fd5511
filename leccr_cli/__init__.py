"""leccr: cross-lingual cross-modal retrieval with multimodal-LLM descriptions (LECCR, ACM MM 2024).

The Python API, for notebooks and scripts (README, "Python API")::

    import leccr_cli as leccr

    recipe, model = leccr.load_run("runs/demo")        # a trained run: its recipe and best model
    queries = leccr.encode_texts(model, ["Malá zelená hvězda vlevo"])
    searcher = leccr.Searcher.open("data/photos-index")
    hits, _ = searcher.search(["ein roter Kreis"], k=5)

Names are imported on first use, so `import leccr_cli` (and `leccr --help`) loads neither
torch nor gradio. Errors are the typed errors of `leccr_cli.errors`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    # recipes, runs, models
    "Recipe": "leccr_cli.config",
    "load_recipe": "leccr_cli.config",
    "load_run": "leccr_cli.runs.layout",
    "read_run_recipe": "leccr_cli.runs.layout",
    "LeccrModel": "leccr_cli.model.leccr",
    "build_model": "leccr_cli.model.factory",
    "build_model_for": "leccr_cli.model.factory",
    "load_model": "leccr_cli.model.factory",
    "load_query_model": "leccr_cli.model.factory",
    # corpora and their preparation
    "Corpus": "leccr_cli.corpus.corpus",
    "build_synthetic": "leccr_cli.corpus.synthetic.image",
    "build_synthetic_video": "leccr_cli.corpus.synthetic.video",
    "import_images": "leccr_cli.corpus.importers.image_folder",
    "import_descriptions": "leccr_cli.corpus.importers.descriptions",
    "import_multi30k": "leccr_cli.corpus.importers.multi30k",
    "import_nrccr": "leccr_cli.corpus.importers.nrccr",
    "open_describer": "leccr_cli.prep.describe",
    "caption_corpus": "leccr_cli.prep.describe",
    "make_engine": "leccr_cli.prep.translate.engines",
    "translate_corpus": "leccr_cli.prep.translate.jobs",
    "build_slots": "leccr_cli.prep.features.build",
    # training
    "train": "leccr_cli.training.trainer",
    "Trainer": "leccr_cli.training.trainer",
    # retrieval
    "encode_texts": "leccr_cli.retrieval.encode",
    "encode_gallery": "leccr_cli.retrieval.encode",
    "query_captions": "leccr_cli.retrieval.evaluate",
    "evaluate_languages": "leccr_cli.retrieval.evaluate",
    "recall_metrics": "leccr_cli.retrieval.metrics",
    "build_index": "leccr_cli.retrieval.index.builder",
    "Index": "leccr_cli.retrieval.index.reader",
    "Searcher": "leccr_cli.retrieval.search",
    # errors
    "LeccrError": "leccr_cli.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'leccr_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
