"""The Gradio app over a run (`leccr app`, the optional extra `pip install 'leccr[app]'`): tabs Search, Test
queries and Run wired to `RunApp` (`logic.py`), and serving it. Only `leccr app` imports this module.
"""

from __future__ import annotations

import socket

import gradio as gr

from leccr_cli.app.logic import RunApp
from leccr_cli.defaults import APP_HOST, TOP_K
from leccr_cli.errors import LeccrError, Param, parts
from leccr_cli.runs.layout import EVAL_DIR


def _error(error: LeccrError) -> gr.Error:
    return gr.Error(str(error))


def build_app(app: RunApp) -> gr.Blocks:
    """The Blocks app: tabs Search, Test queries and Run."""
    with gr.Blocks(title=f"leccr: {app.run_dir.name}", analytics_enabled=False) as blocks:
        gr.Markdown(f"## leccr: run `{app.run_dir}`")
        with gr.Tab("Search"):
            _search_tab(app)
        with gr.Tab("Test queries"):
            _test_tab(app)
        with gr.Tab("Run"):
            _run_tab(app)
    return blocks


def _search_tab(app: RunApp) -> None:
    if app.searcher is None:
        gr.Markdown(
            f"No index: start the app with `--index INDEX` (build one with `leccr index {app.run_dir} CORPUS --out "
            f"INDEX`)."
        )
        return
    info = app.searcher.index.info
    gr.Markdown(
        f"Index `{app.searcher.index.folder}`: {info.count} images of split `{info.split}` of `{info.corpus}`. Type a "
        f"query in any language."
    )
    with gr.Row():
        query = gr.Textbox(label="Query", placeholder="ein roter Kreis links", scale=4)
        k = gr.Slider(1, min(100, info.count), value=min(TOP_K, info.count), step=1, label="k", scale=1)
        fusion = gr.Slider(
            0.0,
            1.0,
            value=1.0,
            step=0.05,
            label="fusion α",
            info="1: the global score only",
            scale=1,
            visible=app.has_slots,
        )
    button = gr.Button("Search", variant="primary")
    note = gr.Markdown()
    gr.Markdown("Top hits: click one to see its semantic slots.")
    # no label on the gallery: Gradio draws it over the first images
    gallery = gr.Gallery(label="Top hits", show_label=False, columns=5, height="auto", object_fit="contain")
    details = gr.HTML()
    table = gr.Dataframe(label="Hits", wrap=True, column_widths=["7%", "8%", "12%", "73%"])
    hits_state = gr.State([])

    def run_search(text, top, alpha):
        try:
            hits = app.search(text, int(top), None if alpha >= 1.0 else float(alpha))
        except LeccrError as error:
            raise _error(error) from None
        return (
            app.gallery(hits),
            app.hit_table(hits),
            app.slot_view(hits[0] if hits else None),
            app.truncation_note(text),
            hits,
        )

    def select(hits, event: gr.SelectData):
        return app.slot_view(hits[event.index] if hits and event.index < len(hits) else None)

    outputs = [gallery, table, details, note, hits_state]
    button.click(run_search, [query, k, fusion], outputs, api_name="search")
    query.submit(run_search, [query, k, fusion], outputs, api_name=False)
    gallery.select(select, [hits_state], details, api_name=False)


def _test_tab(app: RunApp) -> None:
    try:
        langs = app.test_languages()
    except LeccrError as error:
        gr.Markdown(f"The run's corpus cannot be read: {error}")
        return
    if not langs:
        gr.Markdown(f"The run's test split `{app.test_split}` has no human captions.")
        return
    first = (
        app.recipe.data.target_langs[0]
        if app.recipe.data.target_langs and app.recipe.data.target_langs[0] in langs
        else langs[0]
    )

    def choices(lang):
        return [(f"{text}  [{owner}]", i) for i, (text, owner) in enumerate(app.test_captions(lang))]

    gr.Markdown(
        f"Human captions of the test split `{app.test_split}` of `{app.corpus.path}`, each ranked against its "
        f"language's "
        "test gallery, as `leccr evaluate` ranks it."
    )
    with gr.Row():
        lang = gr.Dropdown(langs, value=first, label="Language", scale=1)
        caption = gr.Dropdown(choices(first), value=0, label="Test caption", scale=4)
        k = gr.Slider(1, 50, value=TOP_K, step=1, label="k", scale=1)
    button = gr.Button("Rank the test gallery", variant="primary")
    verdict = gr.Markdown()
    gallery = gr.Gallery(
        label="Top hits (✔ the ground truth)", show_label=False, columns=6, height="auto", object_fit="contain"
    )

    def run_test(language, position, top):
        try:
            hits, owner, rank = app.test_query(language, int(position), int(top))
        except LeccrError as error:
            raise _error(error) from None
        items = app.gallery(hits, marked=owner)
        gallery_index = app.test_gallery(language).index
        total = len(gallery_index)
        if rank > len(hits):
            items.append((gallery_index.paths[gallery_index.image_ids.index(owner)], f"✔ #{rank}  {owner}"))
        found = "a hit at rank 1" if rank == 1 else f"rank {rank}"
        return (
            items,
            f"Ground truth **{owner}** (marked ✔): {found} of {total} (R@1 {'yes' if rank <= 1 else 'no'}, R@5 "
            f"{'yes' if rank <= 5 else 'no'}, R@10 {'yes' if rank <= 10 else 'no'})",
        )

    lang.change(lambda language: gr.Dropdown(choices=choices(language), value=0), lang, caption, api_name=False)
    button.click(run_test, [lang, caption, k], [gallery, verdict], api_name="test_query")


def _run_tab(app: RunApp) -> None:
    gr.Markdown(f"Evaluation files in `{app.run_dir / EVAL_DIR}`, validation and training logs of the run.")
    table = gr.Dataframe(app.eval_table(), label="Evaluation (R@K in %, SumR)")
    # one plot per row: the loss has up to nine terms, whose legend needs the width
    sumr = gr.LinePlot(
        app.validation_curve(), x="step", y="sumr", color="lang", title=f"Validation SumR ({app.recipe.data.val_split})"
    )
    losses = gr.LinePlot(app.loss_curves(), x="step", y="value", color="term", title="Training loss and its terms")
    refresh = gr.Button("Reload the run's logs")
    refresh.click(
        lambda: (app.eval_table(), app.validation_curve(), app.loss_curves()),
        None,
        [table, sumr, losses],
        api_name="run_logs",
    )


# ---------------------------------------------------------------------- serving


def check_port(host: str, port: int) -> None:
    """Refuse a port another program listens on, in one line."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise LeccrError(
                f"port {port} on {host} is already in use ({error.strerror})",
                parts("choose another with ", Param("port"), ", or leave ", Param("port"), " out to take a free one"),
            ) from None


def _offline_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts (the default fetches web fonts, which offline machines cannot)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def serve(app: RunApp, *, host: str = APP_HOST, port: int | None = None, share: bool = False, block: bool = True):
    """Start the app; returns (blocks, url). `block=False` returns at once with the server running in a thread."""
    if port is not None:
        check_port(host, port)
    blocks = build_app(app)
    try:
        _, url, _ = blocks.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=False,
            show_error=True, allowed_paths=app.media_roots(), theme=_offline_theme(),
        )  # fmt: skip
    except OSError as error:
        raise LeccrError(
            f"cannot serve on {host}:{port or 'a free port'} ({error})",
            parts("choose another ", Param("port"), " or ", Param("host")),
        ) from None
    return blocks, url
