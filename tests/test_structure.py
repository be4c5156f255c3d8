"""The code's structure: the layer packages import only downwards (ui > plots > analysis > runtime >
core) and form no cycle, one settings object reads the environment, the sampling settings are
defined once, the UI holds no model logic."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from demo.core.errors import ValidationError
from demo.core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def demo_imports(path: Path) -> set[str]:
    """Every demo module ``path`` imports, at module level or inside functions."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("demo")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(0, node.level - 1)):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            if not target.startswith("demo"):
                continue
            for alias in node.names:  # `from . import x` imports the module demo.x
                sub = f"{target}.{alias.name}"
                found.add(sub if (REPO / Path(*sub.split("."))).with_suffix(".py").exists() else target)
    return found - {here}


def test_demo_imports_form_no_cycle():
    graph = {module_name(p): demo_imports(p) for p in DEMO.rglob("*.py")}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert "demo.ui.page" in graph and graph["demo.ui.page"] >= {"demo.ui.tabs.generate", "demo.ui.tabs.attention"}


# The layers of demo/, bottom first: a module may import its own layer and the ones below, never one above.
LAYERS = ["core", "runtime", "analysis", "plots", "ui"]
# Outside the layers: the composition root (assembles every layer) and the deploy tool (imports none).
TOP = {"demo.app_factory": len(LAYERS), "demo.deploy": -1, "demo": -1}


def layer_of(module: str) -> int:
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    assert len(parts) >= 2 and parts[1] in LAYERS, f"{module} sits outside the layer packages {LAYERS}"
    return LAYERS.index(parts[1])


def test_every_module_sits_in_a_layer_and_imports_only_downwards():
    upward = []
    for path in DEMO.rglob("*.py"):
        here = module_name(path)
        upward += [f"{here} -> {target}" for target in demo_imports(path) if layer_of(target) > layer_of(here)]
    assert not upward, "imports that go up a layer: " + ", ".join(sorted(upward))


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a core module that imports the runtime is reported."""
    fake = tmp_path / "demo" / "core"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from demo.runtime.loading import LoadedModel\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = demo_imports(fake / "bad.py")
    assert found == {"demo.runtime.loading"}
    assert layer_of("demo.runtime.loading") > layer_of("demo.core.bad")


def test_settings_import_no_model_code():
    assert demo_imports(DEMO / "core" / "settings.py") <= {"demo.core.errors"}


def test_only_the_settings_module_reads_the_environment():
    # any use of os.environ but an assignment to one of its items (a setting passed on to a library)
    reads = re.compile(r"\bos\.environ\b(?!\[[^\]]+\]\s*=[^=])|\bgetenv\(|\benviron\.get\(")
    readers = [str(p.relative_to(REPO)) for p in [REPO / "app.py", *DEMO.rglob("*.py")]
               if reads.search(p.read_text(encoding="utf-8"))]
    assert readers == ["demo/core/settings.py"]


def test_only_the_ui_and_the_composition_root_know_gradio():
    for path in DEMO.rglob("*.py"):
        if path.name != "app_factory.py" and "ui" not in path.relative_to(DEMO).parts:
            assert not {m for m in ast_imports(path) if m.split(".")[0] == "gradio"}, path.name


def ast_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_the_ui_modules_do_not_run_the_model_themselves():
    for path in (DEMO / "ui").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import torch" not in text and "transformers" not in ast_imports(path), path.name


def test_sampling_settings_are_listed_in_one_place():
    """No module other than demo/core/sampling.py spells out the sampling settings' names one after another."""
    run = "temperature, top_k, top_p, min_p"
    for path in [REPO / "app.py", *DEMO.rglob("*.py"), *(REPO / "benchmarks").glob("*.py"), *REPO.glob("tests/*.py")]:
        text = path.read_text(encoding="utf-8").replace('"', "").replace("'", "").replace("=", "")
        if path.name not in ("sampling.py", "test_api.py", "test_structure.py"):
            assert run not in text, f"{path.relative_to(REPO)} lists the sampling settings by hand"


def test_settings_are_read_once_from_the_environment():
    env = {"GPT_EXPLORER_MODEL": "gpt2", "GPT_EXPLORER_PRECISION": "int8", "GPT_EXPLORER_MODELS": "a=/x; b=/y ;",
           "GPT_EXPLORER_CONCURRENCY": "3", "GPT_EXPLORER_QUEUE_SIZE": "10", "SPACES_ZERO_GPU": "true"}
    s = Settings.from_env(env)
    assert (s.model, s.precision, s.extra_models, s.concurrency, s.queue_size, s.zero_gpu) == (
        "gpt2", "int8", ("a=/x", "b=/y"), 3, 10, True)
    assert s.concurrency_for("cpu") == 3
    plain = Settings.from_env({})
    assert (plain.model, plain.precision, plain.extra_models, plain.queue_size, plain.zero_gpu) == (
        None, "auto", (), 128, False)
    assert (plain.session_limit, plain.address_limit, plain.forwarded_for, plain.analysis_cache_mb) == \
        (32, 64, False, 640)
    on_a_space = Settings.from_env({"SPACE_ID": "someone/gpt-explorer", "GPT_EXPLORER_SESSION_LIMIT": "4"})
    assert on_a_space.forwarded_for and on_a_space.session_limit == 4
    assert not Settings.from_env({"SPACE_ID": "someone/gpt-explorer", "GPT_EXPLORER_FORWARDED_FOR": "0"}).forwarded_for
    with pytest.raises(ValidationError, match="GPT_EXPLORER_FORWARDED_FOR must be 1 or 0"):
        Settings.from_env({"GPT_EXPLORER_FORWARDED_FOR": "maybe"})
    assert plain.concurrency_for("cpu") == 2 and plain.concurrency_for("cuda") == 4
    assert plain.replace(model=None, precision="fp32").precision == "fp32"


@pytest.mark.parametrize("env, message", [
    ({"GPT_EXPLORER_PRECISION": "fp8"}, "GPT_EXPLORER_PRECISION must be one of"),
    ({"GPT_EXPLORER_CONCURRENCY": "many"}, "GPT_EXPLORER_CONCURRENCY must be a whole number"),
    ({"GPT_EXPLORER_CONCURRENCY": "0"}, "GPT_EXPLORER_CONCURRENCY must be at least 1"),
    ({"GPT_EXPLORER_QUEUE_SIZE": "-5"}, "GPT_EXPLORER_QUEUE_SIZE must be at least 1"),
    ({"GPT_EXPLORER_QUEUE_SIZE": "0"}, "GPT_EXPLORER_QUEUE_SIZE must be at least 1"),
])
def test_bad_settings_get_a_clear_message(env, message):
    with pytest.raises(ValidationError, match=message):
        Settings.from_env(env)
