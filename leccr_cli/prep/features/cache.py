"""The description-feature cache file format: identity, memory-mapped reader, streaming writer.

In `frozen` description-encoder mode F_c never changes, so its token features are computed
once per split and stored in `CORPUS/slots/<encoder-slug>/<split>.safetensors`:

- `features` [N, L, D]: the token features of every description (rows in gallery order),
  L = the longest description of the file; valid tokens come first, padding is zero;
- `mask` [N, L] bool: True for valid tokens;
- metadata: `image_ids` (the row order, JSON) and the cache's identity: the encoder id, a
  hash of its weights, a hash of the tokenizer's vocabulary, the max length, the
  description source and a hash of the split's (image_id, text) description rows.

Training and evaluation compute the same identity from their model and corpus: with
`model.description_features: cache` a missing or mismatching cache is refused
(`SlotCacheMissing`, `SlotCacheStale`: what differs, and the step that rebuilds it); with
`auto` a matching one is used and anything else falls back to live encoding. Reading is
memory-mapped (`utils/safetensors_io.py`), one row per dataset item. `build_slots`
(`prep/features/build.py`, `leccr build-slots`) writes the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from rich.console import Console

from leccr_cli.corpus.corpus import check_descriptions
from leccr_cli.errors import CorpusError, SlotCacheMissing, SlotCacheStale, Step, parts
from leccr_cli.utils.console import say
from leccr_cli.utils.devices import TORCH_DTYPES
from leccr_cli.utils.fs import atomic_file
from leccr_cli.utils.safetensors_io import STORAGE_CODES, StreamingSafetensors, memory_map, tensor_bytes

SLOTS_FORMAT = "leccr-slots"
SLOTS_VERSION = 1
SCRATCH_ENCODER = "from-scratch"


# ---------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class SlotIdentity:
    """What a cache was computed from; two caches with equal identities hold the same features."""

    encoder: str
    encoder_weights: str
    tokenizer: str
    max_length: int
    descriptions: str
    descriptions_hash: str

    def metadata(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "SlotIdentity":
        return cls(
            encoder=meta["encoder"],
            encoder_weights=meta["encoder_weights"],
            tokenizer=meta["tokenizer"],
            max_length=int(meta["max_length"]),
            descriptions=meta["descriptions"],
            descriptions_hash=meta["descriptions_hash"],
        )

    def differences(self, wanted: "SlotIdentity") -> list[str]:
        """What differs between this (a cache's) identity and `wanted` (the model's and corpus's), in words."""
        found = []
        if self.encoder != wanted.encoder:
            found.append(f"the description encoder (cache: {self.encoder}, now: {wanted.encoder})")
        elif self.encoder_weights != wanted.encoder_weights:
            found.append("the description encoder's weights")
        if self.tokenizer != wanted.tokenizer:
            found.append("the tokenizer's vocabulary")
        if self.max_length != wanted.max_length:
            found.append(f"model.text.description_max_tokens (cache: {self.max_length}, now: {wanted.max_length})")
        if self.descriptions != wanted.descriptions:
            found.append(f"data.descriptions (cache: {self.descriptions}, now: {wanted.descriptions})")
        elif self.descriptions_hash != wanted.descriptions_hash:
            found.append(
                f"the descriptions of the split in descriptions/{wanted.descriptions}, changed since the cache was "
                f"built"
            )
        return found


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


# weights digests of modules whose tensors have not changed since (keyed by pointer and version)
_weights_digests: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weights_digest(module) -> str:
    """A hash of every tensor of `module` (names, dtypes, shapes, values)."""
    tensors = module.state_dict(keep_vars=True)
    version = tuple((name, t.data_ptr(), t._version) for name, t in tensors.items())
    known = _weights_digests.get(module)
    if known is not None and known[0] == version:
        return known[1]
    digest = _digest()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    _weights_digests[module] = (version, digest.hexdigest())
    return _weights_digests[module][1]


def vocabulary_digest(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary (token -> id)."""
    digest = _digest()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    return digest.hexdigest()


def descriptions_digest(image_ids: Sequence[str], descriptions: dict[str, str]) -> str:
    """A hash of the (image_id, text) rows of a split, in gallery order."""
    digest = _digest()
    digest.update(json.dumps([[i, descriptions[i]] for i in image_ids], ensure_ascii=False).encode())
    return digest.hexdigest()


def encoder_name(config) -> str:
    """The description encoder's id: `description_encoder_name`, the text encoder's, or `from-scratch`."""
    return config.description_encoder_name or config.text.name_or_path or SCRATCH_ENCODER


def encoder_slug(config, weights: str) -> str:
    """A readable, filesystem-safe folder name for the description encoder (the identity is in the metadata)."""
    name = encoder_name(config)
    if name == SCRATCH_ENCODER:
        return f"scratch-{weights[:8]}"
    last = name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip(".-") or f"encoder-{weights[:8]}"


def slot_identity(model, source: str, image_ids: Sequence[str], descriptions: dict[str, str]) -> SlotIdentity:
    """The identity of the features `model`'s frozen description encoder gives these descriptions.

    `source` is the description source (descriptions/<source>/); the max length is the model's own.
    """
    return SlotIdentity(
        encoder=encoder_name(model.config),
        encoder_weights=weights_digest(model.description_encoder),
        tokenizer=vocabulary_digest(model.tokenizer),
        max_length=model.config.text.description_max_tokens,
        descriptions=source,
        descriptions_hash=descriptions_digest(image_ids, descriptions),
    )


def cache_path(corpus, slug: str, split: str) -> Path:
    """CORPUS/slots/<slug>/<split>.safetensors."""
    return Path(corpus.path) / "slots" / slug / f"{split}.safetensors"


# ----------------------------------------------------------------------------- reading


def _rebuild(what: str = "it") -> tuple:
    return parts(
        f"rebuild {what} with ", Step("build-slots", "...", overwrite=True, python="build_slots(..., overwrite=True)")
    )


class SlotCache:
    """Memory-mapped reader of one cache file: `row(image_id)` gives that description's valid token features.

    The file is mapped lazily in each process (DataLoader workers included): a mapping is not
    pickled or shared across a fork.
    """

    def __init__(self, path: Path, identity: SlotIdentity, image_ids: list[str], lengths: list[int], dtype: str):
        self.path = Path(path)
        self.identity = identity
        self.image_ids = image_ids
        self.lengths = lengths
        self.dtype = dtype
        self._rows = {image_id: i for i, image_id in enumerate(image_ids)}
        self._features = self._owner = None

    @classmethod
    def open(cls, path: str | Path) -> "SlotCache":
        """Read a cache's metadata and row lengths; a file that is not a leccr slot cache is a `CorpusError`."""
        path = Path(path)
        try:
            mapped = memory_map(path)
            meta = mapped.metadata
            if meta.get("format") != SLOTS_FORMAT or meta.get("version") != str(SLOTS_VERSION):
                raise CorpusError(f"{path} is not a leccr slot cache (version {SLOTS_VERSION})", _rebuild())
            lengths = mapped.tensors["mask"].sum(dim=1).tolist()
            identity = SlotIdentity.from_metadata(meta)
            image_ids = json.loads(meta["image_ids"])
            dtype = meta["dtype"]
        except (OSError, KeyError, ValueError) as error:
            raise CorpusError(f"{path}: unreadable slot cache ({error})", _rebuild()) from None
        return cls(path, identity, image_ids, lengths, dtype)

    def __len__(self) -> int:
        return len(self.image_ids)

    def row(self, image_id: str):
        """The [length, D] token features of `image_id`'s description (padding left out)."""
        try:
            row = self._rows[image_id]
        except KeyError:
            raise CorpusError(f"{self.path}: no features for {image_id!r}", _rebuild("the cache")) from None
        if self._features is None or self._owner != os.getpid():
            self._features = memory_map(self.path).tensors["features"]
            self._owner = os.getpid()
        return self._features[row, : self.lengths[row]]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_features"] = state["_owner"] = None
        return state


_announced: set[tuple[str, float]] = set()


def open_slot_cache(
    model,
    corpus,
    split: str,
    source: str,
    *,
    descriptions: dict[str, str] | None = None,
    console: Console | None = None,
) -> SlotCache | None:
    """The cache that stands in for live description encoding of `split`, or None to encode live.

    None unless the model reads descriptions through a frozen description encoder and its
    `description_features` setting is `auto` or `cache`. With `cache`, a missing cache is a
    `SlotCacheMissing` and a mismatching one a `SlotCacheStale` (naming what differs); with
    `auto` either silently means None. A cache in use is said once on `console`. `source`
    names descriptions/<source>/; `descriptions` (image_id -> text) saves reading them again.
    """
    mode = model.config.description_features
    if mode == "live" or model.description_encoder is None or not model.reads_descriptions:
        return None
    image_ids = corpus.image_ids(corpus.check_split(split))
    if descriptions is None:
        descriptions = check_descriptions(corpus, source, image_ids)
    wanted = slot_identity(model, source, image_ids, descriptions)
    path = cache_path(corpus, encoder_slug(model.config, wanted.encoder_weights), split)
    if not path.is_file():
        if mode == "auto":
            return None
        raise SlotCacheMissing(split, path, _closest_cache(corpus, split, wanted), model.run_folder)
    cache = SlotCache.open(path)
    differences = cache.identity.differences(wanted)
    if differences:
        if mode == "auto":
            return None
        raise SlotCacheStale(split, path, differences, model.run_folder)
    stamp = (str(path), path.stat().st_mtime)
    if stamp not in _announced and console is not None:
        _announced.add(stamp)
        say(console, f"Description features of {split}: the slot cache {path} ({cache.dtype})")
    return cache


def _closest_cache(corpus, split: str, wanted: SlotIdentity) -> str:
    """Why the newest other cache of `split` does not fit (from-scratch encoders change with the corpus), or ''."""
    files = sorted((Path(corpus.path) / "slots").glob(f"*/{split}.safetensors"), key=lambda f: f.stat().st_mtime)
    for newest in reversed(files):
        try:
            differences = SlotCache.open(newest).identity.differences(wanted)
        except CorpusError:
            continue
        return (f"; the newest cache of split {split!r}, {newest}, was built from other inputs (what differs: "
            f"{'; '.join(differences)})")
    return ""


# ----------------------------------------------------------------------------- writing


def write_slot_file(
    path: Path,
    model,
    texts: Sequence[str],
    image_ids: Sequence[str],
    identity: SlotIdentity,
    *,
    batch_size: int,
    dtype: str,
    device,
    on_batch=None,
) -> None:
    """Encode `texts` with `model`'s frozen description encoder and write the cache file atomically.

    `dtype` is the storage dtype (bf16, fp16 or fp32). Texts are encoded in batches of similar
    length (longest first); each row keeps its valid tokens first. `on_batch(rows)` is called
    after each batch (progress).
    """
    torch_dtype, code = TORCH_DTYPES[dtype], STORAGE_CODES[dtype]
    max_length = identity.max_length
    lengths = [len(ids) for ids in model.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    longest = max(lengths)
    width = model.description_encoder.config.hidden_size
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    row_bytes = longest * width * itemsize
    metadata = {
        "format": SLOTS_FORMAT,
        "version": str(SLOTS_VERSION),
        **identity.metadata(),
        "dtype": dtype,
        "image_ids": json.dumps(list(image_ids), ensure_ascii=False),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        stale.unlink(missing_ok=True)  # left by an interrupted run
    mask = torch.zeros(len(texts), longest, dtype=torch.bool)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    with atomic_file(path) as temporary:
        out = StreamingSafetensors(
            temporary,
            {"features": (code, [len(texts), longest, width], itemsize), "mask": ("BOOL", [len(texts), longest], 1)},
            metadata,
        )
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    tokens = model.tokenize([texts[i] for i in rows], max_length)
                    features, valid = model.encode_descriptions(
                        tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
                    )
                    features, valid = features.to(torch_dtype).cpu(), valid.cpu()
                    for j, row in enumerate(rows):
                        kept = features[j][valid[j]]
                        out.write("features", row * row_bytes, tensor_bytes(kept))
                        mask[row, : kept.shape[0]] = True
                    if on_batch is not None:
                        on_batch(len(rows))
            out.write("mask", 0, tensor_bytes(mask))
        finally:
            out.close()
