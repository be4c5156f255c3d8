"""GPT Explorer: `python app.py` starts the page (this is also what Hugging Face Spaces runs).

    python app.py                                  # the bundled model, http://127.0.0.1:7860
    python app.py --model gpt2 --precision int8    # another catalogue model
    python app.py --add-model mine=/path/to/checkpoint --model mine
    python app.py --host 0.0.0.0                   # reachable from the classroom's network

The environment settings (every GPT_EXPLORER_* variable, and SPACES_ZERO_GPU) are read once, here,
by demo.core.settings.Settings, whose fields name each one; the flags below override some of them.
The README's "Settings" table lists them all.
"""

from __future__ import annotations

import argparse
import logging
import sys

from demo.app_factory import create_app
from demo.core.errors import ValidationError
from demo.core.settings import PRECISION_CHOICES, Settings
from demo.runtime import threads


def parse_args(argv=None, settings: Settings | None = None):
    settings = settings or Settings()
    p = argparse.ArgumentParser(description="GPT Explorer web app")
    p.add_argument("--model", default=settings.model, help="catalogue name to load first")
    p.add_argument("--precision", default=settings.precision, choices=PRECISION_CHOICES)
    p.add_argument("--add-model", action="append", default=[], metavar="NAME=SOURCE",
                   help="add a local folder or hub id to the catalogue (repeatable)")
    p.add_argument("--host", default=None, help="default 127.0.0.1 (GRADIO_SERVER_NAME on Spaces)")
    p.add_argument("--port", type=int, default=None, help="default 7860 (GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true",
                   help="also serve the page at a temporary public *.gradio.live address (needs internet)")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env()
    except ValidationError as exc:
        sys.exit(f"gpt-explorer: {exc}")
    args = parse_args(argv, settings)
    if not settings.zero_gpu:  # on ZeroGPU the app's process runs torch single-threaded (demo.runtime.zerogpu)
        logging.getLogger("gpt_explorer").info("torch uses %d CPU threads", threads.apply(settings.threads))
    demo, launch_kwargs = create_app(settings, model=args.model, precision=args.precision,
                                     extra_models=args.add_model)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share or None,
                prevent_thread_lock=True, **launch_kwargs)
    serve(demo)


def serve(demo) -> None:
    """Keep the main thread until the server stops (Ctrl-C). On ZeroGPU the main thread is where the
    spaces package emulates CUDA: it runs the model loads asked for after launch (demo.runtime.zerogpu)."""
    home = getattr(demo, "home", None)
    if home is None:
        demo.block_thread()  # until Ctrl-C, then closes the server
        return
    try:
        home.serve()
    except KeyboardInterrupt:
        print("Keyboard interruption in main thread... closing server.")
    finally:
        home.close()
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
