"""The operator's settings: read once at start-up from the environment (and app.py's flags), then passed
down. No other module reads the environment. The README's "Settings" table documents each one."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from demo.core.errors import ValidationError

PRECISIONS = {
    "auto": "8-bit on GPU, fp32 on CPU",
    "int8": "8-bit weights (bitsandbytes LLM.int8)",
    "nf4": "4-bit NF4 weights (bitsandbytes)",
    "fp16": "16-bit float",
    "bf16": "bfloat16",
    "fp32": "32-bit float",
}

# Which models a visitor may load (GPT_EXPLORER_VISITOR_MODELS); the operator's own loads are not limited.
VISITOR_MODELS = {
    "all": "any catalogue model, Hub downloads included",
    "local": "models already loaded, and checkpoints in local folders (no downloads)",
    "loaded": "only the models already loaded",
}

PRECISION_CHOICES = tuple(PRECISIONS)
DEFAULT_QUEUE_SIZE = 128
# Requests one visitor may have waiting or running: a page or API session, and a client address (a class
# behind one school router shares one, so it gets more).
DEFAULT_SESSION_LIMIT = 32
DEFAULT_ADDRESS_LIMIT = 64
CPU_CONCURRENCY = 2
GPU_CONCURRENCY = 4
DEFAULT_MAX_STREAMS = 32
DEFAULT_MODEL_MEMORY_MB = 4096
# Analysis results kept for redraws (attention, logits): 640 MB next to the models' 4 GB fits a 16 GB CPU Space.
DEFAULT_ANALYSIS_CACHE_MB = 640
DEFAULT_VISITOR_MODELS = "local"
DEFAULT_SESSIONS = 1000
ZERO_GPU_TRUE = ("1", "t", "true")  # what the spaces package accepts as SPACES_ZERO_GPU, in any case


def zero_gpu_requested(value: str | None) -> bool:
    """``SPACES_ZERO_GPU`` read as the ``spaces`` package reads it ("1", "t" or "true", in any case):
    Hugging Face sets it to "true" on ZeroGPU hardware."""
    return value is not None and value.lower() in ZERO_GPU_TRUE


@dataclass(frozen=True)
class Settings:
    """What the operator chose. ``None`` means "the app decides" (first catalogue model, concurrency
    by device)."""

    model: str | None = None  # GPT_EXPLORER_MODEL: catalogue name loaded at start-up
    precision: str = "auto"  # GPT_EXPLORER_PRECISION
    extra_models: tuple[str, ...] = ()  # GPT_EXPLORER_MODELS ('NAME=SOURCE;…') and --add-model
    concurrency: int | None = None  # GPT_EXPLORER_CONCURRENCY: analysis requests at once (2 on CPU, 4 on GPU)
    max_streams: int = DEFAULT_MAX_STREAMS  # GPT_EXPLORER_MAX_STREAMS: generations decoded together
    model_memory_mb: int = DEFAULT_MODEL_MEMORY_MB  # GPT_EXPLORER_MODEL_MEMORY_MB: loaded models' budget
    analysis_cache_mb: int = DEFAULT_ANALYSIS_CACHE_MB  # GPT_EXPLORER_ANALYSIS_CACHE_MB: kept analysis results
    visitor_models: str = DEFAULT_VISITOR_MODELS  # GPT_EXPLORER_VISITOR_MODELS: all | local | loaded
    sessions: int = DEFAULT_SESSIONS  # GPT_EXPLORER_SESSIONS: visitors' page state kept, oldest out first
    queue_size: int = DEFAULT_QUEUE_SIZE  # GPT_EXPLORER_QUEUE_SIZE: waiting requests before "queue full"
    session_limit: int = DEFAULT_SESSION_LIMIT  # GPT_EXPLORER_SESSION_LIMIT: waiting or running, per session
    address_limit: int = DEFAULT_ADDRESS_LIMIT  # GPT_EXPLORER_ADDRESS_LIMIT: waiting or running, per address
    # GPT_EXPLORER_FORWARDED_FOR: the client address is X-Forwarded-For's last entry (behind a proxy that
    # sets it); on by default on a Hugging Face Space (SPACE_ID set), whose proxy does
    forwarded_for: bool = False
    threads: int | None = None  # GPT_EXPLORER_THREADS: torch's CPU threads (None: demo.runtime.memory's policy)
    zero_gpu: bool = False  # SPACES_ZERO_GPU: set by Hugging Face on ZeroGPU Spaces

    def __post_init__(self):
        if self.precision not in PRECISION_CHOICES:
            raise ValidationError(f"GPT_EXPLORER_PRECISION must be one of {', '.join(PRECISION_CHOICES)}, "
                                  f"got {self.precision[:20]!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValidationError(f"GPT_EXPLORER_CONCURRENCY must be at least 1, got {self.concurrency}")
        if self.sessions < 1:
            raise ValidationError(f"GPT_EXPLORER_SESSIONS must be at least 1, got {self.sessions}")
        if self.max_streams < 1:
            raise ValidationError(f"GPT_EXPLORER_MAX_STREAMS must be at least 1, got {self.max_streams}")
        if self.model_memory_mb < 1:
            raise ValidationError(f"GPT_EXPLORER_MODEL_MEMORY_MB must be at least 1, got {self.model_memory_mb}")
        if self.analysis_cache_mb < 1:
            raise ValidationError(f"GPT_EXPLORER_ANALYSIS_CACHE_MB must be at least 1, got {self.analysis_cache_mb}")
        if self.visitor_models not in VISITOR_MODELS:
            raise ValidationError(f"GPT_EXPLORER_VISITOR_MODELS must be one of {', '.join(VISITOR_MODELS)}, "
                                  f"got {self.visitor_models[:20]!r}")
        if self.threads is not None and self.threads < 1:
            raise ValidationError(f"GPT_EXPLORER_THREADS must be at least 1, got {self.threads}")
        if self.session_limit < 1 or self.address_limit < 1:
            raise ValidationError("GPT_EXPLORER_SESSION_LIMIT and GPT_EXPLORER_ADDRESS_LIMIT must be at least 1, "
                                  f"got {self.session_limit} and {self.address_limit}")
        if self.queue_size < 1:
            raise ValidationError(f"GPT_EXPLORER_QUEUE_SIZE must be at least 1, got {self.queue_size}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            model=env.get("GPT_EXPLORER_MODEL") or None,
            precision=env.get("GPT_EXPLORER_PRECISION") or "auto",
            extra_models=tuple(e.strip() for e in env.get("GPT_EXPLORER_MODELS", "").split(";") if e.strip()),
            concurrency=_int(env, "GPT_EXPLORER_CONCURRENCY"),
            queue_size=_or(_int(env, "GPT_EXPLORER_QUEUE_SIZE"), DEFAULT_QUEUE_SIZE),
            max_streams=_or(_int(env, "GPT_EXPLORER_MAX_STREAMS"), DEFAULT_MAX_STREAMS),
            model_memory_mb=_or(_int(env, "GPT_EXPLORER_MODEL_MEMORY_MB"), DEFAULT_MODEL_MEMORY_MB),
            analysis_cache_mb=_or(_int(env, "GPT_EXPLORER_ANALYSIS_CACHE_MB"), DEFAULT_ANALYSIS_CACHE_MB),
            visitor_models=env.get("GPT_EXPLORER_VISITOR_MODELS") or DEFAULT_VISITOR_MODELS,
            sessions=_or(_int(env, "GPT_EXPLORER_SESSIONS"), DEFAULT_SESSIONS),
            zero_gpu=zero_gpu_requested(env.get("SPACES_ZERO_GPU")),
            threads=_int(env, "GPT_EXPLORER_THREADS"),
            session_limit=_or(_int(env, "GPT_EXPLORER_SESSION_LIMIT"), DEFAULT_SESSION_LIMIT),
            address_limit=_or(_int(env, "GPT_EXPLORER_ADDRESS_LIMIT"), DEFAULT_ADDRESS_LIMIT),
            forwarded_for=_flag(env, "GPT_EXPLORER_FORWARDED_FOR", default=bool(env.get("SPACE_ID"))),
        )

    def replace(self, **changes) -> Settings:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def concurrency_for(self, device: str) -> int:
        if self.concurrency is not None:
            return self.concurrency
        return GPU_CONCURRENCY if device == "cuda" else CPU_CONCURRENCY


def _or(value, default):
    return default if value is None else value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValidationError(f"{name} must be 1 or 0 (true or false), got {value[:20]!r}")


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number, got {raw[:20]!r}") from None
