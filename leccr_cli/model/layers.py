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
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Sequential(nn.GELU(), _dropout(dropout)), nn.Linear(hidden, dim))
        self.dropout = _dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None, weights: list | None = None
    ) -> torch.Tensor:
        """`weights`, when given, receives the attention weights [B, Lq, Lk] (averaged over heads)."""
        padding = None if memory_mask is None else ~memory_mask
        attended, attention = self.attention(query, memory, memory, key_padding_mask=padding, need_weights=weights is not None)
        if weights is not None:
            weights.append(attention)
        return self.norm(query + self.dropout(self.mlp(attended)))


class CrossAttention(nn.Module):
    """A stack of cross-attention layers over one fixed memory."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None, weights: list | None = None
    ) -> torch.Tensor:
        """`weights`, when given, receives every layer's attention weights (see `CrossAttentionLayer`)."""
        for layer in self.layers:
            query = layer(query, memory, memory_mask, weights)
        return query


class VideoEncoder(nn.Module):
    """A small transformer over pre-extracted frame features: linear to `width`, learned
    positions, a prepended CLS token, pre-norm encoder layers. Returns all tokens (CLS first)."""

    def __init__(self, frame_dim: int, width: int, layers: int, heads: int, max_frames: int):
        super().__init__()
        self.max_frames = max_frames
        self.input = nn.Linear(frame_dim, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.positions = nn.Parameter(torch.randn(max_frames + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, count = frames.shape[:2]
        if count > self.max_frames:
            raise ModelError(f"got {count} frames per video, the model takes at most model.video.max_frames={self.max_frames}")
        if frame_mask is None:
            frame_mask = torch.ones(batch, count, dtype=torch.bool, device=frames.device)
        hidden = self.input(frames.to(self.input.weight.dtype))
        hidden = torch.cat([self.cls.expand(batch, -1, -1).to(hidden.dtype), hidden], dim=1)
        hidden = hidden + self.positions[: count + 1].to(hidden.dtype)
        mask = torch.cat([frame_mask.new_ones(batch, 1), frame_mask.bool()], dim=1)
        hidden = self.encoder(hidden, src_key_padding_mask=~mask)
        return self.norm(hidden), mask
