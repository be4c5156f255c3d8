"""Shared fixtures: tiny GPT-2 checkpoints built on the fly (no network), and the bundled model; and
the test tiers, marked automatically (see TIERS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "models" / "gutenberg-gpt"


# Every test gets one tier marker, from what it needs, and that tier's time limit (pytest-timeout):
#   unit     no server: functions, the backend and analysis on real tiny and bundled models
#   app      a running app (in this process or its own) reached through its HTTP API
#   browser  the app in a real browser (Debian chromium + Playwright)
#   train    the training CLI end to end
#   scripts  the benchmark scripts, run as programs with their smallest arguments
# `pytest -m unit` is the quick inner loop; `slow` marks the few long tests of any tier.
TIERS = {"unit": 120, "app": 300, "browser": 300, "train": 600, "scripts": 300}
APP_FIXTURES = {"live_app", "client", "class_app", "small_app", "tiny_queue_app", "app_url", "endpoints"}


def tier_of(item) -> str:
    name = item.path.name
    if name.startswith("test_browser"):
        return "browser"
    if name == "test_train.py":
        return "train"
    if name == "test_benchmarks.py":
        return "scripts"
    return "app" if APP_FIXTURES & set(getattr(item, "fixturenames", ())) else "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = tier_of(item)
        item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIERS[tier]))


def make_tiny_checkpoint(path: Path, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, n_positions: int = 128,
                         seed: int = 0) -> Path:
    """A randomly initialised GPT-2 with the bundled tokenizer, saved as a normal HF folder."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(BUNDLED)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_path):
    from demo.runtime.catalog import ModelSpec

    return ModelSpec("tiny", str(tiny_path), "tiny test model")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_spec):
    from demo.runtime.loading import load_model

    return load_model(tiny_spec, "fp32", device="cpu")


@pytest.fixture(scope="session")
def tiny_loaded_int8(tiny_spec):
    from demo.runtime.loading import load_model

    return load_model(tiny_spec, "int8", device="cpu")


@pytest.fixture(scope="session")
def bundled_loaded():
    from demo.runtime.catalog import ModelSpec
    from demo.runtime.loading import load_model

    return load_model(ModelSpec("gutenberg-gpt", str(BUNDLED)), "fp32", device="cpu")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_app():
    """The real app on the bundled model, served on a free localhost port: (demo, url)."""
    from demo.app_factory import create_app

    demo, launch_kwargs = create_app(model="gutenberg-gpt", precision="fp32", device="cpu")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def client(live_app):
    from gradio_client import Client

    return Client(live_app[1], verbose=False)


# ----------------------------------------------------------------------------- real-browser tests


@pytest.fixture(scope="module")
def browser():
    """Debian chromium, headless (skips where it is missing)."""
    from browser_helpers import CHROMIUM, launch

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set GPT_EXPLORER_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_app):
    """A fresh tab on the app (its own context: no state shared between tests), console recorded."""
    from browser_helpers import VIEWPORT, open_app, wait_until

    from demo.runtime.generation import live_generation_threads

    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(90_000)  # a ceiling for conditions, generous for a busy machine
    pg.console = open_app(pg, live_app[1])
    yield pg
    context.close()
    assert wait_until(lambda: not live_generation_threads()), \
        "a generation thread outlived its browser tab"
