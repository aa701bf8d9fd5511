"""Resumable work in shards: the one helper behind captioning, translation and the index.

A long writer keeps its finished work in a hidden folder as shards, each written atomically:
small HF datasets of string columns (descriptions, translations) or safetensors files with
metadata (index batches), beside a `settings.json` that records how the work was made (model,
prompt, decoding settings, ...). A rerun with the same settings reuses every finished shard,
so an interrupted run finishes where it stopped. Shards made with other settings are never
mixed in silently: they are refused (`UnfinishedWork`, naming what differs) unless the caller
discards them (`overwrite`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from datasets import load_from_disk
from datasets.utils.logging import disable_progress_bar
from safetensors.torch import save_file

from leccr_cli.corpus.corpus import save_string_dataset
from leccr_cli.errors import UnfinishedWork
from leccr_cli.utils.fs import atomic_directory, atomic_file, atomic_write_text

SETTINGS_FILE = "settings.json"


class ShardStore:
    """A folder of finished shards made with `settings`: datasets with string `columns`, or tensor files."""

    def __init__(self, folder: Path, settings: dict[str, Any], columns: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.settings = settings
        self.columns = columns

    def recorded_settings(self) -> dict[str, Any] | None:
        """The settings of the run that left shards here: None if there is none, {} if unreadable."""
        settings_file = self.folder / SETTINGS_FILE
        if not settings_file.is_file():
            return None
        try:
            recorded = json.loads(settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def differences(self) -> list[str]:
        """The settings whose recorded values differ from this run's (empty when none or no earlier run)."""
        recorded = self.recorded_settings()
        if recorded is None:
            return []
        keys = list(self.settings) + [k for k in recorded if k not in self.settings]
        return [k for k in keys if recorded.get(k) != self.settings.get(k)]

    def check(self, overwrite: bool) -> None:
        """Refuse unfinished shards made with other settings, unless they are to be discarded (`overwrite`)."""
        differing = self.differences()
        if differing and not overwrite and self.count():
            raise UnfinishedWork(self.folder, differing)

    def start(self) -> None:
        """(Main process) discard shards of other settings and leftovers of killed writes; record the settings."""
        if self.differences():
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*"):  # half-written shards of a killed run
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        atomic_write_text(self.folder / SETTINGS_FILE, json.dumps(self.settings, indent=2, ensure_ascii=False) + "\n")

    def shard_names(self) -> list[str]:
        """Finished shards (dataset folders and tensor files), in name order."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.name.startswith("shard-"))

    def count(self) -> int:
        return len(self.shard_names())

    def write(self, name: str, rows: list[dict[str, str]]) -> None:
        """Write one shard `shard-<name>` atomically."""
        table = {column: [str(row[column]) for row in rows] for column in self.columns}
        with atomic_directory(self.folder / f"shard-{name}") as folder:
            shutil.rmtree(folder)
            save_string_dataset(table, folder)

    def write_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Write one tensor shard `shard-<name>.safetensors` atomically."""
        with atomic_file(self.folder / f"shard-{name}.safetensors") as temporary:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)

    def tensor_shards(self) -> list[Path]:
        """The finished tensor shards, in name order."""
        return [self.folder / name for name in self.shard_names() if name.endswith(".safetensors")]

    def rows(self) -> list[dict[str, str]]:
        """Every row of the finished shards, in shard-name order."""
        disable_progress_bar()
        rows: list[dict[str, str]] = []
        for name in self.shard_names():
            if not (self.folder / name).is_dir():
                continue
            table = load_from_disk(str(self.folder / name)).data.table
            columns = [table.column(c).to_pylist() for c in self.columns]
            rows.extend(dict(zip(self.columns, values)) for values in zip(*columns))
        return rows

    def remove(self, prune_up_to: Path | None = None) -> None:
        """Delete the folder, and its parents below `prune_up_to` once they are empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if prune_up_to is None:
            return
        parent = self.folder.parent
        while parent != Path(prune_up_to).parent and parent.is_dir():
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
