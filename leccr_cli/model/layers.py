"""Building blocks of the LECCR model: cross-attention stacks and the frame-feature video encoder."""

from __future__ import annotations

import torch
from torch import nn

from leccr_cli.errors import ModelError


class CrossAttentionLayer(nn.Module):
    """Multi-head attention of the query sequence over the memory, a two-layer GELU MLP on
    the attention output, added to the query (residual), then LayerNorm."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, query: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None, weights: list | None = None
    ) -> torch.Tensor:
        """`weights`, when given, receives the attention weights [B, Lq, Lk] (averaged over heads)."""
        padding = None if memory_mask is None else ~memory_mask
        attended, attention = self.attention(query, memory, memory, key_padding_mask=padding, need_weights=weights is not None)
        if weights is not None:
            weights.append(attention)
        return self.norm(query + self.mlp(attended))


class CrossAttention(nn.Module):
    """A stack of cross-attention layers over one fixed memory."""

    def __init__(self, dim: int, heads: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads) for _ in range(layers))

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
