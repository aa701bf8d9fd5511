"""Run by tests/test_distributed_losses.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Usage: distributed_worker.py INPUTS.pt MODEL_DIR OUT_DIR

Each rank takes its own rows of the union batch in INPUTS.pt, computes every loss (each
gathers the other rank's rows itself) and the gradients of its local inputs, then runs the
LECCR model of MODEL_DIR wrapped in DistributedDataParallel on its half of the model batch.
It writes OUT_DIR/rank<r>.pt for the test to compare with one process on the union batch.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from leccr_cli.config import LossConfig
from leccr_cli.model import losses
from leccr_cli.model.factory import load_model


def local_rows(tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return tensor.chunk(world)[rank]


def trim_padding(tensor: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut padded positions that no row of this rank uses, so ranks hold different lengths."""
    longest = int(mask.sum(dim=1).max())
    return tensor[:, :longest], mask[:, :longest]


def loss_results(inputs: dict, rank: int, world: int) -> dict:
    x = {k: local_rows(v, rank, world).clone() for k, v in inputs.items()}
    # descriptions as slots (`slots: false`): each rank pads only to its own longest sequence
    x["token_slots"], x["token_slot_mask"] = trim_padding(x["token_slots"], x["token_slot_mask"])
    for key in ("image", "english", "target", "slots", "tokens", "token_slots"):
        x[key].requires_grad_(True)
    ids, temperature = x["ids"], torch.tensor(0.1, requires_grad=True)
    computations = {
        "itc": lambda: losses.itc_loss(x["image"], x["english"], temperature, ids),
        "slot": lambda: losses.slot_matching_loss(x["slots"], x["target"], temperature, ids),
        "slot_masked": lambda: losses.slot_matching_loss(
            x["token_slots"], x["target"], temperature, ids, x["token_slot_mask"]
        ),
        "kl": lambda: losses.english_guided_kl(x["image"], x["english"], x["target"], x["slots"], 0.8),
        "cv": lambda: losses.description_vision_loss(x["slots"], x["tokens"], ids, None, x["token_mask"]),
        "div": lambda: losses.slot_diversity(x["token_slots"], x["token_slot_mask"]),
    }
    results = {}
    for name, compute in computations.items():
        for key in ("image", "english", "target", "slots", "tokens", "token_slots"):
            x[key].grad = None
        temperature.grad = None
        loss = compute()
        loss.backward()
        grads = {
            key: x[key].grad.clone()
            for key in ("image", "english", "target", "slots", "tokens", "token_slots")
            if x[key].grad is not None
        }
        if temperature.grad is not None:
            grads["temperature"] = temperature.grad.clone()
        results[name] = {"loss": loss.detach(), "grads": grads}
    return results


def model_results(model_dir: str, batch: dict, rank: int, world: int) -> dict:
    model = load_model(model_dir)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    local = {k: local_rows(v, rank, world) for k, v in batch.items()}
    output = ddp(local, LossConfig(w_c=0.3, w_kl=0.4, w_cv=0.2, w_reg=0.1))
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": output.loss.detach(), "terms": output.terms, "grads": grads}


def main() -> None:
    inputs_path, model_dir, out_dir = sys.argv[1:4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.load(inputs_path)
    results = {
        "losses": loss_results(data["losses"], rank, world),
        "model": model_results(model_dir, data["batch"], rank, world),
    }
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
