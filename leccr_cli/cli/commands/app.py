"""`leccr app`: a Gradio app to search with a trained run and look at how it went."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import Device, RunOverrides
from leccr_cli.defaults import APP_HOST, APP_PORT


def app_command(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (its model/ answers the queries)."),
    index: Path | None = typer.Option(
        None, "--index", metavar="INDEX", help="Index built by this run (`leccr index`), for the Search tab."
    ),
    host: str = typer.Option(
        APP_HOST, "--host", help="Address to listen on (0.0.0.0: every interface of this machine)."
    ),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help=f"Port (default: the first free one from {APP_PORT})."
    ),
    share: bool = typer.Option(False, "--share", help="Also make a public gradio.live link (off unless asked)."),
    device: Device = None,
    overrides: RunOverrides = [],
) -> None:
    """Serve a web app over a run: Search (an index, any language, with each hit's semantic slots), Test queries (test
    captions, ground truth marked, its rank) and Run (evaluation table, validation SumR and loss curves).

    Needs the optional extra: pip install 'leccr\\[app]'. Listens on 127.0.0.1 only unless --host says otherwise;
    never public unless --share. --set changes the run's recipe (its data and eval keys: the test split, eval.gallery,
    ...).
    """
    from leccr_cli.errors import LeccrError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LeccrError(
            "`leccr app` needs Gradio, which is an optional extra", "install it with: pip install 'leccr[app]'"
        ) from None
    from leccr_cli.app.logic import RunApp
    from leccr_cli.app.ui import check_port, serve
    from leccr_cli.cli.report import err_console

    if port is not None:
        check_port(host, port)  # before minutes of loading
    with err_console.status(f"Loading {run} ..."):
        app = RunApp(run, index, device=device, overrides=overrides)
    serve(app, host=host, port=port, share=share)
