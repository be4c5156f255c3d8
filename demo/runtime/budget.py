"""What a model costs the server's memory: an estimate before loading it, the measure after. No Gradio.

Before a load, the cost is estimated from the parameter count (a local checkpoint's safetensors
headers, or the catalogue's ``parameters`` for a Hub model) times the bytes a parameter takes in the
precision asked for. In 8 and 4 bits the embeddings and layer norms stay in 16 or 32 bits: GPT-2
small's weights take 231.7 MB in int8 on a CPU (1.9 bytes a parameter), hence 2 and 1.5 bytes a
parameter there. After a load, the cost is what the process grew by while loading (on a CPU,
bitsandbytes adds working memory beyond the weights), or the weights' footprint when that is more.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from demo.runtime.catalog import ModelSpec

BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 2.0, "nf4": 1.5}
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not read


def parameter_count(spec: ModelSpec) -> int | None:
    """Parameters of a catalogue model: the catalogue's figure, else counted from a local checkpoint's
    safetensors headers (without reading the weights); None when neither is known."""
    if spec.parameters:
        return int(spec.parameters)
    folder = spec.local_path
    if folder is None or not folder.is_dir():
        return None
    total = 0
    for shard in sorted(Path(folder).glob("*.safetensors")):
        try:
            with open(shard, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= MAX_HEADER_BYTES:
                    return None
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return None
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total or None


def estimate_bytes(spec: ModelSpec, precision: str) -> int | None:
    """What loading ``spec`` in ``precision`` will take, about; None when its size is unknown."""
    n = parameter_count(spec)
    return int(n * BYTES_PER_PARAMETER.get(precision, 4.0)) if n else None


def rss_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/statm), or None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
