"""Processes, devices and dtypes: one place decides where and in which precision work runs.

One dtype vocabulary for every command: `auto`, `bf16`, `fp16`, `fp32` (the long spellings
`bfloat16`, `float16`/`half` and `float32`/`float` are accepted as aliases). `auto` means
bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on the CPU.
"""

from __future__ import annotations

import os

import torch

from leccr_cli.defaults import DTYPE_ALIASES, DTYPES
from leccr_cli.errors import InvalidArgument, LeccrError, Param, one_of, parts

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def is_main_process() -> bool:
    """True unless this is a secondary process of a distributed launch (the one test of "main process")."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def is_distributed_launch() -> bool:
    """True under `torchrun` / `accelerate launch` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str | torch.device | None = None):
    """accelerate's `PartialState`, joining the processes of a launch (gloo on the CPU, NCCL on GPUs).

    `PartialState` alone only joins CPU processes when told `cpu=True` (`accelerate launch --cpu`
    says so through ACCELERATE_USE_CPU, torchrun does not), so the CPU is chosen explicitly
    when there is no CUDA or `device` is `cpu`.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    on_cpu = device is not None and torch.device(device).type == "cpu"
    cpu = on_cpu or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def check_device(device: str) -> torch.device:
    """`device` as a torch device; a malformed name or an unavailable CUDA device is an `InvalidArgument`."""

    def refused(problem: str) -> InvalidArgument:
        return InvalidArgument(
            "device",
            device,
            "cpu, cuda or cuda:N",
            "use cpu, cuda or cuda:N",
            message=parts(Param("device", device, quote=True), problem),
        )

    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise refused(" is not a device") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgument("device", device, "CUDA is not available here", parts("use ", Param("device", "cpu")))
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise InvalidArgument(
                "device", device, f"this machine has {torch.cuda.device_count()} CUDA devices",
                f"use cuda:0 ... cuda:{torch.cuda.device_count() - 1}",
            )  # fmt: skip
    elif chosen.type != "cpu":
        raise refused(" is not supported")
    return chosen


def select_device(device: str | None = None) -> torch.device:
    """The device to run on: `device` if given (checked), else this process's GPU if any, else the CPU.

    Under a distributed launch a process's GPU is `cuda:<LOCAL_RANK>`. Nothing else happens:
    work that spans the processes joins them with `process_state`.
    """
    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def parse_dtype(name: str) -> str:
    """The canonical name (auto, bf16, fp16, fp32) of a dtype name or alias; anything else is a `LeccrError`."""
    canonical = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if canonical not in DTYPES:
        one_of("dtype", name, DTYPES)
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
