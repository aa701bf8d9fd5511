"""The LECCR losses against hand-computed values, their invariances and their numerics."""

from math import exp, log

import pytest
import torch

from leccr_cli.model.losses import (
    description_vision_loss,
    english_guided_kl,
    itc_loss,
    minmax,
    slot_diversity,
    slot_matching_loss,
)


def softplus(x: float) -> float:
    return log(1 + exp(x))


# ------------------------------------------------------------------ hand-computed values


def test_itc_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = a b^T / 0.5 = [[2, 1.2], [0, 1.6]]; each row/column CE is softplus(other - own)
    expected = 0.25 * (softplus(-0.8) + softplus(-1.6) + softplus(-2.0) + softplus(-0.4))
    assert expected == pytest.approx(0.2987361676)
    assert itc_loss(a, b, 0.5).item() == pytest.approx(0.2987361676, abs=1e-6)
    # the temperature may be a (learnable) tensor
    assert itc_loss(a, b, torch.tensor(0.5)).item() == pytest.approx(0.2987361676, abs=1e-6)


def test_itc_loss_duplicate_ids_are_positives():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # both pairs of one image: labels 0.5 everywhere,
    # rows [2, 1.2], [0, 1.6] and columns [2, 0], [1.2, 1.6] each give -0.5 * (log p0 + log p1)
    assert itc_loss(a, b, 0.5, torch.tensor([4, 4])).item() == pytest.approx(0.8987361676, abs=1e-6)

    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    b = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    # logits / 0.5 = [[1.6, 2, 0], [1.92, 1.2, 1.6], [1.2, 0, 2]]; rows 0 and 1 show the same image
    assert itc_loss(a, b, 0.5, torch.tensor([7, 7, 3])).item() == pytest.approx(0.8018668665, abs=1e-6)
    assert itc_loss(a, b, 0.5).item() == pytest.approx(0.9885335332, abs=1e-6)
    # distinct ids are the identity
    assert itc_loss(a, b, 0.5, torch.tensor([9, 8, 1])).item() == pytest.approx(0.9885335332, abs=1e-6)


SLOTS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]])


def test_slot_matching_loss_by_hand():
    text = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # score[i, j] = max_k slots[i, k] . text[j] = [[0.8, 1.0], [0.96, 0.8]]
    expected = 0.5 * (softplus(0.2) + softplus(0.16))
    assert expected == pytest.approx(0.7872413212)
    assert slot_matching_loss(SLOTS, text, 1.0).item() == pytest.approx(0.7872413212, abs=1e-6)
    # a padded third slot that would win every max changes nothing once masked
    padded = torch.cat([SLOTS, torch.full((2, 1, 2), 5.0)], dim=1)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert slot_matching_loss(padded, text, 1.0, slot_mask=mask).item() == pytest.approx(0.7872413212, abs=1e-6)
    assert slot_matching_loss(padded, text, 1.0).item() != pytest.approx(0.7872413212, abs=1e-3)


def test_english_guided_kl_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    english = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    target = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # S_sv = [[1, 0], [0.6, 0.8]] (already in [0, 1]); S_sc[j, i] = max_k slots[i, k] . english[j]
    # = [[1, 0.6], [0.8, 1]] -> minmax [[1, 0], [0.5, 1]]; 0.8 S_sv + 0.2 S_sc = [[1, 0], [0.58, 0.84]]
    # P = softmax rows of that; Q = softmax rows of target @ image^T = [[0.8, 0.6], [0, 1]]
    loss = english_guided_kl(image, english, target, SLOTS, alpha=0.8)
    assert loss.item() == pytest.approx(0.0667906950, abs=1e-6)
    # alpha = 1: only S_sv (= english) guides
    p = torch.softmax(english, dim=1)
    q = torch.log_softmax(target, dim=1)
    only_sv = (p * (p.log() - q)).sum(dim=1).mean()
    assert english_guided_kl(image, english, target, SLOTS, alpha=1.0).item() == pytest.approx(only_sv.item(), abs=1e-6)


def test_english_guided_kl_orientation_is_text_major():
    """S_sc must be added text-major (rows = texts), not transposed as in the reference code."""
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    english = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    target = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    s_sv = minmax(english @ image.T)
    s_sc = minmax(torch.tensor([[1.0, 0.6], [0.8, 1.0]]))
    q = torch.log_softmax(target @ image.T, dim=1)

    def kl(logits):
        p = torch.softmax(logits, dim=1)
        return (p * (p.log() - q)).sum(dim=1).mean().item()

    loss = english_guided_kl(image, english, target, SLOTS, alpha=0.5).item()
    assert loss == pytest.approx(kl(0.5 * s_sv + 0.5 * s_sc), abs=1e-6)
    assert loss != pytest.approx(kl(0.5 * s_sv + 0.5 * s_sc.T), abs=1e-4)


def test_description_vision_loss_by_hand():
    slots = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.6, 0.8]]])
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    # mean slot . mean token: score = [[0.5, 0.5], [2/3, 0.8]]
    expected = 0.5 * (log(2) + softplus(-2 / 15))
    assert expected == pytest.approx(0.6609241363)
    assert description_vision_loss(slots, tokens, None).item() == pytest.approx(0.6609241363, abs=1e-6)
    # one image twice: labels 0.5 in every row
    assert description_vision_loss(slots, tokens, torch.tensor([5, 5])).item() == pytest.approx(0.6942574696, abs=1e-6)
    # the mean over (k, t) of all pairwise dot products, computed the long way
    score = torch.einsum("ikd,jtd->ijkt", slots, tokens).mean(dim=(2, 3))
    assert torch.allclose(score, torch.tensor([[0.5, 0.5], [2 / 3, 0.8]]))
    # padded slots and tokens are excluded from the means
    padded_slots = torch.cat([slots, torch.full((2, 1, 2), 3.0)], dim=1)
    padded_tokens = torch.cat([tokens, torch.full((2, 2, 2), -3.0)], dim=1)
    slot_mask = torch.tensor([[True, True, False]] * 2)
    token_mask = torch.tensor([[True, True, True, False, False]] * 2)
    masked = description_vision_loss(padded_slots, padded_tokens, None, slot_mask, token_mask)
    assert masked.item() == pytest.approx(0.6609241363, abs=1e-6)


def test_slot_diversity_by_hand():
    # normalized [[1, 0], [0.6, 0.8]]: M M^T - I = [[0, 0.6], [0.6, 0]] -> mean 0.3
    one = torch.tensor([[[2.0, 0.0], [3.0, 4.0]]])
    assert slot_diversity(one).item() == pytest.approx(0.3, abs=1e-6)
    # a second sample with opposite slots: [[0, -1], [-1, 0]] -> mean -0.5; batch mean -0.1
    two = torch.cat([one, torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])])
    assert slot_diversity(two).item() == pytest.approx(-0.1, abs=1e-6)
    # with a mask, the mean runs over valid pairs: sample 2 keeps one slot (its only pair is the diagonal)
    mask = torch.tensor([[True, True], [True, False]])
    assert slot_diversity(two, mask).item() == pytest.approx(1.2 / 5, abs=1e-6)


# ------------------------------------------------------------------ invariances


def _random_inputs(batch=6, slots=3, tokens=5, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    return {
        "image": unit(batch, dim),
        "english": unit(batch, dim),
        "target": unit(batch, dim),
        "slots": unit(batch, slots, dim),
        "tokens": unit(batch, tokens, dim),
        "ids": torch.tensor([0, 1, 1, 2, 3, 3])[:batch],
        "slot_mask": torch.rand(batch, slots, generator=g) > 0.3,
        "token_mask": torch.rand(batch, tokens, generator=g) > 0.3,
    }


def _all_losses(x):
    x["slot_mask"][:, 0] = True
    x["token_mask"][:, 0] = True
    return {
        "itc": itc_loss(x["image"], x["english"], 0.07, x["ids"]),
        "slot": slot_matching_loss(x["slots"], x["target"], 0.07, x["ids"], x["slot_mask"]),
        "kl": english_guided_kl(x["image"], x["english"], x["target"], x["slots"], 0.8, x["slot_mask"]),
        "cv": description_vision_loss(x["slots"], x["tokens"], x["ids"], x["slot_mask"], x["token_mask"]),
        "div": slot_diversity(x["slots"], x["slot_mask"]),
    }


def test_permuting_the_batch_leaves_every_loss_unchanged():
    x = _random_inputs()
    before = _all_losses(x)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    after = _all_losses({k: v[perm] for k, v in x.items()})
    for name in before:
        assert after[name].item() == pytest.approx(before[name].item(), abs=1e-6), name


def test_losses_are_finite_and_fp32_under_autocast():
    x = _random_inputs()
    reference = _all_losses(x)
    for dtype in (torch.bfloat16, torch.float16):
        low = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in x.items()}
        with torch.autocast("cpu", dtype=dtype):
            results = _all_losses(low)
        for name, value in results.items():
            assert value.dtype == torch.float32 and torch.isfinite(value), (dtype, name)
            assert value.item() == pytest.approx(reference[name].item(), abs=0.05), (dtype, name)


def test_constant_matrices_do_not_divide_by_zero():
    assert torch.equal(minmax(torch.full((3, 3), 0.7)), torch.zeros(3, 3))
    same = torch.nn.functional.normalize(torch.ones(4, 8), dim=-1)
    slots = same[:, None, :].expand(4, 2, 8)
    loss = english_guided_kl(same, same, same, slots)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-7)


def test_english_guided_kl_gradient_skips_the_guidance():
    x = _random_inputs()
    for key in ("image", "english", "target", "slots"):
        x[key].requires_grad_(True)
    english_guided_kl(x["image"], x["english"], x["target"], x["slots"]).backward()
    assert x["english"].grad is None and x["slots"].grad is None
    assert x["image"].grad.abs().sum() > 0 and x["target"].grad.abs().sum() > 0
