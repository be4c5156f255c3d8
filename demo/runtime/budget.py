"""What a model costs the server's memory: an estimate before loading it, the measure after. No Gradio.

Before a load, the cost is estimated from the parameter count (a local checkpoint's safetensors
headers, or the catalogue's ``parameters`` for a Hub model) times the bytes a parameter takes in the
precision asked for. In 8 and 4 bits the embeddings and layer norms stay in 16 or 32 bits: GPT-2
small's weights take 231.7 MB in int8 (1.9 bytes a parameter), hence 2 and 1.5 bytes a parameter on
a GPU. On a CPU, an 8- or 4-bit load costs the process far more than its weights (bitsandbytes' CPU
code, and working memory the load keeps): measured under the app's heap policy
(:mod:`demo.runtime.memory`), the process grew by 487 MB for an int8 load of a GPT-2-small-size
model (92.1 M parameters), 458 MB in nf4 (359 MB in fp32), and by 99 MB for the bundled model's
int8 load (5.4 M parameters). So on a CPU those precisions count 5 bytes a parameter and 80 MB
more. After a load, the cost is what the process grew by while loading, or the weights' footprint
when that is more.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from demo.runtime.catalog import ModelSpec

BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 2.0, "nf4": 1.5}
CPU_QUANTIZED = ("int8", "nf4")  # precisions whose load on a CPU costs more than their weights
CPU_QUANTIZED_BYTES_PER_PARAMETER = 5.0
CPU_QUANTIZED_FIXED_BYTES = 80 * 2**20
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header larger than this is not read


def parameter_count(spec: ModelSpec) -> int | None:
    """Parameters of a catalogue model: the catalogue's figure, else counted from its safetensors headers
    (a local checkpoint's, or the Hub's: without reading the weights); None when none is known."""
    if spec.parameters:
        return int(spec.parameters)
    folder = spec.local_path
    if folder is None:
        return hub_parameter_count(spec.source)
    if not folder.is_dir():
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


HUB_ANSWER_KEPT_S = 600  # a Hub model's size (or that it is unknown) is asked again after this
_hub_counts: dict[str, tuple[float, int | None]] = {}


def hub_parameter_count(repo_id: str) -> int | None:
    """A Hub model's parameters, from the headers of its safetensors files (a few kB read, not the
    weights); None offline, without a network, or for a model without safetensors. Each answer is
    kept for HUB_ANSWER_KEPT_S."""
    kept = _hub_counts.get(repo_id)
    if kept is not None and time.monotonic() - kept[0] < HUB_ANSWER_KEPT_S:
        return kept[1]
    try:
        from huggingface_hub import get_safetensors_metadata

        counts = get_safetensors_metadata(repo_id, timeout=10).parameter_count
        count = sum(counts.values()) or None
    except Exception:  # offline, no network, no such model, no safetensors: the size is unknown
        count = None
    if len(_hub_counts) >= 256:
        _hub_counts.clear()
    _hub_counts[repo_id] = (time.monotonic(), count)
    return count


def estimate_bytes(spec: ModelSpec, precision: str, device: str = "cpu") -> int | None:
    """What loading ``spec`` in ``precision`` on ``device`` will take, about; None when its size is unknown."""
    n = parameter_count(spec)
    if not n:
        return None
    if device == "cpu" and precision in CPU_QUANTIZED:
        return int(n * CPU_QUANTIZED_BYTES_PER_PARAMETER + CPU_QUANTIZED_FIXED_BYTES)
    return int(n * BYTES_PER_PARAMETER.get(precision, 4.0))


def rss_bytes() -> int | None:
    """This process's resident memory (Linux: /proc/self/statm), or None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
