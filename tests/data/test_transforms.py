"""Image transforms with the reference's settings: the whole image resized at test time, flips drawn per example."""

from __future__ import annotations


import torch
from PIL import Image
from typer.testing import CliRunner

from leccr_cli.data.transforms import ImageTransform, example_rng

runner = CliRunner()

# the table, read from the reference's configs and run scripts


def _bordered(width: int = 40, height: int = 20, border: int = 5) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 0, 0))  # red border ...
    image.paste((0, 0, 255), (border, border, width - border, height - border))  # ... around blue
    return image


def test_resize_keeps_the_whole_image_and_center_crop_cuts_the_sides():
    plain = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    whole = ImageTransform(16, *plain, fit="resize")(_bordered())
    assert whole.shape == (3, 16, 16)
    for edge in (whole[:, 8, 0], whole[:, 8, -1], whole[:, 0, 8], whole[:, -1, 8]):  # left, right, top, bottom
        assert edge[0] > 0.8 and edge[2] < 0.2, edge
    assert whole[2, 8, 8] > 0.9  # the blue middle
    cropped = ImageTransform(16, *plain, fit="center_crop")(_bordered())
    assert cropped[2, 8, 0] > 0.9 and cropped[0, 8, 0] < 0.1  # the left border was cut away


def test_flip_is_a_function_of_seed_epoch_index_and_keeps_the_crop():
    image = Image.effect_noise((32, 32), 50).convert("RGB")
    flipping = ImageTransform(16, (0, 0, 0), (1, 1, 1), train=True, crop_scale_min=0.3, flip=True)
    plain = ImageTransform(16, (0, 0, 0), (1, 1, 1), train=True, crop_scale_min=0.3)
    flipped = []
    for index in range(20):
        a = flipping(image, example_rng(0, 1, index))
        assert torch.equal(a, flipping(image, example_rng(0, 1, index)))
        crop = plain(image, example_rng(0, 1, index))
        assert torch.equal(a, crop) or torch.equal(a, crop.flip(-1))
        flipped.append(not torch.equal(a, crop))
    assert 0 < sum(flipped) < 20
    epochs = [torch.equal(flipping(image, example_rng(0, e, 3)), plain(image, example_rng(0, e, 3))) for e in range(20)]
    assert 0 < sum(epochs) < 20  # another epoch, another draw
    fixed = ImageTransform(16, (0, 0, 0), (1, 1, 1), flip=True)
    assert torch.equal(fixed(image), ImageTransform(16, (0, 0, 0), (1, 1, 1))(image))  # no random stream: no flip
