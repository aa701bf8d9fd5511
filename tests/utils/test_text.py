"""Caption cleaning as the reference cleans captions."""

from leccr_cli.utils.text import clean_caption


def test_caption_cleaning_keeps_cjk_punctuation_in_ascii_mode():
    assert clean_caption("一只狗，在草地上。", strip_punctuation="ascii") == "一只狗，在草地上。"
    assert clean_caption("一只狗，在草地上。") == "一只狗 在草地上"  # unicode, the default
    assert (
        clean_caption("A dog's ball (red)! salt & pepper/x-y", strip_punctuation="ascii")
        == "a dog s ball red salt & pepper x y"
    )
    assert clean_caption("A «B»", strip_punctuation="none") == "a «b»"
