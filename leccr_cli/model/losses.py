"""The LECCR losses: pure functions on batch-first tensors (docs/architecture.md, "Losses").

Every function computes in float32 with autocast disabled (inputs are cast), and in
multi-process training gathers its inputs from all processes first (see
`leccr_cli.model.distributed`), so each similarity matrix spans the global batch. On one
process they are plain functions of their arguments.

Optional masks (`slot_mask`, `token_mask`: bool, True = valid) mark padded slots (the
description tokens when `slots: false`) and padded visual tokens (video); None means all
valid. `image_ids` (LongTensor [B]) makes every pair with the same id a positive; None
means the identity (row i matches column i only).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from leccr_cli.model.distributed import gather_batch

MINMAX_EPS = 1e-6


def _float32(tensor: torch.Tensor):
    """A context that switches autocast off on the tensor's device, so matmuls stay in float32."""
    if tensor.device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=tensor.device.type, enabled=False)
    return contextlib.nullcontext()


def _gather(tensor: torch.Tensor | None, pad_value: float | bool = 0) -> torch.Tensor | None:
    return None if tensor is None else gather_batch(tensor, pad_value)


def _temperature(temperature, like: torch.Tensor) -> torch.Tensor:
    if isinstance(temperature, torch.Tensor):
        return temperature.float()
    return torch.tensor(float(temperature), device=like.device)


def positive_labels(image_ids: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    """[size, size] soft labels: the same-id indicator divided by its row sum (identity when ids is None)."""
    if image_ids is None:
        return torch.eye(size, device=device)
    same = (image_ids[:, None] == image_ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def _soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i  -sum_j labels[i, j] * log_softmax(logits[i])[j]"""
    return -(labels * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _symmetric(logits: torch.Tensor, image_ids: torch.Tensor | None) -> torch.Tensor:
    labels = positive_labels(image_ids, logits.shape[0], logits.device)
    return 0.5 * (_soft_cross_entropy(logits, labels) + _soft_cross_entropy(logits.T, labels.T))


def _max_over_slots(slots: torch.Tensor, text: torch.Tensor, slot_mask: torch.Tensor | None) -> torch.Tensor:
    """[I, T]: max_k slots[i, k] . text[j], padded slots excluded."""
    scores = torch.einsum("ikd,jd->ijk", slots, text)
    if slot_mask is not None:
        scores = scores.masked_fill(~slot_mask[:, None, :], float("-inf"))
    return scores.max(dim=2).values


def _masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, D]: mean over the valid entries of dimension 1."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def minmax(matrix: torch.Tensor) -> torch.Tensor:
    """(S - min S) / (max S - min S) over the whole matrix; a constant matrix gives zeros."""
    low = matrix.min()
    return (matrix - low) / (matrix.max() - low).clamp_min(MINMAX_EPS)


def itc_loss(a: torch.Tensor, b: torch.Tensor, temperature, image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE with soft multi-positive labels.

    a, b: [B, D], L2-normalized. logits = a @ b.T / temperature;
    loss = (CE_rows(logits, Y) + CE_rows(logits.T, Y.T)) / 2, CE_rows(X, Y) = mean_i -sum_j Y_ij log softmax(X_i)_j,
    Y = identity, or with `image_ids` the same-id indicator divided by its row sum.
    """
    with _float32(a):
        a, b = _gather(a).float(), _gather(b).float()
        logits = a @ b.T / _temperature(temperature, a)
        return _symmetric(logits, _gather(image_ids))


def slot_matching_loss(
    slots: torch.Tensor,
    text: torch.Tensor,
    temperature,
    image_ids: torch.Tensor | None = None,
    slot_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-level matching: `itc_loss` on the max-over-slots score.

    slots: [B, N, D], text: [B, D], both L2-normalized. score[i, j] = max_k slots[i, k] . text[j]
    (image i, text j); loss = the symmetric soft cross-entropy of `itc_loss` on score / temperature.
    """
    with _float32(slots):
        slots, text = _gather(slots).float(), _gather(text).float()
        score = _max_over_slots(slots, text, _gather(slot_mask, False))
        return _symmetric(score / _temperature(temperature, slots), _gather(image_ids))


def english_guided_kl(
    image: torch.Tensor,
    english: torch.Tensor,
    target: torch.Tensor,
    slots: torch.Tensor,
    alpha: float = 0.8,
    slot_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softened matching under English guidance: KL(P || softmax_rows(target @ image.T)).

    image [B, D], english [B, D], target [B, D], slots [B, N, D]; rows are texts, columns images.
    S_sv = english @ image.T, S_sc[j, i] = max_k slots[i, k] . english[j],
    P = softmax_rows(alpha * minmax(S_sv) + (1 - alpha) * minmax(S_sc)) (min-max over the whole
    matrix; P detached); loss = mean_j sum_i P_ji (log P_ji - log softmax(target @ image.T)_ji).
    No temperature on either side, as in the reference.
    """
    with _float32(image):
        image, target = _gather(image).float(), _gather(target).float()
        english, slots = _gather(english.detach()).float(), _gather(slots.detach()).float()
        slot_mask = _gather(slot_mask, False)
        with torch.no_grad():
            english_vision = english @ image.T
            english_slots = _max_over_slots(slots, english, slot_mask).T
            soft_target = F.softmax(alpha * minmax(english_vision) + (1 - alpha) * minmax(english_slots), dim=1)
        log_prediction = F.log_softmax(target @ image.T, dim=1)
        return F.kl_div(log_prediction, soft_target, reduction="batchmean")


def description_vision_loss(
    slots: torch.Tensor,
    tokens: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    slot_mask: torch.Tensor | None = None,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Description-vision alignment: multi-positive cross-entropy on mean slot-token similarity.

    slots [B, N, D], tokens [B, T, D], projected and L2-normalized. score[i, j] = mean_{k, t}
    slots[i, k] . tokens[j, t] (over valid slots and tokens); loss = mean_i -sum_j Y_ij
    log softmax(score[i])_j, Y the same-id indicator divided by its row sum (one direction, no
    temperature, as in the reference).
    """
    with _float32(slots):
        # the mean of all pairwise dot products is the dot product of the means
        slot_means = _gather(_masked_mean(slots.float(), slot_mask))
        token_means = _gather(_masked_mean(tokens.float(), token_mask))
        score = slot_means @ token_means.T
        labels = positive_labels(_gather(image_ids), score.shape[0], score.device)
        return _soft_cross_entropy(score, labels)


def slot_diversity(slots: torch.Tensor, slot_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Slot diversity regularisation: mean over the batch of the entries of (M M^T - I).

    slots [B, N, D]; every slot is L2-normalized first, so the entries are the cosines between
    different slots (the diagonal is zero). With `slot_mask`, the mean runs over valid pairs only.
    """
    with _float32(slots):
        slots = F.normalize(_gather(slots).float(), dim=-1)
        slot_mask = _gather(slot_mask, False)
        eye = torch.eye(slots.shape[1], device=slots.device)
        gram = slots @ slots.transpose(1, 2) - eye
        if slot_mask is None:
            return gram.mean()
        pairs = (slot_mask[:, :, None] & slot_mask[:, None, :]).float()
        return (gram * pairs).sum() / pairs.sum()
