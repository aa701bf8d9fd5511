"""Tiny random models and recipes for tests, benchmarks and offline checks (nothing downloaded).

Each builder writes a folder that loads with the same `from_pretrained` path users take
with Hub ids; `tiny_recipe` trains tiny from-scratch encoders on a corpus in seconds.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

# Words that cover the synthetic corpus, Multi30K-like English and the test prompts.
BASE_WORDS = (
    "a an the and of on in at to with is are image shows there shape shapes gray background plain "
    "one two three small large red green blue yellow purple orange circle square triangle star "
    "left right top bottom middle corner describe this detail objects colors positions man woman "
    "dog people street water playing sitting standing wearing shirt two men group young girl boy "
    "ein eine und links rechts oben unten kreis quadrat dreieck stern roter rotes un une et cercle "
    "carré étoile rouge gauche droite kruh čtverec hvězda červený vlevo vpravo a "
).split()


def _vocabulary(extra_texts: list[str] | None = None) -> list[str]:
    words = list(dict.fromkeys(BASE_WORDS))
    for text in extra_texts or []:
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            if word not in words:
                words.append(word)
    return words


def single_error_line(result) -> str:
    """The one `error:` line of a CLI result (a typer `Result`) that must have failed with exit code 2, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    return lines[0]


def command_line_error(error, command: str, **given) -> str:
    """`error` as `leccr COMMAND` words it: parameters as its flags, steps as `leccr` commands, and `given`
    (parameter name -> value) as what the user typed, e.g. `command_line_error(error, "train", recipe="r.yaml")`."""
    import typer.main

    from leccr_cli.cli.errors import error_line
    from leccr_cli.cli.main import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="leccr")
    for name in command.split():
        ctx = typer.Context(ctx.command.commands[name], parent=ctx, info_name=name)
    ctx.params = dict(given)
    return error_line(error, ctx)


@contextlib.contextmanager
def raises_on_command_line(kind, match: str, command: str, **given):
    """Like `pytest.raises(kind)`, and the error as `leccr COMMAND` words it (`command_line_error`) matches `match`."""
    import pytest

    with pytest.raises(kind) as caught:
        yield caught
    line = command_line_error(caught.value, command, **given)
    assert re.search(match, line), f"{match!r} does not match {line!r}"


def writer_lock_holder(folder: str | Path, command: list[str]):
    """A process that holds `folder`'s writer lock as `leccr COMMAND...` would, until killed.

    It prints "locked" once it holds the lock; read that line from its stdout before relying on it.
    """
    import subprocess
    import sys

    script = (
        f"import sys, time\nsys.argv = ['leccr', *{list(command)!r}]\n"
        f"from leccr_cli.utils.fs import writer_lock\nwith writer_lock({str(folder)!r}):\n"
        " print('locked', flush=True)\n time.sleep(60)"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def build_tiny_clip_vision(folder: Path, image_size: int = 32, patch_size: int = 8) -> Path:
    """A 2-layer CLIP vision tower with a visual projection (CLIPVisionModelWithProjection)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=24,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return Path(folder)


def build_tiny_bert(folder: Path, texts: list[str] | None = None) -> Path:
    """A 2-layer BERT with a word-level tokenizer over `texts` (plus a base vocabulary)."""
    import torch
    from transformers import BertConfig, BertModel

    from leccr_cli.model.tokenizer import build_word_tokenizer

    words = _vocabulary(texts)
    tokenizer = build_word_tokenizer([" ".join(words)], vocab_size=len(words) + 8)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def _generation_tokenizer(
    words: list[str], specials: list[str], bos: str | None, eos: str, pad: str, unk: str, append_eos: bool,
    padding_side: str = "right",
):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(list(dict.fromkeys(specials + words)))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer.add_special_tokens(specials)
    if append_eos:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    elif bos:
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    kwargs = {"bos_token": bos} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=eos, pad_token=pad, unk_token=unk, padding_side=padding_side, **kwargs
    )


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def _tiny_llava_parts(image_size: int, patch_size: int):
    """The word-level tokenizer (with `<image>`), the CLIP vision config and the 2-layer Llama config."""
    from transformers import CLIPVisionConfig, LlamaConfig

    words = _vocabulary() + ["user", ":", "assistant", "\n", ".", ","]
    tokenizer = _generation_tokenizer(
        words, ["<unk>", "<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
        append_eos=False,
        padding_side="left",
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, vision, text


def _save_random_model(model_class, config, tokenizer, folder: Path) -> None:
    """Initialise `model_class(config)` with seed 0, set its pad/eos tokens, save it to `folder`."""
    import torch

    torch.manual_seed(0)
    model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)


def build_tiny_llava(folder: Path, image_size: int = 32, patch_size: int = 8) -> Path:
    """A tiny LLaVA (CLIP vision + 2-layer Llama) with its processor and chat template."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer, vision, text = _tiny_llava_parts(image_size, patch_size)
    patches = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=patches, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    _save_random_model(LlavaForConditionalGeneration, config, tokenizer, folder)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return Path(folder)


def build_tiny_marian(
    folder: Path, texts: list[str] | None = None, extra_tokens: list[str] | None = None, init_std: float = 0.02
) -> Path:
    """A tiny Marian-like seq2seq model with a word-level tokenizer (appends </s>).

    A larger `init_std` (e.g. 0.3) makes the random model's output depend on its input.
    """
    import torch
    from transformers import MarianConfig, MarianMTModel

    words = _vocabulary(texts)
    tokenizer = _generation_tokenizer(
        words, ["<pad>", "</s>", "<unk>"] + list(extra_tokens or []), bos=None, eos="</s>", pad="<pad>", unk="<unk>",
        append_eos=True,
    )
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id, init_std=init_std,
    )
    torch.manual_seed(0)
    model = MarianMTModel(config)
    model.generation_config.max_length = 40
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def _tiny_m2m100_model(folder: Path, vocab_size: int, tokenizer, init_std: float) -> None:
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id, init_std=init_std,
    )
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(config)
    model.generation_config.max_length = 40
    model.save_pretrained(folder)


def build_tiny_nllb(
    folder: Path, texts: list[str] | None = None, codes: list[str] | None = None, init_std: float = 0.3
) -> Path:
    """A tiny NLLB stand-in: a 1-layer M2M100 model with a real `NllbTokenizer`.

    The tokenizer is a small BPE trained on `texts` (plus the base words) with the FLORES
    codes `codes` (default: every code leccr maps ISO codes to) as added special tokens, so
    `tokenizer.src_lang = "eng_Latn"` and the forced target token work as with NLLB-200.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    from leccr_cli.prep.translate.engines import NLLB_CODES

    codes = list(codes) if codes is not None else sorted(set(NLLB_CODES.values()))
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    bpe.train_from_iterator([" ".join(BASE_WORDS)] + list(texts or []), trainer)
    state = json.loads(bpe.to_str())["model"]
    tokenizer = NllbTokenizer(
        vocab=state["vocab"], merges=[tuple(m) for m in state["merges"]], extra_special_tokens=codes, src_lang=codes[0]
    )
    _tiny_m2m100_model(folder, len(tokenizer), tokenizer, init_std)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def build_tiny_m2m100(folder: Path, texts: list[str] | None = None, init_std: float = 0.3) -> Path:
    """A tiny M2M100: a 1-layer model with a real `M2M100Tokenizer` over a small SentencePiece model."""
    import io
    import json
    import tempfile

    import sentencepiece
    from transformers import M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    model_file = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(BASE_WORDS)] + list(texts or [])), model_writer=model_file,
        vocab_size=400, model_type="bpe", character_coverage=1.0, minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as scratch:
        spm_file = Path(scratch) / "sentencepiece.bpe.model"
        spm_file.write_bytes(model_file.getvalue())
        processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        vocab = {token: i for i, token in enumerate(dict.fromkeys(["<s>", "<pad>", "</s>", "<unk>"] + pieces))}
        vocab_file = Path(scratch) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        # like the released checkpoints, list the language tokens as special (decoding skips them)
        codes = FAIRSEQ_LANGUAGE_CODES["m2m100"]
        tokenizer = M2M100Tokenizer(
            str(vocab_file), str(spm_file), src_lang="en", additional_special_tokens=[f"__{c}__" for c in codes]
        )
        tokenizer.save_pretrained(folder)
    # language tokens and the "madeup words" follow the SentencePiece vocabulary, as in M2M100
    vocab_size = tokenizer.encoder_size + len(tokenizer.lang_token_to_id) + tokenizer.num_madeup_words
    _tiny_m2m100_model(folder, vocab_size, tokenizer, init_std)
    return Path(folder)


def build_tiny_llava_next(folder: Path, image_size: int = 32, patch_size: int = 8) -> Path:
    """A tiny LLaVA-NeXT (any-resolution tiles, so the image token count depends on the image shape)."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer, vision, text = _tiny_llava_parts(image_size, patch_size)
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    _save_random_model(LlavaNextForConditionalGeneration, config, tokenizer, folder)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(folder)
    return Path(folder)


def tiny_recipe(corpus: str | Path, **blocks) -> dict:
    """A raw recipe for tiny from-scratch encoders on `corpus` (no dropout, so runs are comparable).

    Keyword arguments update whole blocks, e.g. optim={"max_steps": 4}.
    """
    recipe = {
        "name": "tiny",
        "seed": 0,
        "data": {
            "corpus": str(corpus),
            "target_langs": ["de", "fr", "cs"],
            "descriptions": "synthetic",
            "train_transform": "resize_center_crop",
        },
        "model": {
            "vision": {
                "name_or_path": None,
                "image_size": 32,
                "projection_dim": 32,
                "config": {
                    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                    "patch_size": 8,
                },
            },
            "text": {
                "name_or_path": None,
                "max_tokens": 24,
                "description_max_tokens": 48,
                "pooling": "mean",
                "tokenizer": {"vocab_size": 500},
                "config": {
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "max_position_embeddings": 64,
                    "hidden_dropout_prob": 0.0,
                    "attention_probs_dropout_prob": 0.0,
                },
            },
            "joint_dim": 32,
            "num_slots": 2,
            "slot_layers": 1,
            "interaction_layers": 1,
            "heads": 4,
        },
        "optim": {"lr": 2e-3, "new_layer_lr_scale": 1.0, "warmup_ratio": 0.0, "max_steps": 6, "batch_size": 16},
        "eval": {"every_steps": 3, "batch_size": 64},
        "train": {"log_every_steps": 1, "keep_checkpoints": 2},
    }
    for block, values in blocks.items():
        if isinstance(values, dict) and isinstance(recipe.get(block), dict):
            recipe[block] = {**recipe[block], **values}
        else:
            recipe[block] = values
    return recipe
