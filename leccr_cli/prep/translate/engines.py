"""Machine-translation engines: one interface, `translate(texts, src, tgt)`, over Marian, NLLB, M2M100 or any
seq2seq model.

Engines (`marian`, `nllb`, `m2m100`, `auto`) keep empty texts out of the batches, translate
each distinct text once, sort by token length into batches (and restore the order), run
`generate` under `inference_mode` in the chosen dtype, and split the batches between the
processes of an `accelerate launch`. The resumable corpus writer is `jobs.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import gather_object
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as transformers_logging

from leccr_cli.defaults import ENGINES, NUM_BEAMS, TRANSLATE_BATCH_SIZE, TRANSLATE_MAX_TOKENS
from leccr_cli.errors import InvalidArgument, LeccrError, ModelError, Param, parts
from leccr_cli.utils.devices import parse_dtype, process_state, resolve_dtype
from leccr_cli.utils.languages import check_language

MARIAN_MODEL_TEMPLATE = "Helsinki-NLP/opus-mt-{src}-{tgt}"

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

    batch_size: int = TRANSLATE_BATCH_SIZE
    max_tokens: int = TRANSLATE_MAX_TOKENS
    num_beams: int = NUM_BEAMS
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


# ------------------------------------------------------------------------------ engines


class Seq2SeqEngine:
    """Any `AutoModelForSeq2SeqLM` that translates one language pair (engine `auto`).

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
            raise InvalidArgument(
                "model",
                None,
                "a Hub id or a local folder",
                message=parts(Param("engine", self.name), " needs ", Param("model"), " (a Hub id or a local folder)"),
            )
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
                        parts(Param("engine", self.name), f" does not support language {code!r}"),
                        f"supported: {', '.join(sorted(supported))}",
                    )
            if src == tgt:
                raise LeccrError(
                    f"target language {tgt!r} is the source language",
                    parts("drop it from ", Param("targets"), " or change ", Param("source_lang")),
                )
        if self.one_model_per_pair:
            seen: dict[str, tuple[str, str]] = {}
            for pair in dict.fromkeys(pairs):
                model_id = self.model_id(*pair)
                if model_id in seen:
                    raise LeccrError(
                        parts(
                            Param("engine", self.name),
                            f": model {model_id!r} would translate both "
                            f"{'->'.join(seen[model_id])} and {'->'.join(pair)}, but it serves one language pair",
                        ),
                        parts(
                            "give ",
                            Param("model"),
                            " a template with {src} and {tgt}, e.g. Helsinki-NLP/opus-mt-{src}-{tgt}",
                        ),
                    )
                seen[model_id] = pair

    def check_position_limits(self, pairs: list[tuple[str, str]]) -> None:
        """Refuse a `max_tokens` beyond what a pair's model can encode or generate (its position limit)."""
        for model_id in dict.fromkeys(self.model_id(*pair) for pair in pairs):
            try:
                config = AutoConfig.from_pretrained(model_id)
            except (OSError, ValueError):
                continue  # load() names the problem when the model is needed
            limit = getattr(config, "max_position_embeddings", None)
            if isinstance(limit, int) and self.options.max_tokens > limit:
                raise InvalidArgument(
                    "max_tokens",
                    self.options.max_tokens,
                    f"at most {limit}",
                    parts("use ", Param("max_tokens", limit), " or less"),
                    message=parts(
                        Param("max_tokens", self.options.max_tokens),
                        f" is beyond the position limit of {model_id} ({limit} tokens)",
                    ),
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
                parts(
                    Param("engine", self.name),
                    f": model {model_id!r} is a {config.model_type} model, expected {' or '.join(self.model_types)}",
                ),
                parts("pick the matching ", Param("engine"), ", or ", Param("engine", "auto")),
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForSeq2SeqLM.from_pretrained(model_id, dtype=self.torch_dtype())
        except (OSError, ValueError, ImportError) as error:
            raise ModelError(f"cannot load translation model {model_id!r}: {_first_line(error)}", hint) from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.to(self.state.device).eval()
        model.generation_config.max_length = None  # max_tokens decides; both set only draws a warning
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
                parts(
                    Param("engine", self.name),
                    f": the tokenizer of {model_id!r} ({type(tokenizer).__name__}) has no src_lang",
                ),
                parts("is it an NLLB or M2M100 model? otherwise use ", Param("engine", "auto")),
            )
        for iso in (src, tgt):
            token = self.language_token(iso)
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ModelError(
                    parts(
                        Param("engine", self.name),
                        f": the tokenizer of {model_id!r} has no language token {token!r} ({iso})",
                    ),
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
