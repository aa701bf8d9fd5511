"""`leccr translate` with tiny random MT models: on synthetic captions (1,014 distinct English captions with German
ones), and on the real Multi30K English val captions (an integration test, skipped without the text)."""

import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Caption, Corpus, ImageRow, translated_cap_id, write_corpus
from leccr_cli.errors import CorpusError, LeccrError, ModelError
from leccr_cli.prep.translate.engines import TranslationOptions, TranslationStats, make_engine
from leccr_cli.prep.translate.jobs import PARTIAL_FOLDER, translate_corpus
from leccr_cli.testing import raises_on_command_line

MAX_TOKENS = 16  # the random models rarely stop early: this bounds every generation
DUPLICATES = 25  # extra English captions that repeat another caption's text


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


VAL_SIZE = 1014  # captions of the val corpus (as many as Multi30K val has)


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    """(image ids, English captions, German captions): 1014 synthetic training images, each with a distinct English
    caption and its noisy German translation."""
    from leccr_cli.corpus.synthetic.image import build_synthetic

    corpus = Corpus.open(
        build_synthetic(tmp_path_factory.mktemp("synthetic") / "corpus", images=2000, seed=7, image_size=16).path
    )
    german = {c.source: c.text for c in corpus.captions("train") if c.lang == "de" and c.origin == "mt"}
    rows, texts, images = [], set(), set()
    for caption in corpus.captions("train", "en", origin="human"):
        if caption.text not in texts and caption.image_id not in images:
            texts.add(caption.text)
            images.add(caption.image_id)
            rows.append((caption.image_id, caption.text, german[caption.cap_id]))
    assert len(rows) >= VAL_SIZE
    image_ids, english, german_texts = (list(column) for column in zip(*rows[:VAL_SIZE]))
    return image_ids, english, german_texts


@pytest.fixture(scope="module")
def multi30k_val(multi30k_text):
    """(image ids, English captions, German captions) of Multi30K val, 1014 each."""

    def lines(lang):
        with gzip.open(multi30k_text / "task1" / "raw" / f"val.{lang}.gz", "rt", encoding="utf-8") as handle:
            return handle.read().split("\n")[:VAL_SIZE]

    names = (multi30k_text / "task1" / "image_splits" / "val.txt").read_text().split()
    return [Path(n).stem for n in names], lines("en"), lines("de")


def _write_val_corpus(out, val, count=VAL_SIZE, duplicates=0, descriptions=None):
    image_ids, english, german = (part[:count] for part in val)
    images = [ImageRow(i, "val", f"{i}.jpg") for i in image_ids] + [ImageRow("only-de", "test", "x.jpg")]
    captions = [Caption(f"{i}#en#0", i, "val", "en", "human", text) for i, text in zip(image_ids, english)]
    captions += [Caption(f"{i}#de#0", i, "val", "de", "human", text) for i, text in zip(image_ids, german)]
    # the same text under other images: translated once, written for each caption
    captions += [
        Caption(f"{image_ids[k]}#en#1", image_ids[k], "val", "en", "human", english[-1 - k]) for k in range(duplicates)
    ]
    captions.append(Caption("only-de#de#0", "only-de", "test", "de", "human", "Ein Hund."))
    return write_corpus(
        out,
        name="m30k-val",
        modality="image",
        media_root="/nowhere",
        images=images,
        captions=captions,
        descriptions=descriptions,
    )


@pytest.fixture(scope="module")
def val_corpus(val, tmp_path_factory):
    """All 1014 val images, English + German captions, plus DUPLICATES repeated English texts. Copy before writing."""
    return _write_val_corpus(tmp_path_factory.mktemp("val") / "corpus", val, duplicates=DUPLICATES).path


@pytest.fixture(scope="module")
def multi30k_corpus(multi30k_val, tmp_path_factory):
    """The val corpus of the real Multi30K captions. Copy before writing."""
    return _write_val_corpus(tmp_path_factory.mktemp("m30k") / "corpus", multi30k_val, duplicates=DUPLICATES).path


@pytest.fixture(scope="module")
def small_corpus(val, tmp_path_factory):
    """The first 40 val images with English and German captions and LLaVA-like descriptions. Copy before writing."""
    image_ids, english, _ = val
    descriptions = [
        {"image_id": i, "text": text + " It is a photo.", "model": "llava", "prompt": "Describe the image."}
        for i, text in zip(image_ids[:40], english[:40])
    ]
    descriptions[3]["text"] = "   "  # an empty description: skipped and reported
    out = tmp_path_factory.mktemp("small") / "corpus"
    return _write_val_corpus(out, val, count=40, descriptions={"llava": descriptions}).path


def _marian_template(folder: Path, texts: list[str]) -> str:
    """`<folder>/tiny-{src}-{tgt}`: one tiny Marian folder (vocabulary: `texts`), linked under several pairs' names."""
    from leccr_cli.testing import build_tiny_marian

    build_tiny_marian(folder / "tiny-en-de", texts=texts, init_std=0.3)
    for pair in ("en-fr", "de-en", "fr-en"):
        (folder / f"tiny-{pair}").symlink_to(folder / "tiny-en-de", target_is_directory=True)
    return str(folder / "tiny-{src}-{tgt}")


@pytest.fixture(scope="module")
def marian_template(val, tmp_path_factory):
    return _marian_template(tmp_path_factory.mktemp("marian"), val[1])


@pytest.fixture(scope="module")
def nllb_dir(val, tmp_path_factory):
    from leccr_cli.testing import build_tiny_nllb

    return build_tiny_nllb(tmp_path_factory.mktemp("nllb"), texts=val[1])


@pytest.fixture(scope="module")
def m2m100_dir(val, tmp_path_factory):
    from leccr_cli.testing import build_tiny_m2m100

    return build_tiny_m2m100(tmp_path_factory.mktemp("m2m100"), texts=val[1])


def _copy(corpus_path, tmp_path, name="corpus"):
    return Path(shutil.copytree(corpus_path, tmp_path / name, symlinks=True))


def _marian(template, **options):
    return make_engine("marian", template, TranslationOptions(max_tokens=MAX_TOKENS, **options))


def _translate(path, targets, engine, **kwargs):
    """translate_corpus on the val split, quietly."""
    kwargs.setdefault("splits", ["val"])
    return translate_corpus(path, targets, engine, **kwargs)


def _rows(path, lang, origin, split="val"):
    return [c for c in Corpus.open(path).captions() if c.split == split and c.lang == lang and c.origin == origin]


# ------------------------------------------------------------------------------- captions


def test_every_caption_gets_one_translation_per_target(val_corpus, marian_template, tmp_path):
    _check_one_translation_per_caption(val_corpus, marian_template, tmp_path, distinct_outputs=100)


def test_the_multi30k_val_captions_get_one_translation_per_target(
    multi30k_corpus, multi30k_val, tmp_path_factory, tmp_path
):
    template = _marian_template(tmp_path_factory.mktemp("m30k-marian"), multi30k_val[1])
    _check_one_translation_per_caption(multi30k_corpus, template, tmp_path, distinct_outputs=200)


def _check_one_translation_per_caption(val_corpus, marian_template, tmp_path, distinct_outputs: int):
    path = _copy(val_corpus, tmp_path)
    engine = _marian(marian_template)
    encoded: list[str] = []
    encode = engine.encode
    engine.encode = lambda texts, src, tgt: encoded.extend(texts) or encode(texts, src, tgt)
    reports = _translate(path, ["de", "fr"], engine, shard_size=400)

    english = _rows(path, "en", "human")
    assert len(english) == VAL_SIZE + DUPLICATES
    distinct = list(dict.fromkeys(c.text for c in english))
    # each distinct text went through the model once per target, duplicates included once
    assert sorted(encoded) == sorted(distinct * 2)
    for tgt, report in zip(("de", "fr"), reports):
        rows = _rows(path, tgt, "mt")
        # one row per English caption, in the English captions' stored order, mapped back by id
        assert [r.source for r in rows] == [c.cap_id for c in english]
        assert [r.cap_id for r in rows] == [translated_cap_id(c.cap_id, tgt) for c in english]
        assert all(r.image_id == c.image_id and r.text.strip() for r, c in zip(rows, english))
        assert {r.model for r in rows} == {f"marian:{marian_template.replace('{src}', 'en').replace('{tgt}', tgt)}"}
        assert (report.sources, report.written, report.translated, report.duplicates) == (
            VAL_SIZE + DUPLICATES,
            VAL_SIZE + DUPLICATES,
            len(distinct),
            DUPLICATES,
        )
        by_text = {}
        for caption, row in zip(english, rows):
            assert by_text.setdefault(caption.text, row.text) == row.text  # duplicates share one translation
    # the random model's output depends on its input, so the order checks above mean something
    assert len({r.text for r in _rows(path, "de", "mt")}) > distinct_outputs
    # German human captions are untouched; nothing partial is left behind
    assert _rows(path, "de", "human") == _rows(val_corpus, "de", "human")
    assert not (path / PARTIAL_FOLDER).exists()
    assert Corpus.open(path).languages == ["de", "en", "fr"]


def test_translations_match_one_by_one_translation(val, marian_template):
    """Length-sorted padded batches give each sentence the text it gets alone (padding is masked)."""
    texts = sorted(val[1], key=len)
    sample = texts[:25] + texts[-25:] + texts[400:450]  # short, long and middling captions mixed
    sample = sample[::2] + sample[1::2]
    sorted_engine = _marian(marian_template, batch_size=32)
    alone_engine = _marian(marian_template, batch_size=1, sort_by_length=False)
    batched = sorted_engine.translate(sample, "en", "de")
    assert batched == alone_engine.translate(sample, "en", "de")
    assert sorted_engine.encode(sample[:32], "en", "de")["attention_mask"].min() == 0  # the batches were padded


def test_empty_texts_stay_out_of_the_batches_and_long_ones_are_counted(val, marian_template):
    engine = _marian(marian_template)
    encoded: list[str] = []
    encode = engine.encode
    engine.encode = lambda texts, src, tgt: encoded.extend(texts) or encode(texts, src, tgt)
    long_text = " ".join(val[1][:6])  # more tokens than MAX_TOKENS
    texts = ["", val[1][6], "   ", long_text, val[1][6]]
    stats = TranslationStats()
    out = engine.translate(texts, "en", "de", stats=stats)
    assert out[0] == "" and out[2] == "" and out[1] == out[4] != ""
    assert sorted(encoded) == sorted([val[1][6], long_text])
    tokenizer = engine.load("en", "de")[1]
    room = MAX_TOKENS - tokenizer.num_special_tokens_to_add()
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) > room for t in (val[1][6], long_text))
    assert (stats.texts, stats.empty, stats.unique, stats.truncated) == (5, 2, 2, expected) and expected >= 1
    assert engine.encode([long_text], "en", "de")["input_ids"].shape[1] == MAX_TOKENS


def test_resume_after_interruption_equals_uninterrupted_run(val_corpus, marian_template, tmp_path):
    whole = _copy(val_corpus, tmp_path, "whole")
    _translate(whole, ["de"], _marian(marian_template), shard_size=300)

    broken = _copy(val_corpus, tmp_path, "broken")

    def interrupt(index):
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _translate(broken, ["de"], _marian(marian_template), shard_size=300, on_shard=interrupt)
    assert _rows(broken, "de", "mt") == []  # nothing that looks finished
    shards = sorted(p.name for p in (broken / PARTIAL_FOLDER).glob("*/*/shard-*"))
    assert shards == ["shard-00000", "shard-00001"]

    [report] = _translate(broken, ["de"], _marian(marian_template), shard_size=300)
    assert report.resumed == 600 and report.translated == VAL_SIZE - 600
    assert Corpus.open(broken).captions() == Corpus.open(whole).captions()
    assert not (broken / PARTIAL_FOLDER).exists()


def test_shards_made_with_other_settings_are_refused_unless_overwrite(small_corpus, marian_template, tmp_path):
    path = _copy(small_corpus, tmp_path)

    def interrupt(index):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _translate(path, ["de"], _marian(marian_template), shard_size=10, on_shard=interrupt)
    engine = make_engine("marian", marian_template, TranslationOptions(max_tokens=MAX_TOKENS - 4))
    with raises_on_command_line(
        LeccrError, r"unfinished work made with other settings \(max_tokens differ\).*--overwrite", "translate"
    ):
        _translate(path, ["de"], engine, shard_size=10)
    [report] = _translate(path, ["de"], engine, shard_size=10, overwrite=True)
    assert report.resumed == 0 and report.translated == 40


def test_rerun_translates_only_what_is_missing_and_overwrite_replaces(small_corpus, marian_template, tmp_path):
    path = _copy(small_corpus, tmp_path)
    _translate(path, ["de"], _marian(marian_template), back=True)
    first = _rows(path, "de", "mt")
    assert len(first) == 40 and len(_rows(path, "en", "back")) == 40

    corpus = Corpus.open(path)
    extra = [
        Caption(f"{c.image_id}#en#2", c.image_id, "val", "en", "human", "A dog runs on the beach.")
        for c in _rows(path, "en", "human")[:3]
    ]
    corpus.add_captions(extra)
    [report] = _translate(path, ["de"], _marian(marian_template))
    assert (report.already_done, report.translated, report.written, report.duplicates) == (40, 1, 3, 2)
    after = _rows(path, "de", "mt")
    assert after[:40] == first and len(after) == 43

    # --overwrite: the same rows, now written by another model; stale back-translations go with them
    engine = make_engine("nllb", str(tmp_path / "no-such-nllb"))
    with pytest.raises(ModelError, match="no-such-nllb"):
        _translate(path, ["de"], engine, overwrite=True)
    assert _rows(path, "de", "mt") == after  # a failed --overwrite run leaves the earlier rows
    other = make_engine("marian", marian_template, TranslationOptions(max_tokens=6))
    [report] = _translate(path, ["de"], other, overwrite=True)
    replaced = _rows(path, "de", "mt")
    assert report.removed == 43 + 40 and report.written == 43 and report.already_done == 0
    assert [r.cap_id for r in replaced] == [r.cap_id for r in after]
    assert all(len(r.text.split()) <= 6 for r in replaced) and any(len(r.text.split()) > 6 for r in after)
    assert _rows(path, "en", "back") == []


def test_back_translation_rows(small_corpus, marian_template, tmp_path):
    path = _copy(small_corpus, tmp_path)
    reports = _translate(path, ["de", "fr"], _marian(marian_template), back=True)
    assert [(r.kind, r.src, r.tgt) for r in reports] == [
        ("mt", "en", "de"),
        ("back", "de", "en"),
        ("mt", "en", "fr"),
        ("back", "fr", "en"),
    ]
    back = _rows(path, "en", "back")
    mt = {r.cap_id: r for r in _rows(path, "de", "mt") + _rows(path, "fr", "mt")}
    assert len(back) == 80 and {r.source for r in back} == set(mt)
    for row in back:
        image_id, tag, number = row.cap_id.rsplit("#", 2)
        assert tag in ("en2de2en", "en2fr2en") and row.source == f"{image_id}#{tag[:-3]}#{number}"
        assert row.model == "marian:" + marian_template.format(src=mt[row.source].lang, tgt="en")


@pytest.mark.parametrize(
    "engine_name, source_token, target_tokens",
    [
        ("nllb", "eng_Latn", {"de": "deu_Latn", "cs": "ces_Latn"}),
        ("m2m100", "__en__", {"de": "__de__", "cs": "__cs__"}),
    ],
)
def test_language_token_engines_force_the_target_code(engine_name, source_token, target_tokens, request, val):
    folder = request.getfixturevalue(f"{engine_name}_dir")
    engine = make_engine(engine_name, str(folder), TranslationOptions(max_tokens=MAX_TOKENS))
    for tgt, token in target_tokens.items():
        tokenizer = engine.load("en", tgt)[1]
        batch = engine.encode(val[1][:8], "en", tgt)
        assert (batch["input_ids"][:, 0] == tokenizer.convert_tokens_to_ids(source_token)).all()
        generated = engine.generate(batch, "en", tgt)
        assert (generated[:, 0] == engine.load("en", tgt)[0].config.decoder_start_token_id).all()
        assert (generated[:, 1] == tokenizer.convert_tokens_to_ids(token)).all()  # the forced first token
    assert engine.describe("en", "de") == f"{engine_name}:{folder}"


def test_nllb_engine_writes_captions(small_corpus, nllb_dir, tmp_path):
    path = _copy(small_corpus, tmp_path)
    engine = make_engine("nllb", str(nllb_dir), TranslationOptions(max_tokens=MAX_TOKENS))
    [report] = _translate(path, ["cs"], engine)
    rows = _rows(path, "cs", "mt")
    assert report.written == len(rows) == 40 - report.empty_outputs
    assert all(r.model == f"nllb:{nllb_dir}" and "ces_Latn" not in r.text for r in rows)


# ---------------------------------------------------------------------------- descriptions


def test_descriptions_are_translated_into_their_own_source(small_corpus, marian_template, tmp_path):
    path = _copy(small_corpus, tmp_path)
    [report] = _translate(path, ["de"], _marian(marian_template), descriptions="llava", splits=None)
    corpus = Corpus.open(path)
    assert corpus.description_sources() == ["llava", "llava-de"]
    rows = corpus.description_rows("llava-de")
    originals = corpus.description_rows("llava")
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in originals if r["text"].strip()]
    assert all(r["prompt"] == "Describe the image." and r["model"] == report.model and r["text"] for r in rows)
    assert (report.sources, report.empty_sources, report.written) == (40, 1, 39)
    assert _rows(path, "de", "mt") == []  # captions are left alone
    [again] = _translate(path, ["de"], _marian(marian_template), descriptions="llava", splits=None)
    assert again.translated == 0 and again.already_done == 39
    with raises_on_command_line(LeccrError, "--back applies to captions", "translate"):
        translate_corpus(path, ["de"], _marian(marian_template), descriptions="llava", back=True)
    with pytest.raises(CorpusError, match="no descriptions from 'blip'"):
        translate_corpus(path, ["de"], _marian(marian_template), descriptions="blip")


# ------------------------------------------------------------------------------ bad input


def test_bad_languages_are_refused_before_any_model_loads(small_corpus, marian_template, tmp_path):
    engine = make_engine("nllb", str(tmp_path / "never-loaded"))
    with raises_on_command_line(
        LeccrError, r"--engine nllb does not support language 'mt' \(supported: af, ar, .*zh\)", "translate"
    ):
        translate_corpus(small_corpus, ["de", "mt"], engine)
    with pytest.raises(LeccrError, match="unknown language code 'xx'"):
        translate_corpus(small_corpus, ["xx"], engine)
    with pytest.raises(LeccrError, match="target language 'en' is the source language"):
        translate_corpus(small_corpus, ["en"], engine)
    fixed = make_engine("marian", str(tmp_path / "one-model"))
    with pytest.raises(LeccrError, match=r"translate both en->de and en->fr.*template with \{src\} and \{tgt\}"):
        translate_corpus(small_corpus, ["de", "fr"], fixed)
    with raises_on_command_line(LeccrError, "needs --model", "translate"):
        make_engine("auto")
    with pytest.raises(LeccrError, match="unknown engine 'google'"):
        make_engine("google")


def test_wrong_models_are_named(small_corpus, marian_template, nllb_dir, m2m100_dir, tiny_bert_dir, tmp_path):
    cases = [
        ("auto", tiny_bert_dir, "is a bert model, not a sequence-to-sequence translation model"),
        ("marian", nllb_dir, "--engine marian: model .* is a m2m_100 model, expected marian"),
        ("nllb", marian_template.format(src="en", tgt="de"), "is a marian model, expected m2m_100 or nllb-moe"),
        ("nllb", m2m100_dir, "has no language token 'eng_Latn'"),
        ("auto", tmp_path / "missing", "translation model folder .*missing does not exist"),
    ]
    for engine_name, model, message in cases:
        with raises_on_command_line(ModelError, message, "translate"):
            make_engine(engine_name, str(model)).load("en", "de")


def test_corpus_without_english_in_the_split(small_corpus, marian_template):
    with pytest.raises(CorpusError, match=r"has no human 'en' captions in split 'test' \(this split has de/human"):
        translate_corpus(small_corpus, ["fr"], _marian(marian_template), splits=["test"])
    with pytest.raises(CorpusError, match="no split 'dev'"):
        translate_corpus(small_corpus, ["fr"], _marian(marian_template), splits=["dev"])


# ------------------------------------------------------------------------------------- CLI


def test_cli_translates_and_errors_are_one_line(small_corpus, marian_template, tmp_path, monkeypatch):
    monkeypatch.delenv("LECCR_DEBUG", raising=False)
    path = _copy(small_corpus, tmp_path)
    runner = CliRunner()
    args = ["translate", str(path), "--to", "de", "--split", "val", "--model", marian_template, "--max-tokens", "12"]
    assert "translate" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val en->de mt" in result.output and "sent/s" in result.output
    assert len(_rows(path, "de", "mt")) == 40
    for bad, message in (
        (["--to", "de,zz"], "unknown language code 'zz'"),
        (["--to", "de", "--split", "test"], "no human 'en' captions in split 'test'"),
        (["--to", "de", "--split", "val", "--overwrite", "--model", str(tmp_path / "none")], "model folder"),
    ):
        result = runner.invoke(app, ["translate", str(path), *bad])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


TWO_PROCESS_SCRIPT = (
    """
import json, os, sys
from leccr_cli.prep.translate.engines import TranslationOptions, make_engine
from leccr_cli.prep.translate.jobs import translate_corpus

corpus, template, out = sys.argv[1:]
engine = make_engine("marian", template, TranslationOptions(max_tokens=%d, batch_size=4))
seen = []
encode = engine.encode
engine.encode = lambda texts, src, tgt: seen.extend(texts) or encode(texts, src, tgt)
translate_corpus(corpus, ["de"], engine, splits=["val"], back=True)
with open(os.path.join(out, "rank%%s.json" %% os.environ["RANK"]), "w") as handle:
    json.dump({"processes": engine.state.num_processes, "texts": seen}, handle)
"""
    % MAX_TOKENS
)


@pytest.mark.slow
def test_two_processes_split_the_work_and_give_the_single_process_result(small_corpus, marian_template, tmp_path):
    """Two CPU processes (torchrun, gloo) each translate part of the batches; the merged corpus is the same."""
    single, double = _copy(small_corpus, tmp_path, "single"), _copy(small_corpus, tmp_path, "double")
    _translate(single, ["de"], _marian(marian_template, batch_size=4), back=True)
    script = tmp_path / "launch.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(double),
        marian_template,
        str(tmp_path),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Corpus.open(double).captions() == Corpus.open(single).captions()
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["processes"] for r in ranks] == [2, 2]
    first, second = (r["texts"] for r in ranks)
    everything = [c.text for c in _rows(single, "en", "human")] + [c.text for c in _rows(single, "de", "mt")]
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(set(everything))


# ------------------------------------------------------------------------------- failures

HELD_TRANSLATE = """
import sys, time
from pathlib import Path
from leccr_cli.prep.translate import engines as translation

gate = Path(sys.argv.pop(1))
real = translation.Seq2SeqEngine.translate

def translate(self, *args, **kwargs):
    print("translating", flush=True)
    deadline = time.time() + 120
    while not gate.exists() and time.time() < deadline:
        time.sleep(0.05)
    return real(self, *args, **kwargs)

translation.Seq2SeqEngine.translate = translate
sys.argv[0] = "leccr"
from leccr_cli.cli.main import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_translates_at_once_the_second_is_refused_and_nothing_is_lost(small_corpus, marian_template, tmp_path):
    """While `translate --to de` runs, `translate --to fr` on the same corpus stops with one line naming it;
    afterwards both sets of rows are there."""
    path = _copy(small_corpus, tmp_path)
    common = ["--split", "val", "--model", marian_template, "--max-tokens", str(MAX_TOKENS)]
    gate = tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", HELD_TRANSLATE, str(gate), "translate", str(path), "--to", "de", *common],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout.readline().strip() == "translating", first.stderr.read()
        result = CliRunner().invoke(app, ["translate", str(path), "--to", "fr", *common])
        assert result.exit_code == 2
        line = " ".join(result.output.split())
        assert line.startswith("error:") and f"is being written by `leccr translate {path} --to de --split val" in line
        assert f"(pid {first.pid} on" in line
    finally:
        gate.touch()
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    result = CliRunner().invoke(app, ["translate", str(path), "--to", "fr", *common])
    assert result.exit_code == 0, result.output
    assert len(_rows(path, "de", "mt")) == len(_rows(path, "fr", "mt")) == 40


def test_a_full_disk_keeps_the_finished_shards(small_corpus, marian_template, tmp_path, monkeypatch):
    import errno

    from leccr_cli.prep.shards import ShardStore

    path = _copy(small_corpus, tmp_path)
    real, calls = ShardStore.write, [0]

    def write(self, name, rows):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / f"shard-{name}"))
        return real(self, name, rows)

    monkeypatch.setattr(ShardStore, "write", write)
    with pytest.raises(LeccrError) as caught:
        _translate(path, ["de"], _marian(marian_template), shard_size=10)
    message = str(caught.value)
    assert message.startswith("disk full while writing") and "shard-00002 (" in message and "free there)" in message
    assert f"finished shards are kept in {path / PARTIAL_FOLDER}; rerun the same command to go on" in message
    assert len(list((path / PARTIAL_FOLDER).glob("*/*/shard-*"))) == 2
    monkeypatch.undo()
    whole = _copy(small_corpus, tmp_path, "whole")
    _translate(whole, ["de"], _marian(marian_template), shard_size=10)
    [report] = _translate(path, ["de"], _marian(marian_template), shard_size=10)
    assert report.resumed == 20 and Corpus.open(path).captions() == Corpus.open(whole).captions()


def test_max_tokens_beyond_the_position_limit_is_refused_up_front(small_corpus, marian_template, tmp_path):
    path = _copy(small_corpus, tmp_path)
    result = CliRunner().invoke(
        app,
        ["translate", str(path), "--to", "de", "--split", "val", "--model", marian_template, "--max-tokens", "1000"],
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--max-tokens 1000 is beyond the position limit of" in lines[0]
    assert "(128 tokens)" in lines[0] and "use --max-tokens 128 or less" in lines[0]
    assert not (path / PARTIAL_FOLDER).exists()


def test_ctrl_c_says_what_is_kept_and_the_command_that_continues(small_corpus, marian_template, tmp_path, monkeypatch):
    from leccr_cli.prep.shards import ShardStore

    path = _copy(small_corpus, tmp_path)
    real = ShardStore.write

    def write(self, name, rows):
        real(self, name, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardStore, "write", write)
    args = ["translate", str(path), "--to", "de", "--split", "val", "--model", marian_template, "--max-tokens", "12"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130
    said = " ".join(result.output.split())
    assert f"interrupted: finished shards are kept in {path / PARTIAL_FOLDER}" in said
    model = shlex.quote(marian_template)
    assert f"`leccr translate {path} --to de --model {model} --split val --max-tokens 12` translates the rest" in said
