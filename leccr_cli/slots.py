"""The description-feature cache (`leccr build-slots`, DESIGN sections 3 and 4).

In `frozen` description-encoder mode F_c never changes, so its token features are computed
once per split and stored in `CORPUS/slots/<encoder-slug>/<split>.safetensors`:

- `features` [N, L, D]: the token features of every description (rows in gallery order),
  L = the longest description of the file; valid tokens come first, padding is zero;
- `mask` [N, L] bool: True for valid tokens;
- metadata: `image_ids` (the row order, JSON) and the cache's identity: the encoder id, a
  hash of its weights, a hash of the tokenizer's vocabulary, the max length, the
  description source and a hash of the split's (image_id, text) description rows.

Training and evaluation compute the same identity from their model and corpus: with
`model.description_features: cache` a missing or mismatching cache is refused (naming what
differs and the command that rebuilds it); with `auto` a matching one is used and anything
else falls back to live encoding. Reading is memory-mapped, one row per dataset item.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import uuid
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from leccr_cli.errors import CorpusError, LeccrError, RecipeError

SLOTS_FORMAT = "leccr-slots"
SLOTS_VERSION = 1
# --dtype name -> (torch dtype name, safetensors dtype code)
DTYPES = {"fp16": ("float16", "F16"), "bf16": ("bfloat16", "BF16"), "fp32": ("float32", "F32")}
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
            found.append(f"the descriptions of the split in descriptions/{wanted.descriptions}, changed since the cache was built")
        return found


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


# weights digests of modules whose tensors have not changed since (keyed by pointer and version)
_weights_digests: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weights_digest(module) -> str:
    """A hash of every tensor of `module` (names, dtypes, shapes, values)."""
    import torch

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


def slot_identity(model, recipe, image_ids: Sequence[str], descriptions: dict[str, str]) -> SlotIdentity:
    """The identity of the features `model`'s frozen description encoder gives these descriptions."""
    return SlotIdentity(
        encoder=encoder_name(model.config),
        encoder_weights=weights_digest(model.description_encoder),
        tokenizer=vocabulary_digest(model.tokenizer),
        max_length=recipe.model.text.description_max_tokens,
        descriptions=recipe.data.descriptions,
        descriptions_hash=descriptions_digest(image_ids, descriptions),
    )


def cache_path(corpus, slug: str, split: str) -> Path:
    """CORPUS/slots/<slug>/<split>.safetensors."""
    return Path(corpus.path) / "slots" / slug / f"{split}.safetensors"


# ----------------------------------------------------------------------------- reading


class SlotCache:
    """Memory-mapped reader of one cache file: `row(image_id)` gives that description's valid token features.

    The file is opened lazily in each process (DataLoader workers included): safe_open handles
    cannot be pickled or shared across a fork.
    """

    def __init__(self, path: Path, identity: SlotIdentity, image_ids: list[str], lengths: list[int], dtype: str):
        self.path = Path(path)
        self.identity = identity
        self.image_ids = image_ids
        self.lengths = lengths
        self.dtype = dtype
        self._rows = {image_id: i for i, image_id in enumerate(image_ids)}
        self._handle = self._features = self._owner = None

    @classmethod
    def open(cls, path: str | Path) -> "SlotCache":
        """Read a cache's metadata and row lengths; a file that is not a leccr slot cache is a `CorpusError`."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != SLOTS_FORMAT or meta.get("version") != str(SLOTS_VERSION):
                    raise CorpusError(
                        f"{path} is not a leccr slot cache (version {SLOTS_VERSION})",
                        "rebuild it with `leccr build-slots ... --overwrite`",
                    )
                lengths = handle.get_tensor("mask").sum(dim=1).tolist()
            identity = SlotIdentity.from_metadata(meta)
            image_ids = json.loads(meta["image_ids"])
            dtype = meta["dtype"]
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            raise CorpusError(f"{path}: unreadable slot cache ({error})", "rebuild it with `leccr build-slots ... --overwrite`") from None
        return cls(path, identity, image_ids, lengths, dtype)

    def __len__(self) -> int:
        return len(self.image_ids)

    def row(self, image_id: str):
        """The [length, D] token features of `image_id`'s description (padding left out)."""
        try:
            row = self._rows[image_id]
        except KeyError:
            raise CorpusError(f"{self.path}: no features for {image_id!r}", "rebuild the cache with `leccr build-slots`") from None
        if self._features is None or self._owner != os.getpid():
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt")
            self._features = self._handle.get_slice("features")
            self._owner = os.getpid()
        return self._features[row : row + 1, : self.lengths[row]][0]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = state["_features"] = state["_owner"] = None
        return state


def pad_features(rows: list) -> tuple:
    """Stack [length_i, D] feature rows into [B, max length, D] (zero padding) and a [B, max length] bool mask."""
    import torch

    longest = max(r.shape[0] for r in rows)
    features = rows[0].new_zeros(len(rows), longest, rows[0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        features[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return features, mask


_announced: set[tuple[str, float]] = set()


def open_slot_cache(
    model,
    corpus,
    split: str,
    recipe,
    *,
    descriptions: dict[str, str] | None = None,
    rebuild_from: str | Path | None = None,
) -> SlotCache | None:
    """The cache that stands in for live description encoding of `split`, or None to encode live.

    None unless the model has a frozen description encoder and `model.description_features`
    is `auto` or `cache`. With `cache`, a missing or mismatching cache is a `CorpusError`
    naming what differs and the `leccr build-slots` command (from `rebuild_from`, a recipe
    or run folder) that rebuilds it; with `auto` it silently means None. `descriptions`
    (image_id -> text) saves reading them again.
    """
    mode = recipe.model.description_features
    if mode == "live" or getattr(model, "description_encoder", None) is None or not model.reads_descriptions:
        return None
    from leccr_cli.data.loading import check_descriptions

    image_ids = corpus.image_ids(corpus.check_split(split))
    if descriptions is None:
        descriptions = check_descriptions(corpus, recipe.data.descriptions, image_ids)
    wanted = slot_identity(model, recipe, image_ids, descriptions)
    path = cache_path(corpus, encoder_slug(model.config, wanted.encoder_weights), split)
    source = rebuild_from if rebuild_from is not None else _model_source(model)
    if not path.is_file():
        if mode == "auto":
            return None
        raise CorpusError(
            f"model.description_features is 'cache' but there is no slot cache for this description encoder "
            f"({path}){_closest_cache(corpus, split, wanted)}",
            f"build it with `leccr build-slots {source} --split {split}`",
        )
    cache = SlotCache.open(path)
    differences = cache.identity.differences(wanted)
    if differences:
        if mode == "auto":
            return None
        raise CorpusError(
            f"slot cache {path} does not match this model and corpus (what differs: {'; '.join(differences)})",
            f"rebuild it with `leccr build-slots {source} --split {split} --overwrite`",
        )
    stamp = (str(path), path.stat().st_mtime)
    if stamp not in _announced:
        _announced.add(stamp)
        from leccr_cli.console import err_console, is_main_process

        if is_main_process():
            err_console.print(f"Description features of {split}: the slot cache {path} ({cache.dtype})")
    return cache


def _closest_cache(corpus, split: str, wanted: SlotIdentity) -> str:
    """Why the newest other cache of `split` does not fit (from-scratch encoders change with the corpus), or ''."""
    files = sorted((Path(corpus.path) / "slots").glob(f"*/{split}.safetensors"), key=lambda f: f.stat().st_mtime)
    for newest in reversed(files):
        try:
            differences = SlotCache.open(newest).identity.differences(wanted)
        except CorpusError:
            continue
        return f"; the newest cache of split {split!r}, {newest}, was built from other inputs (what differs: {'; '.join(differences)})"
    return ""


def _model_source(model) -> str:
    """What to give `leccr build-slots` to rebuild a cache for `model`: its run folder when known."""
    folder = getattr(model, "source_folder", None)
    if folder is not None and Path(folder).name == "model" and (Path(folder).parent / "recipe.yaml").is_file():
        return str(Path(folder).parent)
    return "RECIPE_OR_RUN"


# ----------------------------------------------------------------------------- writing


class _StreamingSafetensors:
    """A safetensors file whose tensor bytes are written piece by piece at known offsets.

    The format: an 8-byte little-endian header size, a JSON header (padded with spaces to a
    multiple of 8) giving each tensor's dtype, shape and byte range, then the raw bytes.
    The data area is allocated (zero-filled) up front, so unwritten bytes read as zeros.
    """

    def __init__(self, path: Path, tensors: dict[str, tuple[str, list[int], int]], metadata: dict[str, str]):
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
        raw += b" " * (-len(raw) % 8)
        self.handle = open(path, "wb")
        self.handle.write(struct.pack("<Q", len(raw)) + raw)
        self.start = 8 + len(raw)
        self.handle.truncate(self.start + position)

    def write(self, name: str, offset: int, data: bytes) -> None:
        self.handle.seek(self.start + self.offsets[name] + offset)
        self.handle.write(data)

    def close(self) -> None:
        self.handle.close()


def _tensor_bytes(tensor) -> bytes:
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


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

    Texts are encoded in batches of similar length (longest first); each row keeps its valid
    tokens first. `on_batch(rows)` is called after each batch (progress).
    """
    import torch

    torch_dtype, code = getattr(torch, DTYPES[dtype][0]), DTYPES[dtype][1]
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
    temporary = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    mask = torch.zeros(len(texts), longest, dtype=torch.bool)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    try:
        out = _StreamingSafetensors(
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
                        out.write("features", row * row_bytes, _tensor_bytes(kept))
                        mask[row, : kept.shape[0]] = True
                    if on_batch is not None:
                        on_batch(len(rows))
            out.write("mask", 0, _tensor_bytes(mask))
        finally:
            out.close()
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- build-slots


@dataclass
class SplitReport:
    """One split of a `build_slots` run."""

    split: str
    path: Path
    status: str  # "built", or "up to date" (skipped: a matching cache exists, in `dtype`)
    rows: int
    longest: int
    dtype: str
    bytes: int


def _load_source(source: Path, overrides: Sequence[str]):
    """(recipe, model or None) of a recipe file or a run folder."""
    from leccr_cli.config import load_recipe
    from leccr_cli.evaluate import load_run

    if source.is_dir():
        if overrides:
            raise LeccrError("--set applies to a recipe file, not to a run folder", "drop --set, or give the recipe instead")
        return load_run(source)
    return load_recipe(source, list(overrides)), None


def _check_frozen(recipe, model, source: Path) -> None:
    """Refuse a recipe (and, once built, a model) without a frozen description encoder: nothing to cache."""
    config = recipe.model
    if config.description_encoder != "frozen":
        raise RecipeError(
            f"{source}: model.description_encoder is 'shared': description features follow the text encoder "
            "as it trains, so there is nothing to cache",
            "to train from a cache, set model.description_encoder: frozen and model.description_features: cache or auto",
        )
    if model is not None and model.description_encoder is None:
        raise RecipeError(
            f"{source}: this model reads no descriptions (model.variant: {config.variant}, or every description "
            "component switched off), so there is nothing to cache"
        )


def parse_splits(text: str, corpus) -> list[str]:
    """`all` (every split of the corpus) or a comma-separated list of splits."""
    if text.strip() == "all":
        return corpus.splits
    splits = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not splits:
        raise LeccrError(f"--split {text!r}: name splits (comma-separated) or 'all'")
    return [corpus.check_split(s) for s in splits]


def build_slots(
    source: str | Path,
    *,
    splits: str = "all",
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    dtype: str = "fp16",
    overwrite: bool = False,
) -> list[SplitReport]:
    """Cache the frozen description features of a recipe's (or a run's) corpus, split by split.

    `source` is a recipe file (the model is built exactly as `leccr train` builds it) or a run
    folder (its `model/`). A split whose cache exists and matches is skipped; one that exists
    but does not match is refused unless `overwrite`. Encodes on the GPU when there is one.
    Returns one report per split.
    """
    import torch
    from accelerate import PartialState

    from leccr_cli.console import progress
    from leccr_cli.data.loading import check_descriptions
    from leccr_cli.train import build_recipe_model, ensure_corpus, resolve_recipe_paths

    if dtype not in DTYPES:
        raise LeccrError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    source = Path(source)
    recipe, model = _load_source(source, overrides)
    recipe = resolve_recipe_paths(recipe)
    _check_frozen(recipe, model, source)
    corpus = ensure_corpus(recipe, PartialState())
    if model is None:
        model = build_recipe_model(recipe, corpus)
    _check_frozen(recipe, model, source)
    chosen = parse_splits(splits, corpus)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.description_encoder.to(device)
    batch_size = batch_size or recipe.eval.batch_size

    reports = []
    for split in chosen:
        image_ids = corpus.image_ids(split)
        descriptions = check_descriptions(corpus, recipe.data.descriptions, image_ids)
        identity = slot_identity(model, recipe, image_ids, descriptions)
        path = cache_path(corpus, encoder_slug(model.config, identity.encoder_weights), split)
        if path.is_file() and not overwrite:
            existing = SlotCache.open(path)
            differences = existing.identity.differences(identity)
            if differences:
                raise CorpusError(
                    f"{path} exists and does not match this model and corpus (what differs: {'; '.join(differences)})",
                    f"pass --overwrite to rebuild it (`leccr build-slots {source} --split {split} --overwrite`)",
                )
            reports.append(
                SplitReport(split, path, "up to date", len(existing), max(existing.lengths), existing.dtype, path.stat().st_size)
            )
            continue
        texts = [descriptions[i] for i in image_ids]
        bar = progress()
        with bar:
            task = bar.add_task(f"encoding {split} descriptions", total=len(texts))
            write_slot_file(
                path,
                model,
                texts,
                image_ids,
                identity,
                batch_size=batch_size,
                dtype=dtype,
                device=device,
                on_batch=lambda rows: bar.advance(task, rows),
            )
        built = SlotCache.open(path)
        reports.append(SplitReport(split, path, "built", len(built), max(built.lengths), dtype, path.stat().st_size))
    return reports
