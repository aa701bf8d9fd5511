"""Machine translation of captions and descriptions: MT engines and the resumable writer.

Engines (`marian`, `nllb`, `m2m100`, `auto`) share one interface, `translate(texts, src, tgt)`,
which keeps empty texts out of the batches, translates each distinct text once, sorts by
token length into batches (and restores the order), runs `generate` under `inference_mode`
in the chosen dtype, and splits the batches between the processes of an `accelerate launch`.

`translate_corpus` turns the human English captions of a corpus (or its MLLM descriptions)
into `origin: mt` captions (and `origin: back` back-translations). Work in progress lives in
`CORPUS/.translate-partial/<engine-model>/<job>/shard-NNNNN/` (shards of `leccr_cli.prep.shards`,
never mistaken for a finished artifact); a rerun after an interruption reuses the finished
shards and gives exactly the uninterrupted result. Shards left with other settings are
refused unless `--overwrite`.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import gather_object
from rich.progress import ProgressColumn
from rich.text import Text
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as transformers_logging

from leccr_cli.utils.console import is_main_process, progress
from leccr_cli.corpus.corpus import Caption, Corpus, translated_cap_id
from leccr_cli.prep.shards import ShardStore
from leccr_cli.utils.devices import dtype_name, parse_dtype, process_state, resolve_dtype
from leccr_cli.errors import CorpusError, LeccrError, ModelError
from leccr_cli.utils.fs import disk_full_reported
from leccr_cli.utils.languages import check_language

ENGINES = ("marian", "nllb", "m2m100", "auto")
MARIAN_MODEL_TEMPLATE = "Helsinki-NLP/opus-mt-{src}-{tgt}"
PARTIAL_FOLDER = ".translate-partial"
DEFAULT_SHARD_SIZE = 2048

# ISO 639-1 -> FLORES-200 code of NLLB-200.
NLLB_CODES = {
    "af": "afr_Latn", "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng", "ca": "cat_Latn",
    "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn", "de": "deu_Latn", "el": "ell_Grek",
    "en": "eng_Latn", "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab",
    "fi": "fin_Latn", "fr": "fra_Latn", "ga": "gle_Latn", "gl": "glg_Latn", "he": "heb_Hebr",
    "hi": "hin_Deva", "hr": "hrv_Latn", "hu": "hun_Latn", "id": "ind_Latn", "is": "isl_Latn",
    "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang", "lt": "lit_Latn", "lv": "lvs_Latn",
    "mk": "mkd_Cyrl", "ms": "zsm_Latn", "nb": "nob_Latn", "nl": "nld_Latn", "pl": "pol_Latn",
    "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "sk": "slk_Latn", "sl": "slv_Latn",
    "sr": "srp_Cyrl", "sv": "swe_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "th": "tha_Thai",
    "tr": "tur_Latn", "uk": "ukr_Cyrl", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans",
}  # fmt: skip

# ISO 639-1 codes among M2M100's 100 languages; the tokenizer's code is the ISO code and the
# forced target token is `__<code>__`.
M2M100_LANGUAGES = (
    "af am ar az ba be bg bn br bs ca cs cy da de el en es et fa ff fi fr fy ga gd gl gu ha he hi hr "
    "ht hu hy id ig is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms my ne nl no oc or "
    "pa pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur uz vi wo xh yi yo zh zu"
).split()


@dataclass
class TranslationOptions:
    """How an engine batches and decodes."""

    batch_size: int = 32
    max_tokens: int = 256  # source tokens kept per text (longer ones are truncated) and most tokens generated
    num_beams: int = 1
    dtype: str = "auto"  # auto, bf16, fp16, fp32 (long spellings accepted)
    sort_by_length: bool = True


@dataclass
class TranslationStats:
    """What `translate` saw: counts are per input text (duplicates included) unless named unique."""

    texts: int = 0
    empty: int = 0
    unique: int = 0
    truncated: int = 0
    seconds: float = 0.0

    def add(self, other: "TranslationStats") -> None:
        for name in ("texts", "empty", "unique", "truncated", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-96:] or "model"


# ------------------------------------------------------------------------------ engines


class Seq2SeqEngine:
    """Any `AutoModelForSeq2SeqLM` that translates one language pair (`--engine auto`).

    `model` is a Hub id or a folder; `{src}` and `{tgt}` in it are replaced by the pair's
    ISO codes, so one template can name a model per pair.
    """

    name = "auto"
    default_model: str | None = None
    model_types: tuple[str, ...] | None = None  # accepted `config.model_type`s (None: any seq2seq)
    one_model_per_pair = True

    def __init__(self, model: str | None = None, options: TranslationOptions | None = None):
        self.model_template = model or self.default_model
        if not self.model_template:
            raise LeccrError(f"--engine {self.name} needs --model (a Hub id or a local folder)")
        self.options = options or TranslationOptions()
        parse_dtype(self.options.dtype)
        self.state = process_state()
        self._loaded: tuple[str, object, object] | None = None

    # -- languages and models
    def supported_languages(self) -> list[str] | None:
        """ISO codes this engine can translate between (None: any ISO 639-1 code)."""
        return None

    def check_pairs(self, pairs: list[tuple[str, str]]) -> None:
        """Refuse unknown codes, a target equal to its source, and one fixed model for several pairs."""
        supported = self.supported_languages()
        for src, tgt in pairs:
            for code in (src, tgt):
                check_language(code)
                if supported is not None and code not in supported:
                    raise LeccrError(
                        f"--engine {self.name} does not support language {code!r}",
                        f"supported: {', '.join(sorted(supported))}",
                    )
            if src == tgt:
                raise LeccrError(
                    f"target language {tgt!r} is the source language", "drop it from --to or change --from"
                )
        if self.one_model_per_pair:
            seen: dict[str, tuple[str, str]] = {}
            for pair in dict.fromkeys(pairs):
                model_id = self.model_id(*pair)
                if model_id in seen:
                    raise LeccrError(
                        f"--engine {self.name}: model {model_id!r} would translate both "
                        f"{'->'.join(seen[model_id])} and {'->'.join(pair)}, but it serves one language pair",
                        "give --model a template with {src} and {tgt}, e.g. Helsinki-NLP/opus-mt-{src}-{tgt}",
                    )
                seen[model_id] = pair

    def check_position_limits(self, pairs: list[tuple[str, str]]) -> None:
        """Refuse a `--max-tokens` beyond what a pair's model can encode or generate (its position limit)."""
        for model_id in dict.fromkeys(self.model_id(*pair) for pair in pairs):
            try:
                config = AutoConfig.from_pretrained(model_id)
            except (OSError, ValueError):
                continue  # load() names the problem when the model is needed
            limit = getattr(config, "max_position_embeddings", None)
            if isinstance(limit, int) and self.options.max_tokens > limit:
                raise LeccrError(
                    f"--max-tokens {self.options.max_tokens} is beyond the position limit of {model_id} ({limit} tokens)",
                    f"use --max-tokens {limit} or less",
                )

    def model_id(self, src: str, tgt: str) -> str:
        """The Hub id or folder of the model for src -> tgt."""
        return self.model_template.replace("{src}", src).replace("{tgt}", tgt)

    def describe(self, src: str, tgt: str) -> str:
        """What the `model` column records: `<engine>:<model id>`."""
        return f"{self.name}:{self.model_id(src, tgt)}"

    def torch_dtype(self) -> torch.dtype:
        """The dtype the model runs in (`auto`: bf16 or fp16 on a GPU, fp32 on the CPU)."""
        return resolve_dtype(self.options.dtype, self.state.device)

    def load(self, src: str, tgt: str) -> tuple[object, object]:
        """(model, tokenizer) for src -> tgt, loaded once and kept until another model is needed."""
        model_id = self.model_id(src, tgt)
        if self._loaded is not None and self._loaded[0] == model_id:
            return self._loaded[1], self._loaded[2]
        self._loaded = None
        transformers_logging.disable_progress_bar()  # leccr shows its own progress
        hint = "give a local model folder, or a Hub id when the Hub is reachable"
        # Hub ids are `name` or `owner/name`; anything else names a folder
        looks_like_path = model_id.startswith(("/", ".")) or model_id.count("/") > 1
        if looks_like_path and not Path(model_id).is_dir():
            raise ModelError(f"translation model folder {model_id} does not exist", hint)
        try:
            config = AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot load translation model {model_id!r}: {_first_line(error)}", hint) from None
        if config.model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            raise ModelError(
                f"model {model_id!r} is a {config.model_type} model, not a sequence-to-sequence translation model",
                "use a Marian, NLLB, M2M100 or another AutoModelForSeq2SeqLM model",
            )
        if self.model_types is not None and config.model_type not in self.model_types:
            raise ModelError(
                f"--engine {self.name}: model {model_id!r} is a {config.model_type} model, "
                f"expected {' or '.join(self.model_types)}",
                "pick the matching --engine, or --engine auto",
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForSeq2SeqLM.from_pretrained(model_id, dtype=self.torch_dtype())
        except (OSError, ValueError, ImportError) as error:
            raise ModelError(f"cannot load translation model {model_id!r}: {_first_line(error)}", hint) from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.to(self.state.device).eval()
        model.generation_config.max_length = None  # --max-tokens decides; both set only draws a warning
        self._check_tokenizer(model_id, tokenizer, src, tgt)
        self._loaded = (model_id, model, tokenizer)
        return model, tokenizer

    def _check_tokenizer(self, model_id: str, tokenizer, src: str, tgt: str) -> None:
        """Engines with language tokens check that the tokenizer knows them."""

    def set_source_language(self, tokenizer, src: str) -> None:
        """Prepare the tokenizer for source texts in `src` (language-token engines set `src_lang`)."""

    def forced_bos_token_id(self, tokenizer, tgt: str) -> int | None:
        """The token generation must start with (the target language code), if any."""
        return None

    # -- translating
    def encode(self, texts: list[str], src: str, tgt: str):
        """Tokenize a batch: padded, masked, truncated at `max_tokens`, on the engine's device."""
        _, tokenizer = self.load(src, tgt)
        self.set_source_language(tokenizer, src)
        batch = tokenizer(
            list(texts), truncation=True, max_length=self.options.max_tokens, padding=True, return_tensors="pt"
        )
        return batch.to(self.state.device)

    def generate(self, batch, src: str, tgt: str):
        """Token ids generated for an encoded batch (greedy unless num_beams > 1)."""
        model, tokenizer = self.load(src, tgt)
        kwargs = {"max_new_tokens": self.options.max_tokens, "num_beams": self.options.num_beams, "do_sample": False}
        forced = self.forced_bos_token_id(tokenizer, tgt)
        if forced is not None:
            kwargs["forced_bos_token_id"] = forced
        with torch.inference_mode():
            return model.generate(**batch, **kwargs)

    def translate(
        self,
        texts: list[str],
        src: str,
        tgt: str,
        *,
        stats: TranslationStats | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Translate `texts` from `src` to `tgt`; empty or whitespace-only texts give "".

        Every process of a distributed launch must call this with the same texts; each
        translates its share of the batches and all of them get the whole result.
        `on_batch(n)` is called after each local batch of n distinct texts.
        """
        started = time.perf_counter()
        _, tokenizer = self.load(src, tgt)
        positions: dict[str, list[int]] = {}
        empty = 0
        for index, text in enumerate(texts):
            if text.strip():
                positions.setdefault(text, []).append(index)
            else:
                empty += 1
        unique = list(positions)
        self.set_source_language(tokenizer, src)
        lengths = [len(ids) for ids in tokenizer(unique, add_special_tokens=False)["input_ids"]] if unique else []
        room = self.options.max_tokens - tokenizer.num_special_tokens_to_add()
        truncated = sum(len(positions[text]) for text, length in zip(unique, lengths) if length > room)
        order = list(range(len(unique)))
        if self.options.sort_by_length:
            order.sort(key=lambda i: (-lengths[i], i))
        size = self.options.batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]

        done: list[tuple[int, str]] = []
        for batch_indices in self._my_share(batches):
            encoded = self.encode([unique[i] for i in batch_indices], src, tgt)
            decoded = tokenizer.batch_decode(self.generate(encoded, src, tgt), skip_special_tokens=True)
            done.extend((i, text.strip()) for i, text in zip(batch_indices, decoded))
            if on_batch is not None:
                on_batch(len(batch_indices))
        if self.state.num_processes > 1:
            done = gather_object(done)

        translations = [""] * len(texts)
        for unique_index, translation in done:
            for position in positions[unique[unique_index]]:
                translations[position] = translation
        if stats is not None:
            stats.add(TranslationStats(len(texts), empty, len(unique), truncated, time.perf_counter() - started))
        return translations

    def _my_share(self, batches: list[list[int]]) -> list[list[int]]:
        """This process's batches: process p gets batches p, p+n, p+2n ... (long and short alike)."""
        count = self.state.num_processes
        if count == 1:
            return batches
        interleaved = [batch for rank in range(count) for batch in batches[rank::count]]
        with self.state.split_between_processes(interleaved) as mine:
            return list(mine)


class MarianEngine(Seq2SeqEngine):
    """MarianMT, one model per pair (`Helsinki-NLP/opus-mt-{src}-{tgt}` by default)."""

    name = "marian"
    default_model = MARIAN_MODEL_TEMPLATE
    model_types = ("marian",)


class LanguageTokenEngine(Seq2SeqEngine):
    """Many-to-many models: the source language is set on the tokenizer, the target forced as first token."""

    one_model_per_pair = False
    model_types = ("m2m_100",)
    codes: dict[str, str] = {}  # ISO code -> the tokenizer's `src_lang` value
    token_format = "{code}"  # the vocabulary token of a language code

    def supported_languages(self) -> list[str]:
        return list(self.codes)

    def language_token(self, iso: str) -> str:
        return self.token_format.format(code=self.codes[iso])

    def _check_tokenizer(self, model_id: str, tokenizer, src: str, tgt: str) -> None:
        if not hasattr(tokenizer, "src_lang"):
            raise ModelError(
                f"--engine {self.name}: the tokenizer of {model_id!r} ({type(tokenizer).__name__}) has no src_lang",
                "is it an NLLB or M2M100 model? otherwise use --engine auto",
            )
        for iso in (src, tgt):
            token = self.language_token(iso)
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ModelError(
                    f"--engine {self.name}: the tokenizer of {model_id!r} has no language token {token!r} ({iso})",
                    "is it the right kind of model for this engine?",
                )

    def set_source_language(self, tokenizer, src: str) -> None:
        tokenizer.src_lang = self.codes[src]

    def forced_bos_token_id(self, tokenizer, tgt: str) -> int:
        return tokenizer.convert_tokens_to_ids(self.language_token(tgt))


class NllbEngine(LanguageTokenEngine):
    """NLLB-200 with FLORES-200 codes (`eng_Latn`, `deu_Latn`, ...)."""

    name = "nllb"
    default_model = "facebook/nllb-200-distilled-600M"
    model_types = ("m2m_100", "nllb-moe")
    codes = NLLB_CODES


class M2M100Engine(LanguageTokenEngine):
    """M2M100: the tokenizer takes ISO codes; the target token is `__<code>__`."""

    name = "m2m100"
    default_model = "facebook/m2m100_418M"
    codes = {code: code for code in M2M100_LANGUAGES}
    token_format = "__{code}__"


ENGINE_CLASSES = {"marian": MarianEngine, "nllb": NllbEngine, "m2m100": M2M100Engine, "auto": Seq2SeqEngine}


def make_engine(name: str, model: str | None = None, options: TranslationOptions | None = None) -> Seq2SeqEngine:
    """The engine called `name` (marian, nllb, m2m100, auto) with an optional model id, folder or template."""
    if name not in ENGINE_CLASSES:
        raise LeccrError(f"unknown engine {name!r}", f"use one of {', '.join(ENGINES)}")
    return ENGINE_CLASSES[name](model, options)


# --------------------------------------------------------------------- resumable jobs


@dataclass
class JobReport:
    """One translated set: a split and language pair of captions, or a description source."""

    kind: str  # "mt", "back" or "descriptions"
    split: str
    src: str
    tgt: str
    model: str  # what the rows record: <engine>:<model id>
    output: str  # "captions" or "descriptions/<name>"
    sources: int = 0  # source rows considered
    already_done: int = 0  # skipped: their translation was already there
    empty_sources: int = 0  # empty or whitespace-only sources, kept out of the batches
    duplicates: int = 0  # sources whose text another source has: translated once
    translated: int = 0  # distinct texts translated in this run
    resumed: int = 0  # distinct texts taken from the shards of an interrupted run
    truncated: int = 0  # distinct texts cut at max_tokens
    empty_outputs: int = 0  # translations that came out empty (not written)
    written: int = 0
    removed: int = 0  # earlier rows dropped (--overwrite, and back-translations of replaced captions)
    seconds: float = 0.0

    @property
    def sentences_per_second(self) -> float:
        return self.translated / self.seconds if self.seconds else 0.0


def _job_store(corpus: Corpus, engine: Seq2SeqEngine, name: str, src: str, tgt: str, shard_size: int) -> ShardStore:
    """The shard store of one job: finished (text, translation) shards and the settings they were made with."""
    settings = {
        "engine": engine.name,
        "model": engine.model_id(src, tgt),
        "src": src,
        "tgt": tgt,
        "max_tokens": engine.options.max_tokens,
        "num_beams": engine.options.num_beams,
        "dtype": dtype_name(engine.torch_dtype()),
        "shard_size": shard_size,
    }
    folder = corpus.path / PARTIAL_FOLDER / _slug(f"{engine.name}-{engine.model_id(src, tgt)}") / name
    return ShardStore(folder, settings, ("text", "translation"))


class SentencesPerSecond(ProgressColumn):
    """Sentences per second of a progress task."""

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} sent/s", style="progress.data.speed")


def _translate_resumable(
    engine: Seq2SeqEngine,
    job: ShardStore,
    label: str,
    texts: list[str],
    src: str,
    tgt: str,
    report: JobReport,
    overwrite: bool,
    on_shard: Callable[[int], None] | None,
    show_progress: bool,
) -> dict[str, str]:
    """text -> translation for every distinct non-empty text of `texts`, shard by shard.

    Shards already finished by an interrupted run with the same settings are reused (shards
    made with other settings are refused unless `overwrite` discards them); the rest is cut
    into shards in the same order an uninterrupted run would have used.
    """
    state = engine.state
    shard_size = job.settings["shard_size"]
    filled = [text for text in texts if text.strip()]
    unique = list(dict.fromkeys(filled))
    report.empty_sources = len(texts) - len(filled)
    report.duplicates = len(filled) - len(unique)
    job.check(overwrite)
    state.wait_for_everyone()
    if is_main_process():
        job.start()
    state.wait_for_everyone()
    done = {row["text"]: row["translation"] for row in job.rows()}
    report.resumed = sum(1 for text in unique if text in done)
    remaining = [text for text in unique if text not in done]
    first_shard = job.count()
    state.wait_for_everyone()

    stats = TranslationStats()
    if not remaining:
        return done
    engine.load(src, tgt)  # a model that cannot load fails before the progress bar starts
    with progress(SentencesPerSecond(), disable=not show_progress or not is_main_process()) as bar:
        task = bar.add_task(label, total=len(remaining))
        for number, start in enumerate(range(0, len(remaining), shard_size)):
            chunk = remaining[start : start + shard_size]
            end = start + len(chunk)

            def advance(count: int, end: int = end) -> None:
                # the other processes translate as much meanwhile; exact again after each shard
                completed = bar.tasks[0].completed + count * state.num_processes
                bar.update(task, completed=min(completed, end))

            translations = engine.translate(chunk, src, tgt, stats=stats, on_batch=advance)
            if is_main_process():
                rows = [{"text": text, "translation": translation} for text, translation in zip(chunk, translations)]
                job.write(f"{first_shard + number:05d}", rows)
            bar.update(task, completed=end)
            done.update(zip(chunk, translations))
            if on_shard is not None:
                on_shard(first_shard + number)
    report.translated, report.truncated, report.seconds = stats.unique, stats.truncated, stats.seconds
    return done


def _finish(engine: Seq2SeqEngine, corpus: Corpus, job: ShardStore) -> None:
    if is_main_process():
        job.remove(prune_up_to=corpus.path / PARTIAL_FOLDER)
    engine.state.wait_for_everyone()


def _caption_job(
    corpus_path: Path,
    engine: Seq2SeqEngine,
    split: str,
    src: str,
    tgt: str,
    origin: str,
    overwrite: bool,
    shard_size: int,
    on_shard: Callable[[int], None] | None,
    show_progress: bool,
) -> JobReport:
    """Translate the `src` captions of a split into `tgt` rows of `origin` (mt: from human, back: from mt)."""
    corpus = Corpus.open(corpus_path)
    captions = corpus.captions()
    source_origin = "human" if origin == "mt" else "mt"
    sources = [c for c in captions if c.split == split and c.lang == src and c.origin == source_origin]
    source_ids = {c.cap_id for c in sources}
    if origin == "mt":
        earlier = [c for c in captions if c.split == split and c.lang == tgt and c.origin == "mt"]
    else:
        earlier = [c for c in captions if c.split == split and c.origin == "back" and c.source in source_ids]
    new_id = {c.cap_id: translated_cap_id(c.cap_id, tgt) for c in sources}
    report = JobReport(origin, split, src, tgt, engine.describe(src, tgt), "captions", sources=len(sources))
    removed: set[str] = set()
    if overwrite:
        removed = {c.cap_id for c in earlier}
        if origin == "mt":  # back-translations of replaced captions no longer match them
            removed |= {c.cap_id for c in captions if c.origin == "back" and c.source in removed}
        todo = sources
    else:
        present = {c.cap_id for c in captions}
        todo = [c for c in sources if new_id[c.cap_id] not in present]
    report.already_done = len(sources) - len(todo)
    report.removed = len(removed)

    job = _job_store(corpus, engine, f"{split}-{src}2{tgt}-{origin}", src, tgt, shard_size)
    label = f"{split} {src}->{tgt}" + (" (back)" if origin == "back" else "")
    translations = _translate_resumable(
        engine, job, label, [c.text for c in todo], src, tgt, report, overwrite, on_shard, show_progress
    )
    rows = []
    for caption in todo:
        text = translations.get(caption.text, "")
        if not text:
            report.empty_outputs += bool(caption.text.strip())
            continue
        rows.append(
            Caption(new_id[caption.cap_id], caption.image_id, split, tgt, origin, text, caption.cap_id, report.model)
        )
    report.written = len(rows)
    if is_main_process() and (rows or removed):
        corpus.add_captions(rows, replace=True, remove=removed)
    _finish(engine, corpus, job)
    return report


def _description_job(
    corpus_path: Path,
    engine: Seq2SeqEngine,
    source: str,
    splits: list[str],
    src: str,
    tgt: str,
    overwrite: bool,
    shard_size: int,
    on_shard: Callable[[int], None] | None,
    show_progress: bool,
) -> JobReport:
    """Translate descriptions/<source>/ (images of `splits`) into descriptions/<source>-<tgt>/."""
    corpus = Corpus.open(corpus_path)
    rows = corpus.description_rows(source)
    wanted = {image_id for split in splits for image_id in corpus.image_ids(split)}
    sources = [row for row in rows if row["image_id"] in wanted]
    if not sources:
        raise CorpusError(
            f"corpus {corpus.path}: descriptions/{source} describes no image of split {', '.join(splits)}",
            f"write them with `leccr caption`, or choose --split among {', '.join(corpus.splits)}",
        )
    output = f"{source}-{tgt}"
    existing = corpus.description_rows(output) if output in corpus.description_sources() else []
    report = JobReport("descriptions", ",".join(splits), src, tgt, engine.describe(src, tgt), f"descriptions/{output}")
    report.sources = len(sources)
    if overwrite:
        replaced = {row["image_id"] for row in sources}
        kept = [row for row in existing if row["image_id"] not in replaced]
        todo = sources
    else:
        kept = existing
        have = {row["image_id"] for row in existing}
        todo = [row for row in sources if row["image_id"] not in have]
    report.already_done = len(sources) - len(todo)
    report.removed = len(existing) - len(kept)

    job = _job_store(corpus, engine, f"descriptions-{_slug(source)}-{src}2{tgt}", src, tgt, shard_size)
    translations = _translate_resumable(
        engine, job, f"{source} {src}->{tgt}", [row["text"] for row in todo], src, tgt, report, overwrite,
        on_shard, show_progress,
    )
    new_rows = []
    for row in todo:
        text = translations.get(row["text"], "")
        if not text:
            report.empty_outputs += bool(row["text"].strip())
            continue
        new_rows.append({"image_id": row["image_id"], "text": text, "model": report.model, "prompt": row["prompt"]})
    report.written = len(new_rows)
    if is_main_process() and (new_rows or report.removed):
        corpus.write_descriptions(output, kept + new_rows)
    _finish(engine, corpus, job)
    return report


def translate_corpus(
    corpus_path: str | Path,
    targets: list[str],
    engine: Seq2SeqEngine,
    *,
    source_lang: str = "en",
    splits: list[str] | None = None,
    back: bool = False,
    descriptions: str | None = None,
    overwrite: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_shard: Callable[[int], None] | None = None,
    show_progress: bool = True,
) -> list[JobReport]:
    """Translate a corpus's human `source_lang` captions (or its descriptions) into `targets`.

    Captions: for each split (default `train`) and target, one `origin: mt` row per human
    caption (cap id `translated_cap_id(source, tgt)`, `source` = the English cap id, `model` =
    `<engine>:<model>`); with `back`, the mt rows are translated back (`origin: back`).
    `descriptions`: translate descriptions/<name>/ of the images of `splits` (default all)
    into descriptions/<name>-<tgt>/. Without `overwrite` only what is missing is translated;
    with it, earlier translations of the same split, target and origin are replaced.
    `on_shard(index)` runs after each finished shard (tests use it to interrupt a run).
    """
    corpus = Corpus.open(corpus_path)
    if not targets:
        raise LeccrError("no target language given", "pass --to, e.g. --to de,fr,cs")
    if back and descriptions is not None:
        raise LeccrError("--back applies to captions, not to --descriptions", "drop --back")
    if shard_size < 1:
        raise LeccrError(f"shard size {shard_size} must be at least 1")
    pairs = [(source_lang, tgt) for tgt in targets] + ([(tgt, source_lang) for tgt in targets] if back else [])
    engine.check_pairs(pairs)
    engine.check_position_limits(pairs)
    if splits is None:
        splits = list(corpus.splits) if descriptions is not None else ["train"]
    for split in splits:
        corpus.check_split(split)
    common = {"shard_size": shard_size, "on_shard": on_shard, "show_progress": show_progress}
    on_full = f"finished shards are kept in {corpus.path / PARTIAL_FOLDER}; rerun the same command to go on"
    lock = corpus.writing() if is_main_process() else contextlib.nullcontext()
    with lock, disk_full_reported(corpus.path, on_full):
        return _translate_jobs(corpus, targets, engine, source_lang, splits, back, descriptions, overwrite, common)


def _translate_jobs(
    corpus: Corpus, targets, engine, source_lang, splits, back, descriptions, overwrite, common
) -> list[JobReport]:
    """The jobs of `translate_corpus`, under the corpus's writer lock."""
    reports: list[JobReport] = []
    if descriptions is not None:
        corpus.description_rows(descriptions)  # a missing source fails here, before any model loads
        for tgt in targets:
            reports.append(
                _description_job(corpus.path, engine, descriptions, splits, source_lang, tgt, overwrite, **common)
            )
        return reports

    captions = corpus.captions()
    for split in splits:
        if not any(c.split == split and c.lang == source_lang and c.origin == "human" for c in captions):
            present = sorted({f"{c.lang}/{c.origin}" for c in captions if c.split == split})
            raise CorpusError(
                f"corpus {corpus.path} has no human {source_lang!r} captions in split {split!r}",
                f"this split has {', '.join(present) or 'no captions'}; choose --split or --from",
            )
    for split in splits:
        for tgt in targets:
            reports.append(_caption_job(corpus.path, engine, split, source_lang, tgt, "mt", overwrite, **common))
            if back:
                reports.append(_caption_job(corpus.path, engine, split, tgt, source_lang, "back", overwrite, **common))
    return reports
