"""Model loading: checkpoints, precisions, devices, and the model in service. Knows nothing of Gradio.

A :class:`ModelManager` holds the loaded models (a bounded pool) and which one each visitor's session
uses; a failed load changes nothing. Generation
lives in :mod:`demo.generation`, analysis in :mod:`demo.attention` and :mod:`demo.next_token`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
)

from .catalog import ModelSpec, find_spec
from .errors import ModelLoadError, NoModelError, ValidationError
from .validation import check_choice


class OncePerMessage(logging.Filter):
    """Lets each distinct message through once. bitsandbytes logs a warning on every 8-bit matmul of a
    float32 input (CPU 8-bit: 144 lines for 8 tokens of the bundled model); one line per cause is plenty."""

    def __init__(self):
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.msg}"
        if key in self._seen:
            return False
        if len(self._seen) < 1000:
            self._seen.add(key)
        return True


# bitsandbytes both warns (warnings) and logs (logging) it: once each.
warnings.filterwarnings("once", message="MatMul8bitLt: inputs will be cast")
logging.getLogger("bitsandbytes.autograd._functions").addFilter(OncePerMessage())

PRECISIONS = {
    "auto": "8-bit on GPU, fp32 on CPU",
    "int8": "8-bit weights (bitsandbytes LLM.int8)",
    "nf4": "4-bit NF4 weights (bitsandbytes)",
    "fp16": "16-bit float",
    "bf16": "bfloat16",
    "fp32": "32-bit float",
}
ProgressFn = Callable[[float, str], None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """The precision a request gets on this device ('auto' resolved); ValidationError if refused."""
    precision = check_choice("precision", precision, list(PRECISIONS), exact=True)
    if precision == "auto":
        return "int8" if device == "cuda" else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ValidationError("fp16 is not supported on CPU: choose fp32, bf16 or int8")
    return precision


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    device: str
    precision: str
    load_seconds: float
    scheduler: object = field(default=None, repr=False, compare=False)  # its decode loop (demo.batching)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 1024

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer: every id the model can predict."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def decode(self, ids) -> str:
        """Token ids as text, exactly (no clean-up of spaces, special tokens kept)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    @property
    def memory_bytes(self) -> int:
        return int(self.model.get_memory_footprint())

    @property
    def parameters(self) -> int:
        return int(self.model.num_parameters())  # counts packed 4-bit weights right

    @property
    def device_name(self) -> str:
        if self.device == "cuda":
            return f"GPU ({torch.cuda.get_device_name()})"
        return f"CPU ({torch.get_num_threads()} threads)"

    def info(self) -> dict:
        return {
            "name": self.name, "source": self.spec.source, "device": self.device_name, "precision": self.precision,
            "precision_label": PRECISIONS[self.precision], "memory_mb": round(self.memory_bytes / 2**20, 1),
            "parameters": self.parameters, "context_length": self.context_length,
            "load_seconds": round(self.load_seconds, 2), "vocab_size": len(self.tokenizer),
        }


def compute_dtype(precision: str, device: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The dtype a quantized model computes in (its non-quantized layers and the inputs of its 8-bit or
    4-bit matmuls). On CPU fp32. On a GPU 16-bit, since transformers 5 no longer forces it (fp32 there
    would cast every matmul's input): fp16 for int8, whose LLM.int8 kernels work in fp16; for nf4 bf16
    where the GPU computes it natively (compute capability 8 and up), else fp16 (bf16 is emulated,
    slowly, on a T4)."""
    if device != "cuda":
        return torch.float32
    if precision == "nf4":
        capability = capability or torch.cuda.get_device_capability()
        return torch.bfloat16 if capability >= (8, 0) else torch.float16
    return torch.float16


def load_kwargs(precision: str, device: str, capability: tuple[int, int] | None = None) -> dict:
    """``from_pretrained`` arguments for a resolved precision on a device: safetensors only, no remote
    code, eager attention (so the attention weights can be read), the weights' dtype and placement."""
    kwargs = dict(use_safetensors=True, trust_remote_code=False, attn_implementation="eager")
    placement = {"": 0} if device == "cuda" else {"": "cpu"}
    if precision == "int8":
        return {**kwargs, "quantization_config": BitsAndBytesConfig(load_in_8bit=True),
                "dtype": compute_dtype(precision, device, capability), "device_map": placement}
    if precision == "nf4":
        dtype = compute_dtype(precision, device, capability)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        return {**kwargs, "quantization_config": quant, "dtype": dtype, "device_map": placement}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    return {**kwargs, "dtype": dtype, "device_map": placement if device == "cuda" else None}


def warm_up(model, tokenizer) -> None:
    """One forward pass of one token. bitsandbytes sets up its 8-bit state lazily, without a lock, on
    the first forward: done here, while the model is loaded under the manager's lock, before any
    request can reach it, two first requests cannot race on it."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    with torch.inference_mode():
        model(input_ids=torch.tensor([[token]], device=model.device), use_cache=False)


def _explain_load_error(spec: ModelSpec, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if spec.local_path is not None:  # a visitor sees the model's name, never a folder of the server
        text = text.replace(str(spec.local_path), f"<{spec.name}>").replace(spec.source, f"<{spec.name}>")
    low = text.lower()
    where = f"'{spec.name}'" if spec.local_path is not None else f"'{spec.name}' ({spec.source})"
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in low:
        return f"Not enough memory to load {where}. Try a smaller model or 8-bit/4-bit precision."
    if spec.local_path is not None:
        if not spec.local_path.exists():
            return f"The checkpoint folder for {where} does not exist."
        if "safetensors" in low or ".bin" in low or "pytorch_model" in low:
            return (f"{where} has no safetensors weights. Pickle checkpoints (.bin) are refused for safety; "
                    "convert it to safetensors first.")
        return f"Could not load {where}: {text[:300]}"
    if any(k in low for k in ("connect", "resolve", "network", "offline", "timed out", "timeout", "max retries",
                              "local_files_only", "cannot find the requested files", "couldn't", "name or service")):
        return (f"Could not download {where} from the Hugging Face Hub: this machine seems to have no access to it "
                "(offline?). Choose the bundled model, or add a local checkpoint folder with GPT_EXPLORER_MODELS.")
    if "safetensors" in low:
        return f"{where} has no safetensors weights on the Hub; pickle checkpoints (.bin) are refused for safety."
    return f"Could not load {where}: {text[:300]}"


def load_model(spec: ModelSpec, precision: str = "auto", device: str | None = None,
               progress: ProgressFn | None = None) -> LoadedModel:
    """Load a causal LM checkpoint (safetensors only, no remote code, eager attention)."""
    device = device or default_device()
    precision = resolve_precision(precision, device)
    if precision in ("int8", "nf4") and device == "cpu" and not _bnb_available():
        raise ModelLoadError("8-bit/4-bit precision needs the bitsandbytes package, which is not installed.")
    progress = progress or (lambda frac, msg: None)
    source = str(spec.local_path) if spec.local_path is not None else spec.source
    t0 = time.perf_counter()
    try:
        progress(0.05, f"Reading the configuration of {spec.name}")
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ModelLoadError(f"'{spec.name}' is a {config.model_type} model, not a causal language model.")
        progress(0.15, "Loading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        progress(0.3, f"Loading the weights ({precision})")
        model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs(precision, device))
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        progress(0.9, "Warming up")
        warm_up(model, tokenizer)
        progress(0.95, "Ready")
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_explain_load_error(spec, exc)) from exc
    return LoadedModel(spec, model, tokenizer, device, precision, time.perf_counter() - t0)


def _bnb_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


ModelKey = tuple[str, str]  # (catalogue name, resolved precision)
# Which models a visitor may load (GPT_EXPLORER_VISITOR_MODELS); the operator's own loads are not limited.
VISITOR_MODELS = {
    "all": "any catalogue model, Hub downloads included",
    "local": "models already loaded, and checkpoints in local folders (no downloads)",
    "loaded": "only the models already loaded",
}
MAX_SESSIONS = 10_000  # remembered model choices, least recently used first out


class ModelManager:
    """The loaded models and which one each visitor's session uses.

    A bounded pool: models are kept least-recently-used first out within ``memory_mb`` (their
    weights' footprint), except the default (what a new visitor gets) and any model a request is
    using (:meth:`use`). Each model loads once however many visitors ask at the same time: the others
    wait for that load. A session's choice (:meth:`load` with ``session``) changes that session only;
    a load without a session (the operator's, at start-up) sets the default."""

    def __init__(self, catalog: list[ModelSpec], device: str | None = None, memory_mb: float | None = None,
                 visitor_models: str = "all"):
        self.catalog = list(catalog)
        self.device = device or default_device()
        self.memory_mb = memory_mb
        self.visitor_models = check_choice("visitor models", visitor_models, list(VISITOR_MODELS), exact=True)
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()  # least recently used first
        self._users: dict[ModelKey, int] = {}
        self._sessions: OrderedDict[str, ModelKey] = OrderedDict()
        self._loading: dict[ModelKey, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts above (never held during a load)
        self._load_slot = threading.Lock()  # one load at a time, whatever asked for it (memory is checked after)
        self._owner_pid = os.getpid()
        self.default: ModelKey | None = None
        self.last_error: str | None = None
        self.notice: str | None = None  # why the default is not the model the app meant to start with

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.catalog]

    def key(self, name, precision="auto") -> ModelKey:
        """The pool key of a catalogue model in a precision ('auto' resolved); ValidationError if refused."""
        return find_spec(self.catalog, name).name, resolve_precision(precision, self.device)

    def after_fork(self) -> None:
        """In a process forked from this one (a ZeroGPU worker): fresh locks, since a load that held
        one at the fork goes on in the parent only."""
        if self._owner_pid != os.getpid():
            self._lock, self._loading, self._owner_pid = threading.Lock(), {}, os.getpid()
            self._load_slot = threading.Lock()

    # ------------------------------------------------------------------------- which model serves whom

    @property
    def current(self) -> LoadedModel | None:
        """The default model (a new visitor's)."""
        return self._models.get(self.default) if self.default else None

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def require(self, session: str | None = None) -> LoadedModel:
        """The model this session uses (the default for a session that chose none)."""
        with self._lock:
            return self._lookup(session)

    @contextlib.contextmanager
    def use(self, session: str | None = None) -> Iterator[LoadedModel]:
        """The session's model, kept from eviction until the block ends."""
        with self._lock:
            loaded = self._lookup(session)
            key = (loaded.name, loaded.precision)
            self._users[key] = self._users.get(key, 0) + 1
        try:
            yield loaded
        finally:
            self._release(key)

    def _release(self, key: ModelKey) -> None:
        """A request is done with a model: once nobody uses it, the pool may shrink back to its budget."""
        with self._lock:
            self._users[key] -= 1
            if not self._users[key]:
                self._evict(keep=self.default)

    def _lookup(self, session: str | None) -> LoadedModel:
        key = self._sessions.get(session, self.default) if session is not None else self.default
        loaded = self._models.get(key) if key else None
        if loaded is None:
            if key is not None and key != self.default:
                raise NoModelError(f"{key[0]} ({key[1]}) was unloaded to make room for other models: "
                                   "load it again in the model menu.")
            why = f" The last attempt failed: {self.last_error}" if self.last_error else ""
            raise NoModelError(f"No model is loaded yet: choose one in the model menu.{why}")
        self._models.move_to_end(key)
        if session is not None and session in self._sessions:
            self._sessions.move_to_end(session)
        return loaded

    def forget(self, session: str | None) -> None:
        """A session ended (its page was closed): drop its choice."""
        with self._lock:
            self._sessions.pop(session, None)

    # ------------------------------------------------------------------------- loading

    def check_visitor_may_load(self, key: ModelKey) -> None:
        """ValidationError when the operator's setting keeps visitors from loading this model."""
        if key in self._models or self.visitor_models == "all":
            return
        spec = find_spec(self.catalog, key[0])
        if self.visitor_models == "local" and spec.local_path is not None:
            return
        loaded = ", ".join(f"{n} ({p})" for n, p in self._models) or "none"
        allowed = "models already loaded" if self.visitor_models == "loaded" else \
            "models already loaded and local checkpoints"
        raise ValidationError(f"This server lets visitors choose only {allowed}; {key[0]} ({key[1]}) is not one "
                              f"of them. Loaded now: {loaded}.")

    def load(self, name, precision="auto", progress: ProgressFn | None = None, session: str | None = None,
             visitor: bool = False) -> LoadedModel:
        """Load a catalogue model (once: a model already loaded, or being loaded for someone else, is
        shared). With ``session`` that session uses it from now on; without, it becomes the default.
        ``visitor``: apply the operator's limit on what visitors may load. On failure nothing changes."""
        key = self.key(name, precision)
        if visitor:
            self.check_visitor_may_load(key)
        loaded = self._obtain(key, progress, default_on_error=session is None)
        with self._lock:
            self._models[key] = loaded  # back in, had another load evicted it in between
            self._models.move_to_end(key)
            if session is None:
                self.default, self.last_error, self.notice = key, None, None
            else:
                self._sessions[session] = key
                self._sessions.move_to_end(session)
                while len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
        return loaded

    @contextlib.contextmanager
    def hold(self, name, precision, progress: ProgressFn | None = None, visitor: bool = False
             ) -> Iterator[LoadedModel]:
        """A catalogue model in a precision, loaded if needed (once, like :meth:`load`) but chosen by
        nobody: kept from eviction until the block ends, then an ordinary pool member (a comparison's
        second precision)."""
        key = self.key(name, precision)
        if visitor:
            self.check_visitor_may_load(key)
        while True:
            loaded = self._obtain(key, progress)
            with self._lock:
                if self._models.get(key) is loaded:  # not evicted between the load and here
                    self._users[key] = self._users.get(key, 0) + 1
                    break
        try:
            yield loaded
        finally:
            self._release(key)

    def _obtain(self, key: ModelKey, progress: ProgressFn | None, default_on_error: bool = False) -> LoadedModel:
        """The pool's model for ``key``, loading it (once) when it is not there."""
        with self._lock:
            loaded = self._models.get(key)
            key_lock = self._loading.setdefault(key, threading.Lock()) if loaded is None else None
        if loaded is None:
            if key_lock.locked() and progress:
                progress(0.02, f"{key[0]} ({key[1]}) is being loaded for another visitor: waiting for it")
            with key_lock:
                with self._lock:
                    loaded = self._models.get(key)
                if loaded is None:
                    try:
                        if self._load_slot.locked() and progress:
                            progress(0.01, "another model is loading on this server: waiting for it to finish")
                        with self._load_slot:
                            loaded = load_model(find_spec(self.catalog, key[0]), key[1], self.device, progress)
                    except ModelLoadError as exc:
                        if default_on_error:
                            self.last_error = str(exc)
                        raise
                    with self._lock:
                        self._models[key] = loaded
                        self._evict(keep=key)
        return loaded

    def add(self, loaded: LoadedModel) -> None:
        """Put a model loaded elsewhere into the pool as the default (tests, scripts)."""
        key = (loaded.name, loaded.precision)
        with self._lock:
            self._models[key] = loaded
            self.default = key

    @property
    def memory_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    def _evict(self, keep: ModelKey) -> None:
        """Unload least recently used models until the pool fits its budget; the default, ``keep`` and
        models in use stay (the pool may then stay over budget until they are free)."""
        if self.memory_mb is None:
            return
        freed = False
        while self.memory_bytes > self.memory_mb * 2**20:
            idle = [k for k in self._models if k not in (keep, self.default) and not self._users.get(k)]
            if not idle:
                break
            del self._models[idle[0]]
            freed = True
        if freed:
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()
