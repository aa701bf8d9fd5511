"""Crash safety: a replaced corpus part survives a kill at any instant; writer locks; stale temporaries."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Caption, Corpus, ImageRow, write_corpus
from leccr_cli.errors import LeccrError
from leccr_cli.errors import FolderBusy
from leccr_cli.utils.fs import LOCK_FILE, clean_stale, journal_path, recover, replace_directory, writer_lock
from leccr_cli.testing import writer_lock_holder

runner = CliRunner()
IMAGES = [ImageRow(f"i{n}", "train", f"i{n}.png") for n in range(4)]
OLD = [Caption(f"i{n}#en#0", f"i{n}", "train", "en", "human", f"a picture number {n}") for n in range(4)]
ADDED = [Caption(f"i{n}#en2de#0", f"i{n}", "train", "de", "mt", f"ein Bild {n}", f"i{n}#en#0", "m") for n in range(4)]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crash") / "corpus"
    write_corpus(out, name="tiny", modality="image", media_root=".", images=IMAGES, captions=OLD,
                 descriptions={"m": [{"image_id": "i0", "text": "old", "model": "m", "prompt": "p"}]})
    return out


def _hidden(folder: Path) -> list[str]:
    """Hidden entries anywhere in a corpus folder, but its lock file."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != LOCK_FILE)


class Killed(BaseException):
    """What the fault injector raises: like SIGKILL, nothing after it may touch the disk."""


class FaultInjector:
    """Let the first `allowed` filesystem changes happen, then fail every later one (cleanup included)."""

    CALLS = ("replace", "rename", "link", "unlink", "rmdir", "mkdir")

    def __init__(self, monkeypatch, allowed: int):
        self.allowed, self.done = allowed, 0
        for name in self.CALLS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))
        real_open = os.open

        def guarded_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                return self._wrap(real_open)(path, flags, *args, **kwargs)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", guarded_open)

    def _wrap(self, real):
        def call(*args, **kwargs):
            if self.done >= self.allowed:
                raise Killed
            self.done += 1
            return real(*args, **kwargs)

        return call


def test_a_kill_after_any_step_of_a_replacement_leaves_old_or_new_captions(base, tmp_path, monkeypatch):
    """Kill `add_captions` after each of its filesystem steps: the corpus reads the old or the new rows,
    never a mix or nothing; once the new rows are visible they stay; a writer then leaves nothing hidden."""
    seen, step = [], 0
    while True:
        step += 1
        folder = shutil.copytree(base, tmp_path / f"c{step}")
        corpus = Corpus.open(folder)
        with monkeypatch.context() as patch:
            FaultInjector(patch, allowed=step)
            try:
                corpus.add_captions(ADDED)
                finished = True
            except Killed:
                finished = False
        reopened = Corpus.open(folder)  # a reader finishes or ignores what the kill left
        rows = reopened.captions()
        assert rows in (OLD, OLD + ADDED), step
        seen.append(rows == OLD + ADDED)
        # corpus.json's language list changes with the captions, never apart from them
        assert reopened.languages == (["de", "en"] if seen[-1] else ["en"]), step
        with writer_lock(folder):  # what every writing command does first
            pass
        assert _hidden(folder) == [], (step, _hidden(folder))
        assert Corpus.open(folder).captions() == rows
        if finished:
            break
    assert seen == sorted(seen) and seen[-1] and not seen[0]  # old ... old, new ... new
    assert step > 8  # the sweep did cover the dataset write, the journal, both renames and the cleanup


def test_a_kill_after_any_step_of_a_whole_corpus_overwrite(base, tmp_path, monkeypatch):
    step = 0
    while True:
        step += 1
        folder = shutil.copytree(base, tmp_path / f"c{step}")
        with monkeypatch.context() as patch:
            FaultInjector(patch, allowed=step)
            try:
                write_corpus(folder, name="new", modality="image", media_root=".", images=IMAGES, captions=OLD + ADDED,
                             overwrite=True)
                finished = True
            except Killed:
                finished = False
        corpus = Corpus.open(folder)
        assert (corpus.name, corpus.captions()) in (("tiny", OLD), ("new", OLD + ADDED)), step
        with writer_lock(folder):
            pass
        leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
        assert _hidden(folder) == [] and leftovers == [], (step, _hidden(folder), leftovers)
        if finished:
            break


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from leccr_cli.corpus.corpus import Caption, Corpus
    corpus = Corpus.open(sys.argv[1])
    moves, real = [0], os.replace
    def replace(source, target):
        real(source, target)
        moves[0] += 1
        if moves[0] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    corpus.add_captions([Caption(f"i{n}#en2de#0", f"i{n}", "train", "de", "mt", f"ein Bild {n}", f"i{n}#en#0", "m")
                         for n in range(4)])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("renames", [2, 4])
def test_sigkill_between_the_renames_then_the_next_command_recovers(base, tmp_path, renames):
    """SIGKILL after the old captions moved aside, so that captions/ is missing (rename 2 after the journal's),
    and after the new captions moved in but before corpus.json did (rename 4): `leccr data info` then reads
    the new captions with the new language list; a writer leaves nothing hidden. (Every other instant is
    covered in-process by the sweeps above.)"""
    folder = shutil.copytree(base, tmp_path / "corpus")
    killed = subprocess.run([sys.executable, "-c", KILLER, str(folder), str(renames)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert journal_path(folder / "captions").exists()
    if renames == 2:
        assert not (folder / "captions").exists()  # the window the journal exists for
    info = runner.invoke(app, ["data", "info", str(folder)])  # the next command
    assert info.exit_code == 0, info.output
    assert not journal_path(folder / "captions").exists()
    assert Corpus.open(folder).captions() == OLD + ADDED
    assert Corpus.open(folder).languages == ["de", "en"]
    with writer_lock(folder):
        pass
    assert _hidden(folder) == []


@pytest.mark.slow
def test_replace_directory_moves_the_lock_file_along(tmp_path):
    target = tmp_path / "target"
    with writer_lock(target):
        (target / "a").write_text("old")
        new = tmp_path / ".target.partial-12345678"
        new.mkdir()
        (new / "a").write_text("new")
        replace_directory(new, target)
        assert (target / "a").read_text() == "new"
        # the held lock is the file now in the new folder: another process is still refused
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from leccr_cli.utils.fs import writer_lock\nwith writer_lock({str(target)!r}): pass",
            ],
            capture_output=True,
            text=True,
        )
        assert probe.returncode == 1 and "FolderBusy" in probe.stderr and "is being written by" in probe.stderr


def test_recover_rolls_a_dead_writers_replacement_forward(tmp_path):
    target = tmp_path / "part"
    new, old = tmp_path / ".part.partial-aaaaaaaa", tmp_path / ".part.old-bbbbbbbb"
    new.mkdir()
    (new / "x").write_text("new")
    old.mkdir()
    (old / "x").write_text("old")  # the old content moved aside; the writer died before moving the new one in
    journal_path(target).write_text(json.dumps({"moves": [{"target": "part", "new": new.name, "old": old.name}]}))
    recover(target)
    assert (target / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]


@pytest.mark.slow
def test_the_writer_lock_names_the_holder_and_cleans_stale_temporaries(tmp_path):
    folder = tmp_path / "corpus"
    holder = writer_lock_holder(folder, ["translate", "x", "--to", "de"])
    try:
        assert holder.stdout.readline().strip() == "locked"
        # what the holder is writing (or what it would leave if it were killed)
        (folder / "descriptions" / ".llava.partial-0123abcd").mkdir(parents=True)
        (folder / ".captions.old-89abcdef").mkdir()
        (folder / ".corpus.json.partial-00000000").write_text("{")
        (folder / ".translate-partial" / "job").mkdir(parents=True)  # resumable work: kept
        with pytest.raises(
            FolderBusy, match=rf"is being written by `leccr translate x --to de` \(pid {holder.pid} on .*started"
        ):
            with writer_lock(folder):
                pass
        # readers are not blocked, and nothing is cleaned while the writer lives
        assert (folder / "descriptions" / ".llava.partial-0123abcd").exists()
    finally:
        holder.kill()
        holder.wait()
    with writer_lock(folder):  # the holder is dead: its lock went with it
        with writer_lock(folder):  # re-entrant within one process
            pass
    assert _hidden(folder) == [".translate-partial"]


def test_clean_stale_keeps_a_live_journal_target(tmp_path):
    """A journaled replacement is finished, not deleted, by cleaning."""
    target = tmp_path / "captions"
    target.mkdir()
    (target / "x").write_text("old")
    new = tmp_path / ".captions.partial-cccccccc"
    new.mkdir()
    (new / "x").write_text("new")
    journal_path(target).write_text(
        json.dumps({"moves": [{"target": "captions", "new": new.name, "old": ".captions.old-dddddddd"}]})
    )
    clean_stale(tmp_path)
    assert (target / "x").read_text() == "new" and _hidden(tmp_path) == []


@pytest.mark.slow
def test_a_second_writer_of_a_corpus_is_refused_and_readers_go_on(base, tmp_path):
    folder = shutil.copytree(base, tmp_path / "corpus")
    holder = writer_lock_holder(folder, ["caption", str(folder)])
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "d.tsv").write_text("i0\tsomething\n")
        result = runner.invoke(
            app, ["data", "import-descriptions", str(folder), str(tmp_path / "d.tsv"), "--name", "x"]
        )
        assert result.exit_code == 2
        assert f"is being written by `leccr caption {folder}` (pid {holder.pid}" in " ".join(result.output.split())
        info = runner.invoke(app, ["data", "info", str(folder)])
        assert info.exit_code == 0, info.output
    finally:
        holder.kill()
        holder.wait()
    result = runner.invoke(app, ["data", "import-descriptions", str(folder), str(tmp_path / "d.tsv"), "--name", "x"])
    assert result.exit_code == 0, result.output


def test_a_failed_import_leaves_no_folder(tmp_path):
    with pytest.raises(LeccrError):
        write_corpus(
            tmp_path / "out",
            name="x",
            modality="image",
            media_root=".",
            images=IMAGES,
            captions=OLD,
            fill=lambda folder: (_ for _ in ()).throw(LeccrError("broken fill")),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_readers_wait_for_a_live_replacement(base, tmp_path):
    """A reader that finds the journal of a live writer waits for its renames instead of reading a gap."""
    import fcntl

    folder = shutil.copytree(base, tmp_path / "corpus")
    target = folder / "captions"
    new = shutil.copytree(target, folder / ".captions.partial-eeeeeeee")
    journal = journal_path(target)
    fd = os.open(journal, os.O_RDWR | os.O_CREAT)
    os.write(
        fd, json.dumps({"moves": [{"target": "captions", "new": new.name, "old": ".captions.old-ffffffff"}]}).encode()
    )
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(target, folder / ".captions.old-ffffffff")
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os\nfrom leccr_cli.utils.fs import recover\nprint('reading', flush=True)\n"
            f"recover({str(target)!r})\nprint(sorted(os.listdir({str(target)!r})))",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "reading"
    time.sleep(0.5)
    assert reader.poll() is None  # waiting on the live writer's journal
    os.replace(new, target)  # the writer finishes its renames
    journal.unlink()
    os.close(fd)
    assert reader.communicate(timeout=60)[0].strip() == str(sorted(os.listdir(target)))
    assert Corpus.open(folder).captions() == OLD
