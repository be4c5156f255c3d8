"""Model loading and streamed generation. Knows nothing of Gradio.

A :class:`ModelManager` holds the model in service. Loading builds a new :class:`LoadedModel` and
swaps it in only when it is ready, so a failed load keeps the previous model serving. Each
generation runs ``model.generate`` in a worker thread feeding a ``TextIteratorStreamer``; closing
the :func:`stream_generate` generator (a Stop, a closed tab, a cancelled API call) sets an event
that a stopping criterion checks at every step, and joins the thread.
"""

from __future__ import annotations

import gc
import itertools
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from .catalog import ModelSpec, find_spec
from .errors import ModelLoadError, NoModelError, ValidationError
from .sampling import ChosenToken, SamplingParams, TokenChooser, build_processors, check_number, resolve_seed

# bitsandbytes warns on every 8-bit matmul of a float32 input (CPU 8-bit): once is plenty.
warnings.filterwarnings("once", message="MatMul8bitLt: inputs will be cast")

PRECISIONS = {
    "auto": "8-bit on GPU, fp32 on CPU",
    "int8": "8-bit weights (bitsandbytes LLM.int8)",
    "nf4": "4-bit NF4 weights (bitsandbytes)",
    "fp16": "16-bit float",
    "bf16": "bfloat16",
    "fp32": "32-bit float",
}
MAX_PROMPT_CHARS = 50_000
MAX_NEW_TOKENS = 1024
THREAD_PREFIX = "gpt-explorer-generate"
_thread_ids = itertools.count(1)

ProgressFn = Callable[[float, str], None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValidationError(f"precision must be one of {', '.join(PRECISIONS)}, got {str(precision)[:20]!r}")
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


def _quantization(precision: str):
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if precision == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    return None


def _explain_load_error(spec: ModelSpec, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    where = f"'{spec.name}' ({spec.source})"
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
        kwargs = dict(use_safetensors=True, trust_remote_code=False, attn_implementation="eager")
        quant = _quantization(precision)
        if quant is not None:
            kwargs.update(quantization_config=quant, device_map={"": 0} if device == "cuda" else {"": "cpu"})
        else:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
            kwargs.update(dtype=dtype, device_map={"": 0} if device == "cuda" else None)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        progress(0.95, "Ready")
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        raise ModelLoadError(_explain_load_error(spec, exc)) from exc
    return LoadedModel(spec, model, tokenizer, device, precision, time.perf_counter() - t0)


def _bnb_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


class ModelManager:
    """The model in service, and switching between catalogue models safely."""

    def __init__(self, catalog: list[ModelSpec], device: str | None = None):
        self.catalog = list(catalog)
        self.device = device or default_device()
        self._current: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.catalog]

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        if self._current is None:
            why = f" The last attempt failed: {self.last_error}" if self.last_error else ""
            raise NoModelError(f"No model is loaded yet: choose one in the model menu.{why}")
        return self._current

    def load(self, name: str, precision: str = "auto", progress: ProgressFn | None = None) -> LoadedModel:
        """Load a catalogue model and put it in service; on failure the previous model keeps serving."""
        spec = find_spec(self.catalog, name)
        resolve_precision(precision, self.device)  # validate before taking the lock
        with self._load_lock:
            cur = self._current
            if cur is not None and cur.spec == spec and cur.precision == resolve_precision(precision, self.device):
                return cur
            try:
                loaded = load_model(spec, precision, self.device, progress)
            except ModelLoadError as exc:
                self.last_error = str(exc)
                raise
            self._current, self.last_error = loaded, None
            del cur
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()
            return loaded


# ----------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    sampling: SamplingParams


def clean_text(name: str, text, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Validate a user text: a non-empty string within the size limit; lone surrogates become "?"."""
    if not isinstance(text, str):
        raise ValidationError(f"{name} must be text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValidationError(f"{name} is too long: {len(text):,} characters (the limit is {max_chars:,})")
    text = text.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> '?'
    if not text.strip():
        raise ValidationError(f"{name} is empty: type some text first")
    return text


def validate_request(prompt, max_new_tokens, sampling: SamplingParams) -> GenerationRequest:
    return GenerationRequest(
        prompt=clean_text("prompt", prompt),
        max_new_tokens=check_number("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS, integer=True),
        sampling=sampling,
    )


@dataclass
class GenerationUpdate:
    text: str  # the text generated so far (without the prompt)
    n_tokens: int
    elapsed_s: float
    ttft_s: float | None
    tokens_per_s: float | None  # decode speed after the first token
    prompt_tokens: int
    truncated_tokens: int  # prompt tokens dropped from the left to fit the context window
    seed: int | None
    done: bool = False
    stop_reason: str | None = None  # 'length', 'end of text', 'stopped', 'error'
    chosen: list[ChosenToken] | None = None  # each generated token with its probability (final update)
    prompt_ids: list[int] | None = None  # the prompt as the model saw it (final update)


class _TokenStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that releases text token by token rather than word by word, holding back
    only an incomplete multi-byte character, and counts and times the generated tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_tokens = 0
        self.t_first: float | None = None
        self.t_last: float | None = None

    def put(self, value):
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.n_tokens += int(value.numel())
        self.t_last = time.perf_counter()
        if self.t_first is None:
            self.t_first = self.t_last
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):
            return  # the rest of a multi-byte character is still to come
        printable, self.print_len = text[self.print_len:], len(text)
        if text.endswith("\n"):  # keep re-decoding cheap on long texts
            self.token_cache, self.print_len = [], 0
        self.on_finalized_text(printable)


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def prepare_prompt(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
    """Token ids of the prompt, keeping the most recent tokens so prompt + new tokens fit the
    context window. Returns (ids, number of tokens dropped from the start)."""
    ctx = loaded.context_length
    if max_new_tokens >= ctx:
        raise ValidationError(f"max_new_tokens must be below this model's context window of {ctx} tokens")
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValidationError("prompt is empty after tokenization")
    keep = ctx - max_new_tokens
    dropped = max(0, len(ids) - keep)
    return ids[dropped:], dropped


def live_generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


def stream_generate(loaded: LoadedModel, request: GenerationRequest, poll_s: float = 0.05) -> Iterator[GenerationUpdate]:
    """Stream a generation as growing text. Close the generator to stop the model (within a step)."""
    t0 = time.perf_counter()
    params = resolve_seed(request.sampling) if request.sampling.do_sample else request.sampling
    ids, dropped = prepare_prompt(loaded, request.prompt, request.max_new_tokens)
    tok = loaded.tokenizer
    input_ids = torch.tensor([ids], device=loaded.model.device)
    streamer = _TokenStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=poll_s)
    stop = threading.Event()
    chooser = TokenChooser(params.do_sample, params.seed)
    processors = build_processors(params)
    processors.append(chooser)
    error: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                loaded.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=request.max_new_tokens,
                    do_sample=False, num_beams=1, temperature=None, top_k=None, top_p=None, logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), streamer=streamer,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                )
        except BaseException as exc:  # noqa: BLE001 - reported to the consumer below
            error.append(exc)
            streamer.end()

    def update(text: str, **kw) -> GenerationUpdate:
        now = time.perf_counter()
        n = streamer.n_tokens
        rate = None
        if n >= 2 and streamer.t_last and streamer.t_first and streamer.t_last > streamer.t_first:
            rate = (n - 1) / (streamer.t_last - streamer.t_first)
        ttft = streamer.t_first - t0 if streamer.t_first else None
        return GenerationUpdate(text=text, n_tokens=n, elapsed_s=now - t0, ttft_s=ttft, tokens_per_s=rate,
                                prompt_tokens=len(ids), truncated_tokens=dropped, seed=params.seed, **kw)

    thread = threading.Thread(target=work, name=f"{THREAD_PREFIX}-{next(_thread_ids)}", daemon=True)
    thread.start()
    text = ""
    try:
        while True:
            try:
                piece = next(streamer)
            except StopIteration:
                break
            except queue.Empty:
                if not thread.is_alive() and streamer.text_queue.empty():
                    break
                continue
            if piece:
                text += piece
                yield update(text)
        thread.join()
        if error:
            raise RuntimeError(f"generation failed: {type(error[0]).__name__}: {error[0]}") from error[0]
        last = chooser.chosen[-1].token_id if chooser.chosen else None
        reason = "end of text" if last is not None and last == tok.eos_token_id else "length"
        yield update(text, done=True, stop_reason=reason, chosen=chooser.chosen, prompt_ids=ids)
    finally:
        stop.set()  # also reached on GeneratorExit: a closed stream stops the model
        thread.join(timeout=5)
