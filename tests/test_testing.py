"""`leccr_cli.testing`: the tiny model folders load through the same from_pretrained path users take."""

import torch
from PIL import Image



def test_tiny_clip_vision(tiny_clip_dir):
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(tiny_clip_dir)
    out = model(pixel_values=torch.zeros(2, 3, 32, 32))
    assert out.last_hidden_state.shape == (2, 17, 32) and out.image_embeds.shape == (2, 24)


def test_tiny_bert_keeps_accents(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ids = tokenizer("Červený kruh vlevo")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "červený", "kruh", "vlevo", "[SEP]"]
    out = AutoModel.from_pretrained(tiny_bert_dir)(input_ids=torch.tensor([ids]))
    assert out.last_hidden_state.shape == (1, 5, 32)


def test_tiny_llava_generates(tiny_llava_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}],
        add_generation_prompt=True,
    )
    assert prompt == "USER: <image>\ndescribe this image ASSISTANT:"
    inputs = processor(images=[Image.new("RGB", (40, 30), "red")], text=[prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_tiny_marian_translates(tiny_marian_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_marian_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_marian_dir)
    batch = tokenizer(["a red circle on the left", "two men"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4)
    assert len(tokenizer.batch_decode(out, skip_special_tokens=True)) == 2
