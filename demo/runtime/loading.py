"""Model loading: a catalogue checkpoint in a precision on a device, as a :class:`LoadedModel`. Knows
nothing of Gradio. The pool of loaded models is :mod:`demo.runtime.pool`; generation lives in
:mod:`demo.runtime.generation`, analysis in :mod:`demo.analysis`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from demo.core.errors import ModelLoadError, ValidationError
from demo.core.settings import PRECISIONS
from demo.core.validation import check_choice
from demo.runtime.catalog import ModelSpec
from demo.runtime.threads import serving_count


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
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: str
    precision: str
    load_seconds: float
    scheduler: Any = field(default=None, repr=False, compare=False)  # its decode loop (demo.runtime.batching)

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
    def n_layers(self) -> int:
        """Transformer blocks (the one place the app reads it from the model's configuration)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def n_heads(self) -> int:
        """Attention heads per block."""
        return int(self.model.config.num_attention_heads)

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer: every id the model can predict."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def decode(self, ids) -> str:
        """Token ids as text, exactly (no clean-up of spaces, special tokens kept)."""
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False))

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
        return f"CPU ({serving_count()} threads)"

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


