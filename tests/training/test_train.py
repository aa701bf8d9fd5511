"""The training loop: a real run, resume after a kill, two processes, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from leccr_cli.testing import raises_on_command_line, tiny_recipe
from leccr_cli.cli.main import app
from leccr_cli.config import recipe_from_dict
from leccr_cli.corpus.corpus import Caption, Corpus
from leccr_cli.errors import LeccrError, RunError
from leccr_cli.training.trainer import train

runner = CliRunner()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_loss_decreases_and_the_run_folder_is_complete(synthetic_corpus, tmp_path):
    recipe = recipe_from_dict(
        tiny_recipe(synthetic_corpus, optim={"max_steps": 40, "batch_size": 16}, eval={"every_steps": 20})
    )
    result = train(recipe, tmp_path / "run")
    log = _lines(tmp_path / "run" / "train_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 41))
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    assert last < first - 0.3, (first, last)
    assert {"itc_vs", "itc_st", "itc_vt", "slot_match_s", "english_kl", "description_vision", "slot_diversity"} <= set(
        log[0]
    )
    metrics = _lines(tmp_path / "run" / "metrics.jsonl")
    val = [(m["step"], m["lang"]) for m in metrics if m["split"] == "val"]
    assert val == [(step, lang) for step in (20, 40) for lang in ("de", "fr", "cs")]
    test = {m["lang"]: m for m in metrics if m["split"] == "test"}
    assert set(test) == {"de", "fr", "cs"} and result.test["cs"]["sumr"] == test["cs"]["sumr"]
    best = max((20, 40), key=lambda s: sum(m["sumr"] for m in metrics if m["split"] == "val" and m["step"] == s))
    assert result.best_step == best
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "eval" / "de-test.json").read_text())["sumr"] == test["de"]["sumr"]
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert Path(saved["data"]["corpus"]).is_absolute() and saved["optim"]["max_steps"] == 40
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["step_20", "step_40"]


def test_evaluate_reads_the_run_and_matches_training(own_run):
    result = runner.invoke(app, ["evaluate", str(own_run), "--lang", "cs", "--lang", "de"])
    assert result.exit_code == 0, result.output
    assert "T2I R@1" in result.output and "cs" in result.output
    written = json.loads((own_run / "eval" / "cs-test.json").read_text())
    from_training = [m for m in _lines(own_run / "metrics.jsonl") if m["split"] == "test" and m["lang"] == "cs"][0]
    for key in ("i2t_r1", "t2i_r1", "t2i_r10", "sumr"):
        assert written[key] == pytest.approx(from_training[key])
    fused = runner.invoke(
        app, ["evaluate", str(own_run), "--lang", "de", "--fusion", "0.5", "--json", str(own_run / "all.json")]
    )
    assert fused.exit_code == 0, fused.output
    assert json.loads((own_run / "eval" / "de-test-fusion0.5.json").read_text())["fusion_mode"] == "linear"
    assert set(json.loads((own_run / "all.json").read_text())) == {"de"}
    minmax = runner.invoke(
        app, ["evaluate", str(own_run), "--lang", "de", "--fusion-mode", "minmax", "--fusion", "0.9"]
    )
    assert minmax.exit_code == 0, minmax.output
    record = json.loads((own_run / "eval" / "de-test-minmax0.9.json").read_text())
    assert record["fusion"] == 0.9 and record["fusion_mode"] == "minmax" and 0 <= record["t2i_r1"] <= 100
    assert json.loads((own_run / "eval" / "de-test.json").read_text())["fusion_mode"] is None


def test_evaluate_translate_test_and_all_languages(own_run):
    result = runner.invoke(app, ["evaluate", str(own_run), "--lang", "all", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (own_run / "eval").glob("*-val.json")) == [
        f"{lang}-val.json" for lang in ("cs", "de", "en", "fr")
    ]
    translated = runner.invoke(app, ["evaluate", str(own_run), "--lang", "fr", "--translate-test"])
    assert translated.exit_code == 0, translated.output
    record = json.loads((own_run / "eval" / "fr-test-translate-test.json").read_text())
    assert record["translate_test"] is True and 0 <= record["t2i_r1"] <= 100


def test_evaluate_bad_input(trained_run, tmp_path):
    for args, message in [
        ([str(trained_run), "--lang", "ja"], "no captions in language 'ja' (available: cs, de, en, fr)"),
        ([str(trained_run), "--split", "dev"], "no split 'dev' (available: train, val, test)"),
        ([str(tmp_path)], "is not a run folder"),
        ([str(trained_run), "--scores", "x.safetensors"], "--scores and --labels go together"),
        ([str(trained_run), "--fusion-mode", "minmax"], "--fusion-mode minmax needs --fusion ALPHA"),
        (
            [str(trained_run), "--fusion-mode", "cubic", "--fusion", "0.5"],
            "--fusion-mode 'cubic': expected linear or minmax",
        ),
    ]:
        result = runner.invoke(app, ["evaluate", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
    (tmp_path / "recipe.yaml").write_text((trained_run / "recipe.yaml").read_text())
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "has no model/ yet" in result.output


def _run_cli(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "leccr_cli", "train", *args], cwd=cwd, env=env, **kwargs)


@pytest.mark.slow
def test_resume_after_a_kill_ends_like_an_uninterrupted_run(synthetic_corpus, tmp_path):
    raw = tiny_recipe(
        synthetic_corpus,
        optim={"max_steps": 12},
        eval={"every_steps": 4},
        train={"checkpoint_every_steps": 2, "keep_checkpoints": 3, "log_every_steps": 1},
    )
    recipe = _write_recipe(tmp_path / "r.yaml", raw)
    straight = _run_cli(
        [str(recipe), "--output", "straight"], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    straight.wait(timeout=300)
    assert straight.returncode == 0

    victim = _run_cli(
        [str(recipe), "--output", "killed"], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoints" / "step_6").is_dir():
        assert victim.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step_12").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "leccr_cli", "train", str(recipe), "--output", "killed", "--resume", "latest"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stderr
    for name in ("checkpoints/step_12/model.safetensors", "model/model.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "killed" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] - b[key]).abs().max() <= 1e-6, (name, key)
    for log in ("train_log.jsonl", "metrics.jsonl"):
        straight_lines, resumed_lines = _lines(tmp_path / "straight" / log), _lines(tmp_path / "killed" / log)
        assert len(straight_lines) == len(resumed_lines), log
        for a, b in zip(straight_lines, resumed_lines):
            assert a.keys() == b.keys()
            for key in a.keys() - {"seconds"}:
                assert a[key] == (pytest.approx(b[key], abs=1e-6) if isinstance(b[key], float) else b[key]), (log, key)


@pytest.mark.slow
def test_two_processes_match_one_process_at_step_one(synthetic_corpus, tmp_path):
    raw = tiny_recipe(synthetic_corpus, optim={"max_steps": 1, "batch_size": 16}, eval={"every_steps": 1})
    recipe = _write_recipe(tmp_path / "r.yaml", raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "leccr_cli", "train", str(recipe), "--output", "one"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # a hang at teardown must fail this test, not stall the suite
    double = subprocess.run(
        [*torchrun, "-m", "leccr_cli", "train", str(recipe), "--output", "two"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _lines(tmp_path / "one" / "train_log.jsonl"), _lines(tmp_path / "two" / "train_log.jsonl")
    assert len(one) == len(two) == 1
    for key in (
        "loss",
        "itc_vs",
        "itc_st",
        "itc_vt",
        "slot_match_s",
        "english_kl",
        "description_vision",
        "slot_diversity",
    ):
        assert two[0][key] == pytest.approx(one[0][key], abs=1e-5), key
    val_one = [m for m in _lines(tmp_path / "one" / "metrics.jsonl") if m["split"] == "val"]
    val_two = [m for m in _lines(tmp_path / "two" / "metrics.jsonl") if m["split"] == "val"]
    assert [m["sumr"] for m in val_one] == pytest.approx([m["sumr"] for m in val_two], abs=1e-3)


def test_bad_input_is_refused_with_a_hint(synthetic_corpus, tmp_path):
    def refused(raw, match, **kwargs):
        with raises_on_command_line(LeccrError, match, "train"):
            train(recipe_from_dict(raw), tmp_path / "out", **kwargs)

    refused(tiny_recipe(tmp_path / "nowhere"), r"data.corpus .*nowhere: no such folder.*leccr data synth")
    refused(
        tiny_recipe(synthetic_corpus, optim={"batch_size": 15, "gradient_accumulation_steps": 2}),
        "does not split into 1 processes x 2",
    )
    refused(tiny_recipe(synthetic_corpus, optim={"batch_size": 512}), "fewer than one global batch")
    # a corpus whose German translations are missing, and one with a description missing
    copy = Corpus.open(synthetic_corpus)
    thin = tmp_path / "thin"
    from leccr_cli.corpus.corpus import write_corpus

    rows = [c for c in copy.captions() if not (c.lang == "de" and c.origin == "mt")]
    described = [r for r in copy.description_rows("synthetic") if r["image_id"] != "img00002"]
    write_corpus(
        thin,
        name="thin",
        modality="image",
        media_root=str(copy.media_root),
        images=copy.images(),
        captions=rows,
        descriptions={"synthetic": described},
    )
    refused(tiny_recipe(thin), r"no machine-translated de captions in split 'train'.*leccr translate .* --to de")
    refused(
        tiny_recipe(thin, data={"corpus": str(thin), "target_langs": ["fr"], "descriptions": "synthetic"}),
        r"first: img00002.*leccr caption",
    )
    refused(
        tiny_recipe(thin, data={"corpus": str(thin), "target_langs": ["fr"], "descriptions": "llava"}),
        r"no descriptions from 'llava'",
    )


def test_an_output_folder_holding_a_run_is_refused(trained_run, synthetic_corpus, tmp_path):
    other = recipe_from_dict(tiny_recipe(synthetic_corpus, optim={"max_steps": 2}))
    with raises_on_command_line(RunError, "already holds a run.*--resume latest.*--overwrite", "train"):
        train(other, trained_run)
    with pytest.raises(RunError, match=r"recipe differs .*optim.max_steps"):
        train(other, trained_run, resume="latest")
    result = runner.invoke(
        app,
        ["train", str(_write_recipe(tmp_path / "r.yaml", tiny_recipe(synthetic_corpus))), "--output", str(trained_run)],
    )
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_default_run_folders_do_not_collide(synthetic_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tiny_recipe(synthetic_corpus, optim={"max_steps": 1}, eval={"every_steps": 1})
    first = train(recipe_from_dict(raw))
    second = train(recipe_from_dict(raw))
    assert (first.run_dir, second.run_dir) == (Path("runs/tiny"), Path("runs/tiny-2"))
    from leccr_cli.runs.layout import latest_run

    assert latest_run() == Path("runs/tiny-2")


def test_out_of_memory_gets_a_batch_size_hint(synthetic_corpus, tmp_path, monkeypatch):
    import torch

    from leccr_cli.model.leccr import LeccrModel

    def exhausted(self, batch, loss_config):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LeccrModel, "forward", exhausted)
    with pytest.raises(LeccrError, match="out of memory at a per-device batch of 16.*lower optim.batch_size"):
        train(recipe_from_dict(tiny_recipe(synthetic_corpus)), tmp_path / "run")


def _video_corpus(folder: Path) -> Path:
    import torch

    from leccr_cli.corpus.corpus import ImageRow, write_corpus
    from leccr_cli.corpus.video import write_frame_features

    colours = ["red", "green", "blue", "yellow"]
    german = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"}
    images, captions, descriptions, ids, frames = [], [], [], [], []
    generator = torch.Generator().manual_seed(0)
    for n in range(40):
        split = "train" if n < 24 else ("val" if n < 32 else "test")
        video, colour = f"v{n:02d}", colours[n % 4]
        images.append(ImageRow(video, split, video))
        descriptions.append(
            {"image_id": video, "text": f"a video of a {colour} ball rolling", "model": "m", "prompt": "p"}
        )
        ids.append(video)
        frames.append(torch.randn(3 + n % 4, 12, generator=generator) + (n % 4))
        for k in range(2):
            captions.append(Caption(f"{video}#en#{k}", video, split, "en", "human", f"a {colour} ball number {k}"))
            if split == "train":
                captions.append(
                    Caption(
                        f"{video}#en2de#{k}",
                        video,
                        split,
                        "de",
                        "mt",
                        f"ein {german[colour]} ball {k}",
                        f"{video}#en#{k}",
                        "m",
                    )
                )
            else:
                captions.append(
                    Caption(f"{video}#de#{k}", video, split, "de", "human", f"ein {german[colour]} ball {k}")
                )

    def add_features(tmp):
        write_frame_features(tmp / "video" / "clip.safetensors", ids, frames)

    write_corpus(
        folder,
        name="videos",
        modality="video",
        media_root=".",
        images=images,
        captions=captions,
        descriptions={"synthetic": descriptions},
        fill=add_features,
    )
    return folder


def test_a_video_corpus_trains_and_evaluates_with_minmax_fusion(tmp_path):
    import dataclasses

    import torch

    from leccr_cli.retrieval.encode import encode_gallery, encode_texts
    from leccr_cli.retrieval.evaluate import eval_options, evaluate_languages, query_captions
    from leccr_cli.retrieval.metrics import recall_metrics
    from leccr_cli.model.factory import load_model

    corpus = _video_corpus(tmp_path / "videos")
    video = {"width": 32, "layers": 1, "heads": 4, "max_frames": 4}
    raw = tiny_recipe(
        corpus, data={"target_langs": ["de"]}, model={**tiny_recipe(corpus)["model"], "video": video, "num_slots": 2}
    )
    raw["optim"]["max_steps"] = 4
    raw["eval"].update(fusion=0.9, fusion_mode="minmax")
    recipe = recipe_from_dict(raw)
    result = train(recipe, tmp_path / "run")
    assert set(result.test) == {"de"}
    written = json.loads((tmp_path / "run" / "eval" / "de-test-minmax0.9.json").read_text())
    assert written["fusion_mode"] == "minmax" and written["sumr"] == result.test["de"]["sumr"]

    model = load_model(tmp_path / "run" / "model")
    assert model.modality == "video" and model.frame_dim == 12
    # the fused scores of the whole test matrix, min-max scaled at once in numpy
    opened = Corpus.open(corpus)
    image_ids, gallery = encode_gallery(
        model, opened, "test", descriptions=recipe.data.descriptions, batch_size=recipe.eval.batch_size
    )
    texts, owners = query_captions(opened, "test", "de")
    text_embeds = encode_texts(model, texts, batch_size=recipe.eval.batch_size)
    global_scores = (text_embeds @ gallery.global_embeds.T).double().numpy()
    slot_scores = model.slot_scores(text_embeds, gallery).double().numpy()
    scaled = [(m - m.min()) / (m.max() - m.min()) for m in (global_scores, slot_scores)]
    oracle = recall_metrics(torch.from_numpy(0.9 * scaled[0] + 0.1 * scaled[1]), [image_ids.index(i) for i in owners])
    row_by_row = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, memory_budget_mb=1e-6))
    for metrics in (
        result.test["de"],
        evaluate_languages(
            model, opened, "test", ["de"], **{**eval_options(row_by_row), "fusion": 0.9, "fusion_mode": "minmax"}
        )["de"],
    ):
        assert metrics == pytest.approx(
            {**oracle, "gallery": "language", "gallery_size": len(image_ids), "queries": len(texts)}
        )


def test_tensorboard_tracker_logs_the_loss(synthetic_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_recipe(
        synthetic_corpus,
        optim={"max_steps": 4},
        eval={"every_steps": 2},
        train={"log_with": "tensorboard", "log_every_steps": 1},
    )
    train(recipe_from_dict(raw), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "logs" / "tiny"))
    events.Reload()
    losses = events.Scalars("train/loss")
    logged = _lines(tmp_path / "run" / "train_log.jsonl")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [e.step for e in events.Scalars("val/de/sumr")] == [2, 4]


@pytest.mark.parametrize("corpus_kind", ["image", "video"])
def test_dataloader_workers_give_the_same_training(corpus_kind, synthetic_corpus, tmp_path):
    corpus = synthetic_corpus if corpus_kind == "image" else _video_corpus(tmp_path / "videos")
    raw = tiny_recipe(corpus, optim={"max_steps": 2}, eval={"every_steps": 2})
    if corpus_kind == "video":
        raw["data"]["target_langs"] = ["de"]
        raw["model"]["video"] = {"width": 32, "layers": 1, "heads": 4, "max_frames": 4}
    losses = []
    for workers in (0, 2):
        raw["data"]["num_workers"] = workers
        train(recipe_from_dict(raw), tmp_path / f"run{workers}")
        losses.append([r["loss"] for r in _lines(tmp_path / f"run{workers}" / "train_log.jsonl")])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
