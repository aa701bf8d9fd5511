import random

import pytest
import torch
from PIL import Image

from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.corpus import check_descriptions
from leccr_cli.data.collate import Collator
from leccr_cli.data.datasets import GallerySet, TrainingSet, VisualSource, training_examples
from leccr_cli.data.transforms import ImageTransform, example_rng, load_image
from leccr_cli.utils.text import TextCleaning, clean_caption
from leccr_cli.errors import CorpusError
from leccr_cli.testing import raises_on_command_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_clean_caption_like_the_reference():
    assert clean_caption("Ein Hund, der läuft!") == "ein hund der läuft"
    assert clean_caption("Malá   zelená hvězda vlevo.", max_words=2) == "malá zelená"
    assert clean_caption("A, B", lowercase=False, strip_punctuation="none") == "A, B"
    assert clean_caption("l'homme «rouge»") == "l homme rouge"


def test_centre_crop_and_normalisation():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    tensor = ImageTransform(16, CLIP_MEAN, CLIP_STD)(image)
    assert tensor.shape == (3, 16, 16)
    assert torch.allclose(tensor[0], torch.full((16, 16), (1 - CLIP_MEAN[0]) / CLIP_STD[0]))
    assert torch.allclose(tensor[2], torch.full((16, 16), -CLIP_MEAN[2] / CLIP_STD[2]))


def test_centre_crop_keeps_the_middle():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # a white middle third
    tensor = ImageTransform(10, (0, 0, 0), (1, 1, 1))(image)
    assert torch.allclose(tensor, torch.ones(3, 10, 10))


def test_random_crop_is_a_function_of_seed_epoch_index():
    image = Image.effect_noise((32, 32), 50).convert("RGB")
    transform = ImageTransform(16, CLIP_MEAN, CLIP_STD, train=True, crop_scale_min=0.3)
    a = transform(image, example_rng(0, 1, 5))
    b = transform(image, example_rng(0, 1, 5))
    c = transform(image, example_rng(0, 2, 5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_load_image_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(CorpusError, match=r"image 'x' at .*bad.png cannot be read"):
        load_image(tmp_path / "bad.png", "x")
    with pytest.raises(CorpusError, match="image 'y'"):
        load_image(tmp_path / "missing.png", "y")


def test_training_examples_pair_english_with_every_translation(synthetic_corpus):
    corpus = Corpus.open(synthetic_corpus)
    examples = training_examples(corpus, "train", "en", ["de", "cs"])
    assert len(examples) == 90 * 3
    english = {c.text: c for c in corpus.captions("train", "en")}
    first = examples[0]
    assert len(first.translations) == 2
    assert corpus.image_ids("train")[first.image_index] == first.image_id
    assert english[first.english].image_id == first.image_id
    with raises_on_command_line(CorpusError, "no machine-translated ja captions.*leccr translate", 'train'):
        training_examples(corpus, "train", "en", ["ja"])


def test_training_set_choices_depend_on_epoch_only(synthetic_corpus, tiny_bert_dir):
    corpus = Corpus.open(synthetic_corpus)
    examples = training_examples(corpus, "train", "en", ["de", "fr", "cs"])
    transform = ImageTransform(32, CLIP_MEAN, CLIP_STD)
    visual = VisualSource(corpus, "train", transform, None)
    descriptions = check_descriptions(corpus, "synthetic", corpus.image_ids("train"))
    dataset = TrainingSet(examples, visual, descriptions, TextCleaning(), seed=1)
    first_epoch = [dataset[i]["target"] for i in range(30)]
    assert first_epoch == [dataset[i]["target"] for i in range(30)]
    dataset.set_epoch(1)
    assert first_epoch != [dataset[i]["target"] for i in range(30)]
    item = dataset[0]
    assert item["source"] == clean_caption(examples[0].english)
    assert item["target"] in {clean_caption(t) for t in examples[0].translations}
    assert item["description"].startswith("The image shows")

    from transformers import AutoTokenizer

    collate = Collator(AutoTokenizer.from_pretrained(tiny_bert_dir), 16, 40)
    batch = collate([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["image_index"].tolist() == [examples[i].image_index for i in range(4)]
    assert batch["source_ids"].shape[0] == 4 and batch["source_ids"].shape == batch["source_mask"].shape
    assert batch["description_ids"].shape[1] <= 40 and batch["target_ids"].shape[1] <= 16
    gallery = GallerySet(corpus.image_ids("test"), VisualSource(corpus, "test", transform, None), None)
    assert set(collate([gallery[0], gallery[1]])) == {"pixel_values", "image_index"}


def test_missing_description_is_named(synthetic_corpus):
    corpus = Corpus.open(synthetic_corpus)
    with raises_on_command_line(
        CorpusError, "has no description in descriptions/synthetic.*first: ghost.*leccr caption", "train"
    ):
        check_descriptions(corpus, "synthetic", ["ghost"])


def test_example_rng_is_stable():
    assert example_rng(3, 1, 2).random() == random.Random("3:1:2").random()
