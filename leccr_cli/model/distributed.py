"""A differentiable all-gather, so every similarity matrix spans the batch of all processes.

Every process computes each loss over the full gathered batch, so the loss value is the
same everywhere. The backward of `gather_batch` sums, over all processes, the gradient
that reached a process's own rows: each process receives W times the union-batch gradient
of its local rows (W = world size). DDP then averages parameter gradients over the W
processes, which cancels that factor: W processes on per-process batch b give the same
loss and the same (averaged) parameter gradients as one process on the union batch W*b.
Parameters that enter a loss directly (the temperature) get the full union gradient on
every process, and DDP's average leaves it unchanged.

On a single process (or without `torch.distributed` initialised) everything is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward = sum over processes of the gradient of this process's chunk."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:

        tensor = tensor.contiguous()
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, tensor)
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


def gather_batch(tensor: torch.Tensor, pad_value: float | bool = 0) -> torch.Tensor:
    """Concatenate `tensor` (batch-first) from every process in rank order, differentiably.

    Processes may hold different batch sizes and different lengths in the other
    dimensions (padded sequences): every dimension after the first is padded with
    `pad_value` to the longest across processes, so gather masks with `pad_value=False`.
    Tensors that do not require grad are gathered without autograd.
    """
    if world_size() == 1:
        return tensor

    shape = torch.tensor(tensor.shape, device=tensor.device, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes)
    longest = shapes.max(dim=0).values.tolist()
    padding = []
    for dim in reversed(range(tensor.ndim)):
        padding += [0, longest[dim] - tensor.shape[dim]]
    if any(padding):
        tensor = torch.nn.functional.pad(tensor, padding, value=pad_value)
    if tensor.requires_grad:
        gathered = _GatherWithGrad.apply(tensor)
    else:
        chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, tensor.contiguous())
        gathered = torch.cat(chunks)
    rows = shapes[:, 0].tolist()
    if len(set(rows)) == 1:
        return gathered
    pieces = gathered.split(longest[0])
    return torch.cat([piece[:n] for piece, n in zip(pieces, rows)])
