"""ISO 639-1 language codes accepted in corpora and recipes."""

from __future__ import annotations

from leccr_cli.errors import LeccrError

ISO_639_1 = frozenset(
    """
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu
    hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb
    lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om
    or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw
    ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
    """.split()
)


def check_language(code: str) -> str:
    """Return `code` if it is an ISO 639-1 code, else raise a `LeccrError` naming it."""
    if code not in ISO_639_1:
        import difflib

        close = difflib.get_close_matches(str(code).lower(), sorted(ISO_639_1), n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "use two-letter ISO 639-1 codes such as de, fr, cs, ja, zh"
        )
        raise LeccrError(f"unknown language code {code!r}", hint)
    return code


def parse_language_list(text: str) -> list[str]:
    """Parse 'de,fr,cs' into checked codes (no duplicates)."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise LeccrError(f"empty language list {text!r}", "give codes separated by commas, e.g. de,fr,cs")
    seen: list[str] = []
    for code in codes:
        check_language(code)
        if code not in seen:
            seen.append(code)
    return seen
