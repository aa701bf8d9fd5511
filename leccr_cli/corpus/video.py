"""Pre-extracted frame features of video corpora: `video/<name>.safetensors`.

The file holds `features` [total_frames, D] (all videos' frames, concatenated) and
`offsets` [V + 1] (video v owns rows offsets[v]:offsets[v+1]); the metadata key `ids` is
the JSON list of video ids in row order. Nothing is padded on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from leccr_cli.errors import CorpusError, Step, parts
from leccr_cli.utils.fs import atomic_file


def _import_them(what: str) -> tuple:
    step = Step(
        "data import-nrccr", video_feature=True, python="import_nrccr(root, out, modality='video', video_feature=NAME)"
    )
    return parts(f"import {what} with ", step)


def frame_features(corpus, name: str | None = None) -> "FrameFeatures":
    """The frame-feature set `name` of a video corpus (`video/<name>.safetensors`); its only one when `name` is None."""
    names = corpus.video_feature_sets()
    name = name or (names[0] if len(names) == 1 else None)
    if name is None:
        raise CorpusError(
            f"video corpus {corpus.path} has frame features {names or 'none'}",
            "set data.video_features to one of them" if names else _import_them("them"),
        )
    return FrameFeatures(corpus.path / "video" / f"{name}.safetensors")


def write_frame_features(path: str | Path, ids: list[str], frames: list, dtype=None) -> None:
    """Write one [F_i, D] tensor per video id atomically."""
    if len(ids) != len(frames) or not ids:
        raise CorpusError(f"{path}: {len(ids)} ids for {len(frames)} frame tensors")
    tensors = [torch.as_tensor(f) for f in frames]
    dims = {t.shape[-1] for t in tensors}
    if len(dims) != 1 or any(t.ndim != 2 or t.shape[0] == 0 for t in tensors):
        raise CorpusError(f"{path}: every video needs a non-empty [frames, dim] tensor of one width")
    flat = torch.cat(tensors).to(dtype or tensors[0].dtype).contiguous()
    offsets = torch.zeros(len(tensors) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([t.shape[0] for t in tensors]), 0)
    with atomic_file(path) as temporary:
        save_file({"features": flat, "offsets": offsets}, str(temporary), metadata={"ids": json.dumps(ids)})


class FrameFeatures:
    """Memory-mapped reader of a frame-feature file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CorpusError(f"{self.path}: no such frame-feature file", _import_them("it"))
        self._open()

    def __getstate__(self) -> dict:
        return {"path": self.path}  # DataLoader workers reopen the file: safe_open handles do not pickle

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()

    def _open(self) -> None:
        self._file = safe_open(str(self.path), framework="pt")
        self.ids: list[str] = json.loads(self._file.metadata()["ids"])
        self._row = {video_id: i for i, video_id in enumerate(self.ids)}
        self._offsets = self._file.get_tensor("offsets").tolist()
        self._features = self._file.get_slice("features")
        self.dim = self._features.get_shape()[1]

    def lengths(self) -> list[int]:
        """The number of frames of every video, in row order."""
        return [stop - start for start, stop in zip(self._offsets, self._offsets[1:])]

    def frames(self, video_id: str):
        """All frame features of one video, [F, D]."""
        try:
            row = self._row[video_id]
        except KeyError:
            raise CorpusError(f"{self.path}: no features for video {video_id!r}") from None
        return self._features[self._offsets[row] : self._offsets[row + 1]]

    def batch(self, video_ids: list[str], max_frames: int):
        """Padded [B, F, D] features and a [B, F] bool mask; longer videos are sampled evenly."""
        clips = []
        for video_id in video_ids:
            clip = self.frames(video_id)
            if clip.shape[0] > max_frames:
                keep = torch.linspace(0, clip.shape[0] - 1, max_frames).round().long()
                clip = clip[keep]
            clips.append(clip)
        longest = max(c.shape[0] for c in clips)
        features = clips[0].new_zeros(len(clips), longest, self.dim)
        mask = torch.zeros(len(clips), longest, dtype=torch.bool)
        for i, clip in enumerate(clips):
            features[i, : clip.shape[0]] = clip
            mask[i, : clip.shape[0]] = True
        return features, mask


def read_bigfile(folder: Path):
    """Read an NRCCR/dual-encoding BigFile folder: (ids, float32 array [N, D], memory-mapped).

    shape.txt holds `<rows> <dim>`, id.txt the row ids separated by whitespace, feature.bin
    rows x dim little-endian float32 values; any disagreement is one error naming the numbers.
    """
    folder = Path(folder)
    shape_file, id_file, feature_file = folder / "shape.txt", folder / "id.txt", folder / "feature.bin"
    for path in (shape_file, id_file, feature_file):
        if not path.is_file():
            raise CorpusError(
                f"{folder}: not a BigFile feature folder ({path.name} is missing)",
                "it needs shape.txt, id.txt and feature.bin",
            )
    try:
        shape_text = shape_file.read_text(encoding="utf-8-sig")
        ids = id_file.read_text(encoding="utf-8-sig").split()
        size = feature_file.stat().st_size
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"{folder}: cannot be read ({error})") from None
    fields = shape_text.split()
    if len(fields) != 2 or not all(f.isdigit() and int(f) > 0 for f in fields):
        raise CorpusError(
            f"{shape_file}: expected two positive integers `<rows> <dim>`, found {shape_text.strip()[:40]!r}"
        )
    rows, dim = int(fields[0]), int(fields[1])
    if len(ids) != rows:
        raise CorpusError(f"{id_file}: {len(ids)} ids, but {shape_file} says {rows} rows")
    if len(set(ids)) != rows:
        seen: set[str] = set()
        twice = next(i for i in ids if i in seen or seen.add(i))
        raise CorpusError(f"{id_file}: id {twice!r} appears more than once")
    expected = rows * dim * 4
    if size != expected:
        raise CorpusError(
            f"{feature_file}: {size} bytes, but {shape_file} says {rows} x {dim} float32 values = {expected} bytes"
        )
    return ids, np.memmap(feature_file, dtype="<f4", mode="r", shape=(rows, dim))
