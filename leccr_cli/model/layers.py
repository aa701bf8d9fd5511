"""Building blocks of the LECCR model: cross-attention stacks and the frame-feature video encoder."""

from __future__ import annotations

import torch
from torch import nn

from leccr_cli.errors import ModelError


def _dropout(p: float) -> nn.Module:
    """Dropout, or nothing at all when p is 0 (no random numbers drawn)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CrossAttentionLayer(nn.Module):
    """Multi-head attention of the query sequence over the memory, a two-layer GELU MLP on
    the attention output, added to the query (residual), then LayerNorm.

    attention (dropout) -> Linear(d, mlp_ratio*d) -> GELU -> dropout -> Linear(mlp_ratio*d, d)
    -> dropout -> + query -> LayerNorm. With mlp_ratio 1 and dropout 0.1 this is the
    reference's layer (which also holds a LayerNorm it never uses).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        hidden = mlp_ratio * dim
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        # the Linear layers keep the names mlp.0 and mlp.2 of models saved before dropout existed
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.Sequential(nn.GELU(), _dropout(dropout)), nn.Linear(hidden, dim)
        )
        self.dropout = _dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        weights: list | None = None,
    ) -> torch.Tensor:
        """`weights`, when given, receives the attention weights [B, Lq, Lk] (averaged over heads)."""
        padding = None if memory_mask is None else ~memory_mask
        attended, attention = self.attention(
            query, memory, memory, key_padding_mask=padding, need_weights=weights is not None
        )
        if weights is not None:
            weights.append(attention)
        return self.norm(query + self.dropout(self.mlp(attended)))


class CrossAttention(nn.Module):
    """A stack of cross-attention layers over one fixed memory."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        weights: list | None = None,
    ) -> torch.Tensor:
        """`weights`, when given, receives every layer's attention weights (see `CrossAttentionLayer`)."""
        for layer in self.layers:
            query = layer(query, memory, memory_mask, weights)
        return query


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of `tokens` [B, T, D] over the positions where `mask` [B, T] is True (all when None)."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class VideoEncoder(nn.Module):
    """Self-attention over pre-extracted frame features, as the reference's video branch.

    Each layer is a `CrossAttentionLayer` of the frames over themselves (padding frames are
    masked as keys, so they never change a real frame). `width=None` keeps the features'
    own width (the reference); a number projects the frames to it first. `cls_token` prepends
    a learned token to pool at; `positions` adds learned frame positions (the reference has
    none). `mlp_ratio` and `dropout` are those of the model's cross-attention layers (1 and
    0.1: the reference's `SelfAttention` layer). Returns the tokens [B, T, width] (CLS first
    when there is one) and their mask.
    """

    def __init__(
        self,
        frame_dim: int,
        width: int | None,
        layers: int,
        heads: int,
        max_frames: int,
        *,
        cls_token: bool = False,
        positions: bool = False,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.max_frames = max_frames
        self.width = width or frame_dim
        self.input = nn.Linear(frame_dim, width) if width else None
        self.cls = nn.Parameter(torch.randn(1, 1, self.width) * 0.02) if cls_token else None
        self.positions = nn.Parameter(torch.randn(max_frames, self.width) * 0.02) if positions else None
        self.layers = nn.ModuleList(CrossAttentionLayer(self.width, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(
        self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, count = frames.shape[:2]
        if count > self.max_frames:
            raise ModelError(
                f"got {count} frames per video, the model takes at most model.video.max_frames={self.max_frames}"
            )
        mask = (
            torch.ones(batch, count, dtype=torch.bool, device=frames.device)
            if frame_mask is None
            else frame_mask.bool()
        )
        dtype = self.layers[0].norm.weight.dtype
        hidden = frames.to(dtype) if self.input is None else self.input(frames.to(dtype))
        if self.positions is not None:
            hidden = hidden + self.positions[:count].to(hidden.dtype)
        if self.cls is not None:
            hidden = torch.cat([self.cls.expand(batch, -1, -1).to(hidden.dtype), hidden], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        for layer in self.layers:
            hidden = layer(hidden, hidden, mask)
        return hidden, mask
