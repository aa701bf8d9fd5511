"""Images as the model takes them: CLIP preprocessing without torchvision, and the random stream of an example.

Every random choice of a training example (where a crop falls, whether it is flipped) comes
from `example_rng(seed, epoch, index)`, so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from leccr_cli.errors import CorpusError


@dataclass(frozen=True)
class ImageTransform:
    """CLIP preprocessing without torchvision: fit the image to `size` x `size`, normalise.

    `fit`: `center_crop` resizes the short side to `size` and crops the middle; `resize`
    squeezes the whole image to `size` x `size` (the reference's test transform). With
    `train=True` and a random stream, a random resized crop (area fraction in
    [crop_scale_min, 1], aspect ratio in [3/4, 4/3]) replaces the fit. With `flip=True` and
    a random stream, half the images are flipped left to right (drawn after the crop, so a
    flip never changes which crop an example gets).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: bool = False
    crop_scale_min: float = 0.5
    fit: str = "center_crop"
    flip: bool = False

    def __call__(self, image, rng: random.Random | None = None):
        image = image.convert("RGB")
        if self.train and rng is not None:
            image = self._random_crop(image, rng)
            image = image.resize((self.size, self.size), Image.BICUBIC)
        elif self.fit == "resize":
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.BICUBIC)
        else:
            width, height = image.size
            scale = self.size / min(width, height)
            new_size = (max(self.size, round(width * scale)), max(self.size, round(height * scale)))
            if new_size != image.size:
                image = image.resize(new_size, Image.BICUBIC)
            left = (new_size[0] - self.size) // 2
            top = (new_size[1] - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        if self.flip and rng is not None and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def _random_crop(self, image, rng: random.Random):
        width, height = image.size
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(self.crop_scale_min, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left = rng.randint(0, width - w)
                top = rng.randint(0, height - h)
                return image.crop((left, top, left + w, top + h))
        side = min(width, height)
        return image.crop(((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2))


def load_image(path: Path, image_id: str):
    """Open an image file; a missing or corrupt file is a `CorpusError` naming the id and path."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise CorpusError(f"image {image_id!r} at {path} cannot be read ({error.__class__.__name__})") from None


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one example in one epoch (independent of global RNG state)."""
    return random.Random(f"{seed}:{epoch}:{index}")
