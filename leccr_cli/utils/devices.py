"""Processes, devices and dtypes: one place decides where and in which precision work runs.

One dtype vocabulary for every command: `auto`, `bf16`, `fp16`, `fp32` (the long spellings
`bfloat16`, `float16`/`half` and `float32`/`float` are accepted as aliases). `auto` means
bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on the CPU.
"""

from __future__ import annotations

import os

import torch

from leccr_cli.errors import LeccrError

DTYPES = ("auto", "bf16", "fp16", "fp32")
DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def is_distributed_launch() -> bool:
    """True under `torchrun` / `accelerate launch` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str | None = None):
    """accelerate's `PartialState`, joining the processes of a launch (gloo on the CPU, NCCL on GPUs).

    `PartialState` alone only joins CPU processes when told `cpu=True` (`accelerate launch --cpu`
    says so through ACCELERATE_USE_CPU, torchrun does not), so the CPU is chosen explicitly
    when there is no CUDA or `device` is `cpu`.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def check_device(device: str) -> torch.device:
    """`device` as a torch device; a malformed name or an unavailable CUDA device is a `LeccrError`."""
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise LeccrError(f"--device {device!r} is not a device", "use cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise LeccrError(f"--device {device}: CUDA is not available here", "use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise LeccrError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices",
                f"use cuda:0 ... cuda:{torch.cuda.device_count() - 1}",
            )
    elif chosen.type != "cpu":
        raise LeccrError(f"--device {device!r} is not supported", "use cpu, cuda or cuda:N")
    return chosen


def select_device(device: str | None = None) -> torch.device:
    """The device to run on: `device` if given (checked), else this process's GPU if any, else the CPU.

    Also sets up the process state of a distributed launch (see `process_state`).
    """
    chosen = check_device(device) if device is not None else None
    state = process_state(device)
    if chosen is not None:
        return chosen
    return torch.device("cpu") if state.device.type == "cpu" else state.device


def parse_dtype(name: str) -> str:
    """The canonical name (auto, bf16, fp16, fp32) of a dtype name or alias; anything else is a `LeccrError`."""
    canonical = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if canonical not in DTYPES:
        raise LeccrError(f"--dtype {name!r} is not supported", f"use one of {', '.join(DTYPES)}")
    return canonical


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a dtype name on `device` (`auto`: bf16 or fp16 on GPUs, fp32 on the CPU)."""
    canonical = parse_dtype(name)
    if canonical == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return TORCH_DTYPES[canonical]


def dtype_name(dtype: torch.dtype) -> str:
    """The canonical name of a torch dtype (bf16, fp16, fp32)."""
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    raise LeccrError(f"dtype {dtype} is not one of {', '.join(TORCH_DTYPES)}")
