"""`leccr caption`: batched, resumable descriptions with the tiny LLaVA (random weights, local folder)."""

import shutil
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from leccr_cli.prep.describe import (
    DEFAULT_IMAGE_PROMPT,
    DEFAULT_VIDEO_PROMPT,
    caption_corpus,
    open_describer,
    sample_frames,
    shard_folder,
)
from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Caption, Corpus, ImageRow, write_corpus
from leccr_cli.errors import CorpusError, LeccrError, ModelError
from leccr_cli.testing import raises_on_command_line

runner = CliRunner()
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def base_corpus(tmp_path_factory):
    """30 synthetic images (train 10, val 10, test 10); copy it before writing."""
    from leccr_cli.corpus.synthetic.image import build_synthetic

    out = tmp_path_factory.mktemp("caption") / "corpus"
    build_synthetic(out, images=30, seed=1, image_size=32)
    return out


@pytest.fixture
def corpus(base_corpus, tmp_path):
    return Corpus.open(shutil.copytree(base_corpus, tmp_path / "corpus"))


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return open_describer("llava", str(tiny_llava_dir), device="cpu", max_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def tiny_llava_next_dir(tmp_path_factory):
    from leccr_cli.testing import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny-llava-next"))


@pytest.fixture(scope="module")
def reference(base_corpus, llava, tmp_path_factory):
    """The train descriptions of an uninterrupted run at batch size 1."""
    corpus = Corpus.open(shutil.copytree(base_corpus, tmp_path_factory.mktemp("reference") / "corpus"))
    caption_corpus(corpus, llava, source="llava", splits=["train"], batch_size=1)
    return corpus.description_rows("llava")


class Watched:
    """Wraps a describer and counts its work; raises `error` on batch number `stop_at` (a Ctrl-C or a crash)."""

    def __init__(self, inner, stop_at=None, error=KeyboardInterrupt):
        self.inner, self.stop_at, self.error, self.calls, self.images = inner, stop_at, error, 0, 0
        self.model_id, self.multi_image, self.max_new_tokens = inner.model_id, inner.multi_image, inner.max_new_tokens

    def describe(self, images, prompt):
        self.calls += 1
        if self.calls == self.stop_at:
            raise self.error()
        self.images += len(images)
        return self.inner.describe(images, prompt)


def test_cli_describes_every_image_and_info_shows_coverage(corpus, reference, tiny_llava_dir):
    result = runner.invoke(
        app,
        ["caption", str(corpus.path), "--model", str(tiny_llava_dir), "--split", "train", "--batch-size", "4",
         "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "10 descriptions (10 new, 0 already there" in result.output
    rows = Corpus.open(corpus.path).description_rows("llava")
    assert [r["image_id"] for r in rows] == corpus.image_ids("train")
    assert {r["model"] for r in rows} == {str(tiny_llava_dir.resolve())}
    assert {r["prompt"] for r in rows} == {DEFAULT_IMAGE_PROMPT}
    assert sum(bool(r["text"]) for r in rows) >= 8  # random weights, but text is generated
    assert rows == reference  # batch 4 (CLI) gives the greedy text of batch 1
    assert not shard_folder(corpus, "llava").exists()
    assert sorted(p.name for p in (corpus.path / "descriptions").iterdir()) == ["llava", "synthetic"]

    info = runner.invoke(app, ["data", "info", str(corpus.path)])
    assert info.exit_code == 0, info.output
    llava_line = next(line for line in info.output.splitlines() if "llava" in line)
    assert llava_line.split("│")[2:5] == [" 10 / 10 ", "  0 / 10 ", "  0 / 10 "]


def test_batch_sizes_give_the_same_greedy_text(corpus, llava, reference):
    caption_corpus(corpus, llava, source="llava", splits=["train"], batch_size=4)
    assert corpus.description_rows("llava") == reference


def test_interrupted_run_resumes_to_the_same_dataset(corpus, llava, reference):
    interrupted = Watched(llava, stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        caption_corpus(corpus, interrupted, source="llava", splits=["train"], batch_size=2, shard_size=4)
    shards = shard_folder(corpus, "llava")
    assert not (corpus.path / "descriptions" / "llava").exists()  # nothing that looks finished
    assert "llava" not in corpus.description_sources()
    # one shard of 4 after batch 2, and the pending batch 3 flushed when the run stopped
    assert len(list(shards.glob("shard-*"))) == 2
    # a write killed half-way leaves a hidden temporary folder: it is ignored and removed
    (shards / ".shard-killed.partial-0000").mkdir()
    (shards / ".shard-killed.partial-0000" / "data-00000-of-00001.arrow").write_bytes(b"half")

    resumed = Watched(llava)
    report = caption_corpus(corpus, resumed, source="llava", splits=["train"], batch_size=3)
    assert (report.already, report.described, report.rows) == (6, 4, 10)
    assert resumed.images == 4
    assert corpus.description_rows("llava") == reference
    assert not shards.exists()


def test_cli_ctrl_c_then_the_same_command_finishes(corpus, reference, tiny_llava_dir, monkeypatch):
    from leccr_cli.prep.describe import HFDescriber

    describe, calls = HFDescriber.describe, []

    def ctrl_c_on_third_batch(self, images, prompt):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return describe(self, images, prompt)

    command = ["caption", str(corpus.path), "--model", str(tiny_llava_dir), "--split", "train", "--batch-size", "2",
               "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"]
    monkeypatch.setattr(HFDescriber, "describe", ctrl_c_on_third_batch)
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert "interrupted:" in result.output and "rerun the same command" in " ".join(result.output.split())
    monkeypatch.setattr(HFDescriber, "describe", describe)
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "10 descriptions (6 new, 4 already there" in result.output
    assert Corpus.open(corpus.path).description_rows("llava") == reference


def test_crash_then_rerun_and_limit(corpus, llava, reference):
    with pytest.raises(RuntimeError):
        caption_corpus(
            corpus, Watched(llava, stop_at=2, error=RuntimeError), source="llava", splits=["train"], batch_size=3,
            shard_size=1,
        )
    report = caption_corpus(corpus, llava, source="llava", splits=["train"], limit=2)
    assert (report.already, report.described, report.rows, report.missing) == (3, 2, 5, 5)
    assert [r["image_id"] for r in corpus.description_rows("llava")] == corpus.image_ids("train")[:5]
    report = caption_corpus(corpus, llava, source="llava", splits=["train"])
    assert (report.already, report.described, report.missing) == (5, 5, 0)
    assert corpus.description_rows("llava") == reference


def test_rerun_on_a_finished_dataset(corpus, llava, reference):
    caption_corpus(corpus, llava, source="llava", splits=["train"])
    counting = Watched(llava)
    report = caption_corpus(corpus, counting, source="llava", splits=["train"])
    assert (report.already, report.described, counting.calls) == (10, 0, 0)
    assert corpus.description_rows("llava") == reference

    # more splits: only the images it lacks are described; rows stay in gallery order
    report = caption_corpus(corpus, counting, source="llava")
    assert (report.already, report.described, counting.images) == (10, 20, 20)
    rows = corpus.description_rows("llava")
    assert [r["image_id"] for r in rows] == [row.image_id for row in corpus.images()]
    assert rows[:10] == reference

    # another prompt is refused unless --overwrite, which replaces the dataset with this run's rows
    with raises_on_command_line(LeccrError, r"descriptions/llava holds descriptions made with another "
        r"prompt.*--overwrite", 'caption'):
        caption_corpus(corpus, llava, source="llava", prompt="describe the shapes")
    report = caption_corpus(corpus, llava, source="llava", splits=["val"], prompt="describe the shapes", overwrite=True)
    rows = corpus.description_rows("llava")
    assert (report.described, len(rows)) == (10, 10)
    assert [r["image_id"] for r in rows] == corpus.image_ids("val")
    assert {r["prompt"] for r in rows} == {"describe the shapes"}


def test_unfinished_shards_of_other_settings_are_refused(corpus, llava):
    with pytest.raises(KeyboardInterrupt):
        caption_corpus(corpus, Watched(llava, stop_at=2), source="llava", splits=["train"], shard_size=1, batch_size=2)
    with pytest.raises(LeccrError, match=r"unfinished work made with other settings \(prompt differ\)"):
        caption_corpus(corpus, llava, source="llava", prompt="describe the shapes")
    report = caption_corpus(
        corpus, llava, source="llava", splits=["train"], prompt="describe the shapes", overwrite=True
    )
    assert (report.already, report.described) == (0, 10)


def test_unreadable_image_stops_or_is_skipped(corpus, llava, reference, monkeypatch):
    monkeypatch.delenv("LECCR_DEBUG", raising=False)
    bad_id = corpus.image_ids("train")[6]
    bad_path = corpus.image_paths("train")[bad_id]
    good = bad_path.read_bytes()
    bad_path.write_bytes(b"not a png")
    with raises_on_command_line(
        CorpusError, rf"image '{bad_id}' at {bad_path}: cannot read it.*--on-error skip", "caption"
    ):
        caption_corpus(corpus, llava, source="llava", splits=["train"], batch_size=2, shard_size=2)
    assert len(list(shard_folder(corpus, "llava").glob("shard-*"))) == 3  # batches before it are kept

    result = runner.invoke(
        app,
        [
            "caption",
            str(corpus.path),
            "--model",
            str(llava.model_id),
            "--split",
            "train",
            "--max-new-tokens",
            str(NEW_TOKENS),
            "--device",
            "cpu",
            "--on-error",
            "skip",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable image" in result.output and bad_id in result.output
    rows = Corpus.open(corpus.path).description_rows("llava")
    assert [r["image_id"] for r in rows] == [i for i in corpus.image_ids("train") if i != bad_id]

    bad_path.write_bytes(good)
    report = caption_corpus(corpus, llava, source="llava", splits=["train"])
    assert (report.already, report.described, report.failed) == (9, 1, [])
    assert corpus.description_rows("llava") == reference


def test_auto_backend_and_the_llava_prompt_without_a_chat_template(tiny_llava_dir, llava, base_corpus, tmp_path):
    pictures = [
        [Image.open(p).convert("RGB")] for p in list(Corpus.open(base_corpus).image_paths("train").values())[:3]
    ]
    auto = open_describer("auto", str(tiny_llava_dir), device="cpu", max_new_tokens=NEW_TOKENS)
    expected = llava.describe(pictures, DEFAULT_IMAGE_PROMPT)
    assert auto.describe(pictures, DEFAULT_IMAGE_PROMPT) == expected

    bare = shutil.copytree(tiny_llava_dir, tmp_path / "no-template")
    (bare / "chat_template.jinja").unlink()
    plain = open_describer("llava", str(bare), device="cpu", max_new_tokens=NEW_TOKENS)
    assert plain.format_prompt("describe this", 2) == "USER: <image>\n<image>\ndescribe this ASSISTANT:"
    assert plain.format_prompt("describe this", 2) == llava.format_prompt("describe this", 2)
    assert plain.describe(pictures, DEFAULT_IMAGE_PROMPT) == expected
    with pytest.raises(ModelError, match="no chat template"):
        open_describer("auto", str(bare), device="cpu")


def _photo_corpus(tmp_path) -> Corpus:
    """Six real photographs of different shapes and modes (scikit-image's sample data)."""
    skimage_data = pytest.importorskip("skimage.data")
    photos = {
        "astronaut": skimage_data.astronaut(),  # 512x512 RGB
        "camera": skimage_data.camera(),  # grayscale
        "coffee": skimage_data.coffee(),  # 400x600 RGB
        "chelsea": skimage_data.chelsea(),  # 300x451 RGB
        "rocket": skimage_data.rocket(),  # 427x640 RGB
        "logo": skimage_data.logo(),  # RGBA
    }
    media = tmp_path / "photos"
    media.mkdir()
    rows = []
    for name, array in photos.items():
        suffix = ".png" if name == "logo" else ".jpg"
        Image.fromarray(array).save(media / f"{name}{suffix}")
        rows.append(ImageRow(name, "test", f"{name}{suffix}"))
    captions = [Caption(f"{r.image_id}#en#0", r.image_id, "test", "en", "human", "a photo") for r in rows]
    return write_corpus(
        tmp_path / "c", name="photos", modality="image", media_root=str(media), images=rows, captions=captions
    )


# With a short prompt the random models' text depends on the photograph (the long default prompt
# drowns the image tokens), so these tests also check that each text lands on its own image.
SHORT_PROMPT = "describe"


def test_real_photographs(tmp_path, llava):
    corpus = _photo_corpus(tmp_path)
    report = caption_corpus(corpus, llava, source="one", prompt=SHORT_PROMPT, batch_size=1)
    assert (report.described, report.rows, report.failed) == (6, 6, [])
    caption_corpus(corpus, llava, source="four", prompt=SHORT_PROMPT, batch_size=4)
    one, four = corpus.description_rows("one"), corpus.description_rows("four")
    assert [r["image_id"] for r in four] == ["astronaut", "camera", "coffee", "chelsea", "rocket", "logo"]
    assert len({r["text"] for r in one}) >= 5
    assert [r["text"] for r in four] == [r["text"] for r in one]


def test_llava_next_pads_images_of_different_token_counts(tmp_path, tiny_llava_next_dir):
    corpus = _photo_corpus(tmp_path)
    describer = open_describer("llava-next", str(tiny_llava_next_dir), device="cpu", max_new_tokens=NEW_TOKENS)
    texts = [describer.format_prompt(SHORT_PROMPT, 1)] * 6
    pictures = [Image.open(p).convert("RGB") for p in corpus.image_paths("test").values()]
    lengths = describer.processor(images=pictures, text=texts, return_tensors="pt", padding=True)["attention_mask"].sum(
        1
    )
    assert len(set(lengths.tolist())) > 1  # square, tall and wide photographs: the batch needs padding
    caption_corpus(corpus, describer, source="one", prompt=SHORT_PROMPT, batch_size=1)
    caption_corpus(corpus, describer, source="four", prompt=SHORT_PROMPT, batch_size=4)
    one, four = corpus.description_rows("one"), corpus.description_rows("four")
    assert len({r["text"] for r in one}) >= 4
    assert [r["text"] for r in four] == [r["text"] for r in one]


# ------------------------------------------------------------------------------- video


FRAME_COUNTS = {"v1": 10, "v2": 3, "v3": 1, "v4": 6}


def _video_corpus(tmp_path) -> Corpus:
    """Four videos whose frames are flat grey images; frame k (1-based) has grey level 20 * k."""
    media = tmp_path / "frames"
    for video, count in FRAME_COUNTS.items():
        (media / video).mkdir(parents=True)
        for k in range(1, count + 1):
            Image.new("RGB", (40, 30), (20 * k,) * 3).save(media / video / f"frame_{k}.png")
    rows = [ImageRow(v, "test", v) for v in FRAME_COUNTS]
    captions = [Caption(f"{v}#en#0", v, "test", "en", "human", "a video") for v in FRAME_COUNTS]
    return write_corpus(
        tmp_path / "c", name="clips", modality="video", media_root=str(media), images=rows, captions=captions
    )


class FrameRecorder:
    """A describer that answers with the frame numbers it was shown."""

    model_id, max_new_tokens = "recorder", 1

    def __init__(self, multi_image):
        self.multi_image = multi_image

    def describe(self, images, prompt):
        return [" ".join(str(p.getpixel((0, 0))[0] // 20) for p in pictures) for pictures in images]


def test_frame_sampling():
    assert sample_frames(10, 4) == [1, 3, 6, 8]
    assert sample_frames(5, 1) == [2]
    assert sample_frames(3, 8) == [0, 1, 2]


def test_video_frames_in_one_prompt_or_the_middle_frame(tmp_path):
    corpus = _video_corpus(tmp_path)
    caption_corpus(corpus, FrameRecorder(multi_image=True), source="multi", frames=3)
    rows = corpus.description_rows("multi")
    # natural frame order (frame_10 after frame_9), three evenly spread frames, or all of a short video
    assert {r["image_id"]: r["text"] for r in rows} == {"v1": "2 6 9", "v2": "1 2 3", "v3": "1", "v4": "2 4 6"}
    assert {r["prompt"] for r in rows} == {DEFAULT_VIDEO_PROMPT}

    caption_corpus(corpus, FrameRecorder(multi_image=False), source="single", frames=3)
    rows = corpus.description_rows("single")
    assert {r["image_id"]: r["text"] for r in rows} == {"v1": "6", "v2": "2", "v3": "1", "v4": "4"}
    assert {r["prompt"] for r in rows} == {DEFAULT_IMAGE_PROMPT}


def test_videos_without_frame_images(tmp_path):
    corpus = _video_corpus(tmp_path)
    shutil.rmtree(corpus.media_root / "v2")
    for frame in (corpus.media_root / "v4").iterdir():
        frame.unlink()
    with pytest.raises(CorpusError, match=r"image 'v2' at \S+/v2: cannot read it \(not a folder of frame images"):
        caption_corpus(corpus, FrameRecorder(multi_image=True), source="multi")
    report = caption_corpus(corpus, FrameRecorder(multi_image=True), source="multi", on_error="skip")
    assert [(f.image_id, f.reason) for f in report.failed] == [
        ("v2", "not a folder of frame images (no such folder)"),
        ("v4", "the folder holds no frame images"),
    ]
    assert (report.rows, report.missing) == (2, 2)

    # when nothing at all can be read, no (empty) dataset is written
    shutil.rmtree(corpus.media_root / "v1")
    shutil.rmtree(corpus.media_root / "v3")
    report = caption_corpus(corpus, FrameRecorder(multi_image=True), source="none", on_error="skip")
    assert (len(report.failed), report.rows) == (4, 0)
    assert corpus.description_sources() == ["multi"]
    assert not shard_folder(corpus, "none").exists()


def test_video_batches_with_padding_give_the_same_text(tmp_path, llava):
    corpus = _video_corpus(tmp_path)
    caption_corpus(corpus, llava, source="one", frames=3, batch_size=1)
    caption_corpus(corpus, llava, source="four", frames=3, batch_size=4)
    one, four = corpus.description_rows("one"), corpus.description_rows("four")
    assert [r["text"] for r in one] == [r["text"] for r in four]
    assert {r["prompt"] for r in one} == {DEFAULT_VIDEO_PROMPT}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mllm", "gpt4v"], "--mllm 'gpt4v' is not a known backend (use one of llava, llava-next, auto)"),
        (["--mllm", "auto"], "--mllm auto needs --model"),
        (["--model", "{bert}"], "is a 'bert' model, not an image-text-to-text model"),
        (["--mllm", "llava-next"], "is a 'llava' model, which --mllm llava-next cannot load (use --mllm auto"),
        (["--model", "{missing}"], "cannot read a model config from this Hub id"),
        (["--prompt", "  "], "the prompt is empty"),
        (["--prompt-file", "{blank}"], "the prompt is empty"),
        (["--prompt", "USER: <image> describe"], "the prompt contains '<image>'"),
        (["--frames", "4"], "--frames applies to video corpora"),
        (["--split", "dev"], "has no split 'dev' (available: train, val, test)"),
        (["--on-error", "ignore"], "--on-error 'ignore' is not supported (use one of stop, skip)"),
        (["--dtype", "int8"], "--dtype 'int8' is not supported"),
        (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["--name", "../x"], "description source name '../x' is not a plain folder name"),
    ],
)
def test_bad_input_is_one_red_line(base_corpus, tiny_llava_dir, tiny_bert_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("LECCR_DEBUG", raising=False)
    blank = tmp_path / "prompt.txt"
    blank.write_text("\n  \n")
    values = {"{bert}": str(tiny_bert_dir), "{missing}": "nobody/no-such-model", "{blank}": str(blank)}
    args = [values.get(a, a) for a in args]
    if "--model" not in args and args[:2] != ["--mllm", "auto"]:
        args += ["--model", str(tiny_llava_dir)]
    result = runner.invoke(app, ["caption", str(base_corpus), "--device", "cpu", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in " ".join(result.output.split())
    assert not (base_corpus / "descriptions" / "llava").exists()


# --------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_give_the_single_process_dataset(corpus, tiny_llava_dir, reference):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "leccr_cli",
        "caption",
        str(corpus.path),
        "--model",
        str(tiny_llava_dir),
        "--split",
        "train",
        "--batch-size",
        "2",
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Wrote") == 1  # only the main process reports
    assert Corpus.open(corpus.path).description_rows("llava") == reference


# --------------------------------------------------------------------------- failures


class Recorder:
    """A describer that writes each image's id, with a settable max_new_tokens."""

    model_id, multi_image = "recorder", False

    def __init__(self, max_new_tokens=4):
        self.max_new_tokens = max_new_tokens

    def describe(self, images, prompt):
        return [f"{len(pictures)} picture" for pictures in images]


def test_a_rerun_with_another_max_new_tokens_is_refused(corpus):
    caption_corpus(corpus, Recorder(4), source="rec", splits=["train"])
    assert corpus.description_settings("rec") == {"frames": None, "max_new_tokens": 4}
    with raises_on_command_line(
        LeccrError, r"rec holds descriptions made with other settings \(--max-new-tokens 4\).*--overwrite", "caption"
    ):
        caption_corpus(corpus, Recorder(8), source="rec", splits=["val"])
    report = caption_corpus(corpus, Recorder(4), source="rec", splits=["val"])
    assert (report.already, report.described, report.rows) == (0, 10, 20)
    report = caption_corpus(corpus, Recorder(8), source="rec", splits=["val"], overwrite=True)
    assert report.rows == 10 and corpus.description_settings("rec")["max_new_tokens"] == 8


def test_a_full_disk_keeps_the_finished_batches(corpus, monkeypatch):
    import errno

    from leccr_cli.prep.shards import ShardStore

    real, calls = ShardStore.write, [0]

    def write(self, name, rows):
        calls[0] += 1
        if calls[0] >= 2:  # the disk is full from the second shard on
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / f"shard-{name}"))
        return real(self, name, rows)

    monkeypatch.setattr(ShardStore, "write", write)
    with pytest.raises(LeccrError) as caught:
        caption_corpus(corpus, Recorder(), source="rec", splits=["train"], shard_size=4, batch_size=4)
    message = str(caught.value)
    assert (
        message.startswith(f"disk full while writing {shard_folder(corpus, 'rec')}/shard-") and "free there)" in message
    )
    assert f"finished batches are kept in {shard_folder(corpus, 'rec')}; rerun the same command" in message
    assert len(list(shard_folder(corpus, "rec").glob("shard-*"))) == 1
    monkeypatch.undo()
    report = caption_corpus(corpus, Recorder(), source="rec", splits=["train"], shard_size=4)
    assert (report.already, report.described, report.rows) == (4, 6, 10)


def test_the_cli_says_when_nothing_was_written_and_why(corpus, tiny_llava_dir):
    command = [
        "caption",
        str(corpus.path),
        "--model",
        str(tiny_llava_dir),
        "--split",
        "test",
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--device",
        "cpu",
    ]
    assert runner.invoke(app, command).exit_code == 0
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        "Wrote" not in said
        and f"Nothing to do: {corpus.path / 'descriptions' / 'llava'} already describes all 10 images in test" in said
    )
    for row in corpus.images("val"):
        (corpus.media_root / row.path).write_bytes(b"not an image")
    result = runner.invoke(app, [*command[:5], "val", *command[6:], "--on-error", "skip", "--name", "broken"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Wrote nothing: none of the 10 images to describe could be read" in said and "0 descriptions" not in said
    result = runner.invoke(app, [*command, "--prompt-file", str(corpus.path)])
    assert result.exit_code == 2 and f"--prompt-file {corpus.path} is a folder" in " ".join(result.output.split())
