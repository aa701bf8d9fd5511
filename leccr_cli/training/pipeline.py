"""From a recipe to the objects a run needs besides the model: the training data, the optimiser, the schedule.

The model comes from `model.factory.build_model_for` and the corpus from
`corpus.synthetic.ensure_corpus`, so `train`, `build_slots` and the benchmarks build the same
things from a recipe, and a benchmark measures the real data pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.console import Console
from transformers import get_linear_schedule_with_warmup

from leccr_cli.config import Recipe
from leccr_cli.corpus.corpus import Corpus, check_descriptions
from leccr_cli.data.collate import Collator
from leccr_cli.data.datasets import TrainingSet, VisualSource, training_examples
from leccr_cli.data.transforms import ImageTransform
from leccr_cli.errors import LeccrError
from leccr_cli.model.leccr import LeccrModel
from leccr_cli.prep.features.cache import open_slot_cache
from leccr_cli.utils.text import TextCleaning


def per_device_batch_size(recipe: Recipe, num_processes: int) -> int:
    """The global `optim.batch_size` split over processes and accumulation steps (refused if it does not divide)."""
    optim = recipe.optim
    per_device, remainder = divmod(optim.batch_size, num_processes * optim.gradient_accumulation_steps)
    if remainder or per_device == 0:
        raise LeccrError(
            f"optim.batch_size {optim.batch_size} does not split into {num_processes} processes x "
            f"{optim.gradient_accumulation_steps} accumulation steps",
            "choose a global batch size divisible by processes x accumulation steps",
        )
    return per_device


@dataclass
class TrainingData:
    """The training set of a recipe and the collator that batches it for its model."""

    dataset: TrainingSet
    collate: Collator


def training_data(recipe: Recipe, corpus: Corpus, model: LeccrModel, *, console: Console | None = None) -> TrainingData:
    """The training examples, images (or frame features) and descriptions of the recipe's train split.

    Everything is checked here, before a run folder exists: target languages without
    translations, images without descriptions, a split smaller than one batch, and (in
    `description_features: cache` mode) a missing or stale slot cache.
    """
    data = recipe.data
    split = corpus.check_split(data.train_split)
    examples = training_examples(corpus, split, data.source_lang, data.target_langs)
    if len(examples) < recipe.optim.batch_size:
        raise LeccrError(
            f"the training split has {len(examples)} examples, fewer than one global batch ({recipe.optim.batch_size})",
            "lower optim.batch_size",
        )
    descriptions = features = None
    if model.reads_descriptions:
        descriptions = check_descriptions(corpus, data.descriptions, corpus.image_ids(split))
        features = open_slot_cache(model, corpus, split, data.descriptions, descriptions=descriptions, console=console)
    transform = None
    if corpus.modality == "image":
        transform = ImageTransform(
            model.image_size,
            model.image_mean,
            model.image_std,
            train=data.train_transform == "random_resized_crop",
            crop_scale_min=data.crop_scale_min,
            flip=data.train_flip,
        )
    visual = VisualSource(corpus, split, transform, data.video_features)
    dataset = TrainingSet(
        examples,
        visual,
        descriptions if features is None else None,
        TextCleaning.from_config(data),
        recipe.seed,
        description_features=features,
    )
    return TrainingData(dataset, Collator.for_model(model, visual))


def check_gallery_caches(recipe: Recipe, corpus: Corpus, model: LeccrModel, *, console: Console | None = None) -> None:
    """In `description_features: cache` mode, refuse a missing or stale cache of the validation and test splits."""
    if model.reads_descriptions:
        for split in (recipe.data.val_split, recipe.data.test_split):
            open_slot_cache(model, corpus, split, recipe.data.descriptions, console=console)


def decays(name: str, parameter: torch.nn.Parameter, rule: str) -> bool:
    """Whether weight decay applies to a parameter under `optim.no_decay`.

    `ndim`: matrices and higher (no decay on biases, norm weights, the temperature);
    `names`: every parameter whose name contains neither "bias" nor "norm" (any case), the
    reference's rule (it also decays the temperature and the slot queries).
    """
    if rule == "names":
        lowered = name.lower()
        return "bias" not in lowered and "norm" not in lowered
    return parameter.ndim >= 2


def build_optimizer(model: LeccrModel, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW (`optim.betas`, `optim.eps`) over the trainable parameters: encoders at `optim.lr`,
    new layers at `lr * new_layer_lr_scale`; weight decay as `optim.no_decay` says (`decays`)."""
    optim = recipe.optim
    names = {id(p): name for name, p in model.named_parameters()}
    groups = []
    for params, lr in (
        (model.pretrained_parameters(), optim.lr),
        (model.new_parameters(), optim.lr * optim.new_layer_lr_scale),
    ):
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if decays(names[id(p)], p, optim.no_decay)]
        no_decay = [p for p in params if not decays(names[id(p)], p, optim.no_decay)]
        groups += [
            {"params": decay, "lr": lr, "weight_decay": optim.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(optim.betas), eps=optim.eps)


def build_scheduler(optimizer, recipe: Recipe, total_steps: int, num_processes: int):
    """Linear warm-up over `optim.warmup_ratio` of the steps, then linear decay to zero.

    Counted in per-process batches of one process, as accelerate's prepared scheduler expects
    (it steps once per process for every optimiser step).
    """
    return get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(recipe.optim.warmup_ratio * total_steps) * num_processes,
        num_training_steps=total_steps * num_processes,
    )
