"""One streaming writer and one memory-mapped reader of safetensors files.

The slot cache (`prep/features/cache.py`), an index's embeddings and its int8 codes
(`retrieval/index/`) are written row block by row block with `StreamingSafetensors` and read
with `memory_map`, which maps the file's tensors without reading them.

The format: an 8-byte little-endian header size, a JSON header giving each tensor's dtype,
shape and byte range (and `__metadata__`, strings), then the raw bytes in that order.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# storage dtype (`defaults.StorageDtype`) -> safetensors dtype code
STORAGE_CODES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
_NUMPY_TYPES = {
    "F16": np.float16,
    "BF16": np.int16,
    "F32": np.float32,
    "F64": np.float64,
    "BOOL": np.bool_,
    "I8": np.int8,
}


class StreamingSafetensors:
    """A safetensors file whose tensor bytes are written piece by piece at known offsets.

    `tensors` gives (dtype code, shape, item size) per tensor, in file order. The header is
    padded with spaces so the data starts at a multiple of `align` bytes (8 at least); the
    data area is allocated (zero-filled) up front, so unwritten bytes read as zeros.
    """

    def __init__(
        self, path: Path, tensors: dict[str, tuple[str, list[int], int]], metadata: dict[str, str], align: int = 8
    ):
        header: dict = {"__metadata__": metadata}
        self.offsets: dict[str, int] = {}
        position = 0
        for name, (code, shape, itemsize) in tensors.items():
            size = itemsize
            for dim in shape:
                size *= dim
            header[name] = {"dtype": code, "shape": shape, "data_offsets": [position, position + size]}
            self.offsets[name] = position
            position += size
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        raw += b" " * (-(8 + len(raw)) % align)
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(raw)) + raw)
        self.start = 8 + len(raw)
        self.handle.truncate(self.start + position)

    def write(self, name: str, offset: int, data: bytes) -> None:
        """Write `data` at byte `offset` of tensor `name`."""
        self.handle.seek(self.start + self.offsets[name] + offset)
        self.handle.write(data)

    def close(self) -> None:
        self.handle.close()


def tensor_bytes(tensor) -> bytes:
    """The raw bytes of a tensor, in row-major order (as safetensors stores them)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@dataclass
class MappedFile:
    """The tensors of a safetensors file as read-only views of its memory-mapped bytes, and its metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


def memory_map(path: str | Path) -> MappedFile:
    """Map every tensor of a safetensors file without reading it (nothing is read until a tensor is used).

    A file that is not a safetensors file of the dtypes leccr writes, or whose byte ranges do
    not fit the shapes, raises `ValueError` (a missing one `OSError`).
    """
    path = Path(path)
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors header")
    start = 8 + size
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: the header entry of tensor {name} is malformed") from None
        if code not in _NUMPY_TYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {code}, which leccr never writes")
        count = int(np.prod(shape)) if shape else 1
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=torch.float16 if code == "F16" else torch.float32)
            continue
        # copy-on-write mapping: torch wants a writable array; nothing is ever written
        array = np.memmap(path, dtype=_NUMPY_TYPES[code], mode="c", offset=start + begin, shape=tuple(shape))
        tensor = torch.from_numpy(array)
        tensors[name] = tensor.view(torch.bfloat16) if code == "BF16" else tensor
        if (end - begin) != count * tensor.element_size():
            raise ValueError(f"{path}: tensor {name} has {end - begin} bytes for shape {shape}")
    return MappedFile(tensors, dict(header.get("__metadata__") or {}))
