"""What a training checkpoint holds besides accelerate's state, and resuming without unpickling.

`checkpoints/step_N/` of a run:

```
model.safetensors               the weights (accelerate `save_state`, safetensors)
optimizer.bin, scheduler.bin    optimiser and schedule state (accelerate `save_state`, torch zip files;
                                read with `weights_only=True`: tensors and plain containers only)
scaler.pt                       the fp16 gradient scaler (optim.mixed_precision: fp16), read the same way
loop_state.json                 the loop counters, accelerate's step counter, the number of processes
rng_state_<rank>.safetensors    every process's random states: Python, NumPy, torch (CPU and CUDA)
```

accelerate writes the random states as a pickle (`random_states_<rank>.pkl`) and loads custom
state with `torch.load(weights_only=False)`; leccr registers no custom state, writes the
random states itself and removes accelerate's pickle, and refuses a checkpoint folder that
holds any `.pkl` file, so a planted pickle is never read. A missing or damaged file is named
in one line, with the older checkpoints of the run that remain.
"""

from __future__ import annotations

import json
import math
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from leccr_cli.errors import Param, RunError, parts
from leccr_cli.runs.layout import CHECKPOINTS_DIR, checkpoint_dirs

LOOP_STATE_FILE = "loop_state.json"
MODEL_FILE = "model.safetensors"
TORCH_FILES = ("optimizer.bin", "scheduler.bin")
SCALER_FILE = "scaler.pt"
ACCELERATE_RNG_PICKLE = "random_states_{rank}.pkl"
LOOP_STATE_KEYS = ("global_step", "epoch", "batches_in_epoch", "best_step", "accelerator_step", "processes")


def rng_file(rank: int) -> str:
    """The file of process `rank`'s random states."""
    return f"rng_state_{rank}.safetensors"


def save_rng_state(folder: Path, rank: int) -> None:
    """Write this process's random states (Python, NumPy, torch CPU and CUDA) and drop accelerate's pickle."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([name, int(position), int(has_gauss), float(cached)]),
    }
    save_file(tensors, str(folder / rng_file(rank)), metadata=metadata)
    (folder / ACCELERATE_RNG_PICKLE.format(rank=rank)).unlink(missing_ok=True)


def load_rng_state(folder: Path, rank: int) -> None:
    """Restore the random states `save_rng_state` wrote for process `rank`."""
    path = folder / rng_file(rank)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
        version, internal, gauss = json.loads(metadata["python"])
        name, position, has_gauss, cached = json.loads(metadata["numpy"])
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    except (OSError, SafetensorError, KeyError, ValueError, TypeError, RuntimeError) as error:
        raise checkpoint_error(folder, f"{path.name} is damaged ({_reason(error)})") from None


def write_loop_state(folder: Path, state: dict) -> None:
    """Write the loop counters as strict JSON (a best score of -inf is written as null)."""
    record = {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in state.items()
    }
    (folder / LOOP_STATE_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def read_loop_state(folder: Path) -> dict:
    """The loop counters of a checkpoint; a missing, unreadable or incomplete file is a `RunError`."""
    path = folder / LOOP_STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise checkpoint_error(folder, f"{path.name} is unreadable ({_reason(error)})") from None
    bad = [key for key in LOOP_STATE_KEYS if not isinstance(state.get(key) if isinstance(state, dict) else None, int)]
    if bad:
        raise checkpoint_error(folder, f"{path.name} lacks {bad[0]!r}")
    score = state.get("best_score")
    state["best_score"] = -math.inf if score is None else float(score)
    return state


def check_checkpoint(folder: Path, num_processes: int, needs_scaler: bool) -> dict:
    """Check a checkpoint folder before anything in it is loaded; return its loop state.

    Refuses a folder holding a pickle, a missing file, and a checkpoint written by another
    number of processes.
    """
    pickles = sorted(p.name for p in folder.glob("*.pkl"))
    if pickles:
        raise checkpoint_error(
            folder,
            f"it holds {pickles[0]}, a pickle leccr never writes and will not load "
            "(a checkpoint of an older leccr, or a planted file)",
        )
    required = [MODEL_FILE, *TORCH_FILES, LOOP_STATE_FILE] + ([SCALER_FILE] if needs_scaler else [])
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise checkpoint_error(folder, f"{missing[0]} is missing")
    state = read_loop_state(folder)
    if state["processes"] != num_processes:
        raise RunError(
            parts(
                Param("resume"),
                f": {folder} was written by {state['processes']} processes, this run has {num_processes}",
            ),
            f"resume it with {state['processes']} processes (e.g. torchrun --nproc_per_node {state['processes']})",
        )
    missing = [rng_file(rank) for rank in range(num_processes) if not (folder / rng_file(rank)).is_file()]
    if missing:
        raise checkpoint_error(folder, f"{missing[0]} is missing")
    return state


def damaged_file(folder: Path) -> tuple[str, str] | None:
    """(file name, reason) of the first file of a checkpoint that cannot be read, if any (after a failed load)."""
    for name in (MODEL_FILE, *TORCH_FILES, SCALER_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt") as file:
                    for key in file.keys():
                        file.get_tensor(key)
            else:
                torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, SafetensorError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
            return name, _reason(error)
    return None


def checkpoint_error(folder: Path, problem: str) -> RunError:
    """`resume: checkpoint <folder>: <problem>`, with the other checkpoints of its run that remain."""
    run_dir = folder.parent.parent if folder.parent.name == CHECKPOINTS_DIR else None
    others = [p for p in checkpoint_dirs(run_dir) if p != folder] if run_dir is not None else []
    if others:
        also = ", ".join(p.name for p in reversed(others[:-1]))
        step = int(folder.name[5:]) if folder.name.startswith("step_") and folder.name[5:].isdigit() else None
        kind = "older" if step is not None and int(others[-1].name[5:]) < step else "other"
        hint = parts(
            f"resume from the {kind} checkpoint: ", Param("resume", str(others[-1])), f" (also {also})" if also else ""
        )
    else:
        hint = parts("no other checkpoint remains: start the run again with ", Param("overwrite", True))
    return RunError(parts(Param("resume"), f": checkpoint {folder}: {problem}"), hint)


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
