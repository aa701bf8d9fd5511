"""Two processes (torchrun, gloo, CPU) against one process on the same union batch.

Each rank computes every loss over the gathered batch, so its loss equals the union loss.
The gradient a rank receives for its own rows is W times the union gradient of those rows
(W = 2); DDP's averaging of parameter gradients divides by W again. The DDP part runs the
whole LECCR model: the averaged parameter gradients equal the union-batch gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leccr_cli.config import LossConfig, ModelConfig, TextConfig, VisionConfig
from leccr_cli.model import losses
from leccr_cli.model.factory import build_model, load_model
from leccr_cli.model.leccr import LeccrModel

WORLD = 2
TOLERANCE = 1e-5
WORKER = Path(__file__).with_name("distributed_worker.py")
TEXTS = [
    "a red circle on the left",
    "a small blue square at the top",
    "ein roter kreis links",
    "un carré bleu en haut",
    "a large green star in the middle and a yellow triangle at the bottom",
    "two purple shapes",
]


def _loss_inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    token_slot_mask = torch.zeros(6, 5, dtype=torch.bool)
    for row, length in enumerate([5, 2, 4, 3, 1, 2]):  # rank 0 pads to 5, rank 1 to 3
        token_slot_mask[row, :length] = True
    token_mask = torch.ones(6, 4, dtype=torch.bool)
    token_mask[1, 2:] = False
    token_mask[4, 1:] = False
    return {
        "image": unit(6, 8),
        "english": unit(6, 8),
        "target": unit(6, 8),
        "slots": unit(6, 3, 8),
        "tokens": unit(6, 4, 8),
        "token_mask": token_mask,
        "token_slots": unit(6, 5, 8),
        "token_slot_mask": token_slot_mask,
        "ids": torch.tensor([0, 1, 2, 2, 0, 5]),  # positives inside a rank and across ranks
    }


def _union_losses(inputs: dict) -> dict:
    x = {k: v.clone() for k, v in inputs.items()}
    keys = ("image", "english", "target", "slots", "tokens", "token_slots")
    for key in keys:
        x[key].requires_grad_(True)
    temperature = torch.tensor(0.1, requires_grad=True)
    ids = x["ids"]
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
        for key in keys:
            x[key].grad = None
        temperature.grad = None
        loss = compute()
        loss.backward()
        grads = {key: x[key].grad.clone() for key in keys if x[key].grad is not None}
        if temperature.grad is not None:
            grads["temperature"] = temperature.grad.clone()
        results[name] = {"loss": loss.detach(), "grads": grads}
    return results


def _tiny_model_config() -> ModelConfig:
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return ModelConfig(
        vision=VisionConfig(
            name_or_path=None,
            image_size=32,
            projection_dim=24,
            config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "patch_size": 8,
            },
        ),
        text=TextConfig(
            name_or_path=None,
            max_tokens=16,
            description_max_tokens=24,
            config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                **no_dropout,
            },
        ),
        joint_dim=16,
        num_slots=3,
        slot_layers=1,
        interaction_layers=1,
        heads=4,
    )


def _model_batch(model: LeccrModel) -> dict:
    g = torch.Generator().manual_seed(2)
    source = model.tokenize(TEXTS, 16)
    target = model.tokenize(list(reversed(TEXTS)), 16)
    descriptions = model.tokenize([t + " on a gray background" for t in TEXTS], 24)
    return {
        "pixel_values": torch.randn(6, 3, 32, 32, generator=g),
        "source_ids": source["input_ids"],
        "source_mask": source["attention_mask"],
        "target_ids": target["input_ids"],
        "target_mask": target["attention_mask"],
        "description_ids": descriptions["input_ids"],
        "description_mask": descriptions["attention_mask"],
        "image_index": torch.tensor([3, 1, 4, 4, 3, 9]),
    }


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    difference = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert actual.shape == expected.shape and difference <= TOLERANCE, f"{what}: max difference {difference:.3g}"


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_union_batch(tmp_path):
    inputs = _loss_inputs()
    torch.manual_seed(0)
    model = build_model(_tiny_model_config(), tokenizer_texts=TEXTS)
    model.save_pretrained(tmp_path / "model")
    batch = _model_batch(model)
    torch.save({"losses": inputs, "batch": batch}, tmp_path / "inputs.pt")

    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        str(WORKER),
        str(tmp_path / "inputs.pt"),
        str(tmp_path / "model"),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # every loss: the value on each rank is the union value; local grads / W are the union rows
    union = _union_losses(inputs)
    rows = 6 // WORLD
    for name, expected in union.items():
        for rank, result in enumerate(ranks):
            got = result["losses"][name]
            _assert_close(got["loss"], expected["loss"], f"{name} loss on rank {rank}")
            assert set(got["grads"]) == set(expected["grads"]), name
            for key, grad in expected["grads"].items():
                if key == "temperature":  # a parameter used directly: the full gradient on every rank
                    _assert_close(got["grads"][key], grad, f"{name} d/dtemperature on rank {rank}")
                    continue
                local = grad[rank * rows : (rank + 1) * rows]
                width = got["grads"][key].shape[1] if local.ndim == 3 else None
                if width is not None:  # the rank padded its sequences to its own longest only
                    assert local[:, width:].abs().max().item() == 0 if local.shape[1] > width else True
                    local = local[:, :width]
                _assert_close(got["grads"][key] / WORLD, local, f"{name} d/d{key} on rank {rank}")

    # the LECCR model under DDP: same loss, same terms, same averaged parameter gradients
    reference = load_model(tmp_path / "model")
    reference.train()
    output = reference(batch, LossConfig(w_c=0.3, w_kl=0.4, w_cv=0.2, w_reg=0.1))
    output.loss.backward()
    expected_grads = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert len(expected_grads) == sum(p.requires_grad for p in reference.parameters())
    for rank, result in enumerate(ranks):
        got = result["model"]
        _assert_close(got["loss"], output.loss.detach(), f"model loss on rank {rank}")
        for term, value in output.terms.items():
            _assert_close(got["terms"][term], value, f"{term} on rank {rank}")
        assert set(got["grads"]) == set(expected_grads)
        for name, grad in expected_grads.items():
            _assert_close(got["grads"][name], grad, f"d/d{name} on rank {rank}")
