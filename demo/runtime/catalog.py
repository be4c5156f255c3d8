"""The model catalogue: which checkpoints the page may load (and nothing else)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from demo.core.validation import check_choice

REPO_ROOT = Path(__file__).resolve().parents[2]  # demo/runtime/catalog.py -> the repository
CATALOG_FILE = REPO_ROOT / "models" / "catalog.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # a local folder or a Hugging Face Hub id
    description: str = ""
    parameters: int | None = None  # for a Hub model, from the catalogue (what a load will take, before it)

    @property
    def local_path(self) -> Path | None:
        """The folder for a local checkpoint (relative paths from the repository root), else None."""
        p = Path(self.source).expanduser()
        if not p.is_absolute():
            p = REPO_ROOT / p
        looks_local = self.source.startswith((".", "/", "~")) or p.exists() or self.source.startswith("models/")
        return p if looks_local else None


def parse_extra(entries: list[str]) -> list[ModelSpec]:
    """'NAME=SOURCE' entries (GPT_EXPLORER_MODELS, --add-model) as specs; a bare SOURCE is named after it."""
    specs = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, source = entry.partition("=")
        if not sep:
            name, source = Path(entry).name or entry, entry
        specs.append(ModelSpec(name.strip(), source.strip(), "Added by the operator."))
    return specs


def load_catalog(path: Path = CATALOG_FILE, extra: list[str] | None = None) -> list[ModelSpec]:
    """The catalogue file's models, then the operator's ``extra`` entries ('NAME=SOURCE'; one with a
    catalogue name replaces that entry)."""
    data = json.loads(Path(path).read_text())
    specs = [ModelSpec(m["name"], m["source"], m.get("description", ""), m.get("parameters"))
             for m in data["models"]]
    added = parse_extra(list(extra or []))
    names = {s.name for s in specs}
    for s in added:
        if s.name in names:  # an operator entry replaces a catalogue entry of the same name
            specs = [x for x in specs if x.name != s.name]
        specs.append(s)
        names.add(s.name)
    return specs


def find_spec(catalog: list[ModelSpec], name) -> ModelSpec:
    """The catalogue entry called exactly ``name`` (ValidationError otherwise)."""
    name = check_choice("model", name, [s.name for s in catalog], exact=True)
    return next(s for s in catalog if s.name == name)
