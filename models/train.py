"""Train, fine-tune and evaluate a GPT-2 language model: the tool that made the bundled model.

    python -m models.train tokenizer --data DIR --out models/my-gpt --vocab-size 8192
    python -m models.train pretrain  --data DIR --tokenizer models/my-gpt --out models/my-gpt \
                                     --n-layer 6 --n-embd 384 --n-head 6 --context 512 --max-steps 5000
    python -m models.train finetune  --model models/gutenberg-gpt --data MY_TEXTS --out models/my-ft
    python -m models.train evaluate  --model models/gutenberg-gpt --data DIR
    python -m models.train sample    --model models/gutenberg-gpt --prompt "It was a dark and stormy night"

``pretrain`` and ``finetune`` run unchanged under ``accelerate launch --multi_gpu --num_processes N`` on
several GPUs (bf16 mixed precision on GPU, fp32 on CPU unless ``--mixed-precision bf16``); the same
launch on a machine without GPUs joins N CPU processes over gloo, which is how the tests check it.
Every output folder is a normal Hugging Face checkpoint (config.json, *.safetensors, tokenizer files,
generation_config.json) loadable with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".txt.gz")


class TrainError(Exception):
    """A problem with the user's input, reported as one clear line."""


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Document:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def read(self) -> str:
        raw = self.path.read_bytes()
        if self.path.name.endswith(".gz"):
            try:
                raw = gzip.decompress(raw)
            except OSError as exc:
                raise TrainError(f"{self.path}: not a valid gzip file ({exc})") from exc
        if b"\x00" in raw[:4096]:
            raise TrainError(f"{self.path}: looks like a binary file, not text")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TrainError(f"{self.path}: not UTF-8 text ({exc})") from exc


def find_documents(paths: Sequence[str | os.PathLike]) -> list[Document]:
    """All .txt / .txt.gz files under the given files or folders, sorted, as documents."""
    docs: list[Document] = []
    for p in map(Path, paths):
        if not p.exists():
            raise TrainError(f"{p}: no such file or folder")
        if p.is_file():
            if not p.name.endswith(TEXT_SUFFIXES):
                raise TrainError(f"{p}: not a text file (expected .txt or .txt.gz)")
            docs.append(Document(p))
        else:
            docs.extend(Document(f) for f in sorted(p.rglob("*")) if f.is_file() and f.name.endswith(TEXT_SUFFIXES))
    if not docs:
        raise TrainError(f"no .txt or .txt.gz files found in {', '.join(map(str, paths))}")
    return docs


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents for validation, chosen by a seeded hash of the file name (stable
    when files are added). With a single document nothing can be held out whole: returns ([doc], [])."""
    if len(docs) < 2 or val_fraction <= 0:
        return docs, []
    ranked = sorted(docs, key=lambda d: hashlib.sha256(f"{seed}:{d.name}".encode()).hexdigest())
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    val = {d.path for d in ranked[:n_val]}
    return [d for d in docs if d.path not in val], [d for d in docs if d.path in val]


def encode_documents(tokenizer, docs: Iterable[Document]) -> np.ndarray:
    """Token ids of the documents, each followed by <|endoftext|>, as one uint32 stream."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    parts = []
    for doc in docs:
        # verbose=False: a whole book is longer than the model's context; it is cut into windows later.
        ids = tokenizer(doc.read(), add_special_tokens=False, verbose=False)["input_ids"]
        parts.append(np.asarray(ids + [eos_id], dtype=np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def cached_encode(tokenizer, docs: list[Document], cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return encode_documents(tokenizer, docs)
    key = hashlib.sha256(
        json.dumps([tokenizer.backend_tokenizer.to_str()]
                   + [f"{d.path}:{d.path.stat().st_size}" for d in docs]).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"tokens-{key}.npy"
    if path.exists():
        return np.load(path)
    ids = encode_documents(tokenizer, docs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # several launched processes may write at once
    np.save(tmp, ids)
    os.replace(tmp, path)
    return ids


def _main_process() -> bool:
    """True in the one process that prints and writes (rank 0 under accelerate launch / torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(data: Sequence[str], out: str | os.PathLike, vocab_size: int = 8192, min_frequency: int = 2,
                    val_fraction: float = 0.0, seed: int = 1234):
    """Train a GPT-2 style byte-level BPE tokenizer and save it as a transformers tokenizer folder.
    With ``val_fraction``, the documents that pretrain will hold out (same fraction and seed) are left out."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    docs, _ = split_documents(find_documents(data), val_fraction, seed)
    if vocab_size < 300:
        raise TrainError("--vocab-size must be at least 300 (256 byte tokens + merges + <|endoftext|>)")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        (d.read() for d in docs), vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
        show_progress=True,
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    tok.model_max_length = 1024
    Path(out).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    print(f"tokenizer: {tok.vocab_size} tokens from {len(docs)} documents -> {out}")
    return tok


def _source_error(path: str | os.PathLike, what: str, exc: BaseException) -> TrainError:
    """A clear message for a checkpoint that would not load: a local folder, or a Hub id."""
    text = str(path)
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if Path(text).exists():
        return TrainError(f"{text}: cannot load {what} ({reason})")
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        return TrainError(f"{text}: no such folder")
    return TrainError(f"{text}: not a local folder, and fetching it from the Hugging Face Hub failed "
                      f"(no network here?): {reason}")


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise _source_error(path, "a tokenizer", exc) from exc
    if tok.eos_token is None:
        tok.eos_token = EOS
    return tok


# ----------------------------------------------------------------------------- model


def load_causal_lm(path: str, **kwargs):
    """Load a causal LM checkpoint (safetensors only, never remote code) or explain why not."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise _source_error(path, "a Hugging Face config (config.json)", exc) from exc
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise TrainError(f"{path}: a '{config.model_type}' model is not a causal language model")
    try:
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False, **kwargs)
    except OSError as exc:
        raise TrainError(f"{path}: cannot load safetensors weights ({exc})") from exc


def new_gpt2(tokenizer, n_layer: int, n_embd: int, n_head: int, context: int, dropout: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    if n_embd % n_head:
        raise TrainError(f"--n-embd {n_embd} must be divisible by --n-head {n_head}")
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=context, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=eos_id, eos_token_id=eos_id,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    out: Path
    context: int
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 1000
    eval_every: int = 200
    eval_batches: int = 20
    patience: int = 0  # evaluations without improvement before stopping (0: never)
    seed: int = 1234
    resume: bool = False
    save_dtype: str = "float32"
    log_file: Path | None = None
    compile: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32; or "no", "bf16", "fp16"


class TokenWindows:
    """Random (train) or fixed, evenly spread (validation) windows of context+1 tokens from a stream."""

    def __init__(self, ids: np.ndarray, context: int):
        if len(ids) < context + 2:
            raise TrainError(f"not enough text: {len(ids)} tokens, need more than {context + 1} (the context)")
        self.ids, self.context = ids, context

    def random_batch(self, rng: np.random.Generator, batch_size: int):
        import torch

        starts = rng.integers(0, len(self.ids) - self.context - 1, size=batch_size)
        return torch.from_numpy(np.stack([self.ids[s : s + self.context + 1] for s in starts]).astype(np.int64))

    def fixed_batches(self, n_batches: int, batch_size: int):
        import torch

        n = n_batches * batch_size
        starts = np.linspace(0, len(self.ids) - self.context - 1, num=n).astype(np.int64)
        for i in range(0, n, batch_size):
            rows = [self.ids[s : s + self.context + 1] for s in starts[i : i + batch_size]]
            yield torch.from_numpy(np.stack(rows).astype(np.int64))


def _lm_loss(model, batch):
    import torch.nn.functional as F

    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


def run_training(model, tokenizer, train_ids: np.ndarray, val_ids: np.ndarray, cfg: TrainConfig) -> dict:
    """The loop shared by pretrain and finetune. Returns a summary (best val loss, steps, tokens, time)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    on_gpu = torch.cuda.is_available()
    mixed = cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    # cpu=True where there is no accelerator at all: it changes nothing for one process, and it is what
    # makes accelerate join several launched processes over gloo (else each would train on its own).
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.accelerator.is_available(),
    )
    set_seed(cfg.seed)
    train = TokenWindows(train_ids, cfg.context)
    val = TokenWindows(val_ids, cfg.context) if len(val_ids) > cfg.context + 1 else None

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95), fused=on_gpu,
    )
    # Once prepared, accelerate steps the schedule once per process for each optimizer step (it assumes
    # the batch grows with the processes): count its steps in those units so N GPUs follow the same curve.
    n_proc = accelerator.num_processes
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, num_warmup_steps=cfg.warmup_steps * n_proc, num_training_steps=cfg.max_steps * n_proc,
        min_lr_rate=cfg.min_lr_ratio,
    )
    if cfg.compile:
        model = torch.compile(model)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    state_dir = cfg.out / "training_state"
    step, best, bad_evals, history = 0, math.inf, 0, []
    if cfg.resume:
        meta_path = state_dir / "meta.json"
        if not meta_path.exists():
            raise TrainError(f"--resume: no saved training state in {state_dir}")
        accelerator.load_state(str(state_dir))
        meta = json.loads(meta_path.read_text())
        step, best, history = meta["step"], meta["best_val_loss"], meta["history"]
        accelerator.print(f"resumed at step {step} (best val loss {best:.4f})")
    # Each rank draws different windows; the stream is reseeded from the step so a resume continues it.
    rng = np.random.default_rng([cfg.seed, accelerator.process_index, step])

    def evaluate() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for batch in val.fixed_batches(cfg.eval_batches, cfg.batch_size):
                loss = _lm_loss(model, batch.to(accelerator.device)).reshape(1)
                losses.append(accelerator.gather(loss).mean().item())
        model.train()
        return float(np.mean(losses))

    def save(path: Path):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(accelerator.unwrap_model(model), tokenizer, path, cfg.save_dtype)

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.context * accelerator.num_processes
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not accelerator.is_local_main_process, unit="step",
               dynamic_ncols=True)
    t0, ema, start_step, stop_reason = time.time(), None, step, "max steps"
    while step < cfg.max_steps:
        for _ in range(cfg.grad_accum):
            batch = train.random_batch(rng, cfg.batch_size).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = _lm_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        tok_s = (step - start_step) * tokens_per_step / max(time.time() - t0, 1e-9)
        bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            record = {"step": step, "tokens": step * tokens_per_step, "train_loss": ema,
                      "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 1)}
            if val is not None:
                record["val_loss"] = v = evaluate()
                if v < best:
                    best, bad_evals = v, 0
                    save(cfg.out)
                else:
                    bad_evals += 1
            else:
                save(cfg.out)
            history.append(record)
            bar.write(json.dumps(record))
            if cfg.log_file and accelerator.is_main_process:
                with open(cfg.log_file, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            accelerator.save_state(str(state_dir))
            if accelerator.is_main_process:
                meta = {"step": step, "best_val_loss": best, "history": history}
                (state_dir / "meta.json").write_text(json.dumps(meta))
            if cfg.patience and bad_evals >= cfg.patience:
                stop_reason = f"early stop: no val improvement in {cfg.patience} evaluations"
                break
    bar.close()
    summary = {"steps": step, "tokens_seen": step * tokens_per_step, "best_val_loss": best,
               "wall_time_s": round(time.time() - t0, 1), "stop_reason": stop_reason, "history": history,
               "hardware": torch.cuda.get_device_name() if on_gpu else f"CPU ({os.cpu_count()} cores)",
               "processes": accelerator.num_processes}
    accelerator.print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return summary


def save_checkpoint(model, tokenizer, out: Path, dtype: str = "float32"):
    import torch
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    to_save = model
    if dtype != "float32":
        import copy

        to_save = copy.deepcopy(model).to(getattr(torch, dtype))
    # Shards of at most 6 MB: the Hugging Face Hub refuses files over 10 MB outside Git LFS (a single
    # tensor larger than that, like a big embedding matrix, still gets a shard of its own).
    to_save.save_pretrained(out, safe_serialization=True, max_shard_size="6MB")
    tokenizer.save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, do_sample=True, temperature=0.8,
                     top_k=0, top_p=0.95, max_new_tokens=100).save_pretrained(out)


# ----------------------------------------------------------------------------- evaluation


def bits_per_byte(model, tokenizer, texts: Sequence[str], context: int | None = None, stride: int | None = None,
                  batch_size: int = 8) -> dict:
    """Bits per UTF-8 byte (tokenizer-independent) and per-token perplexity with a sliding window.

    Each text is prefixed with <|endoftext|> so its first token is predicted too; every token is
    scored exactly once, with up to ``context - stride`` tokens of earlier context."""
    import torch

    cfg = model.config
    context = context or getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024)
    stride = stride or context // 2
    if not 0 < stride < context:
        raise TrainError(f"stride must be in 1..{context - 1}")
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    device = next(model.parameters()).device
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    model.eval()
    for text in texts:
        ids = [eos_id] + tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        total_bytes += len(text.encode("utf-8"))
        windows = []  # (begin, end, n_new): score the last n_new tokens of ids[begin:end]
        prev_end = 1
        while prev_end < len(ids):
            end = min(prev_end + stride, len(ids))
            begin = max(0, end - context)
            windows.append((begin, end, end - prev_end))
            prev_end = end
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            width = max(e - b for b, e, _ in chunk)
            inp = torch.full((len(chunk), width), eos_id, dtype=torch.long)
            tgt = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (b, e, n_new) in enumerate(chunk):
                seq = torch.tensor(ids[b:e])
                inp[r, : e - b], mask[r, : e - b] = seq, 1
                tgt[r, e - b - n_new : e - b] = seq[-n_new:]
            with torch.no_grad():
                logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            t = tgt[:, 1:].to(device)
            valid = t != -100
            nll = -logp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1)[valid]
            total_nll += nll.sum().item()
            total_tokens += int(valid.sum())
    if total_bytes == 0:
        raise TrainError("nothing to evaluate: the texts are empty")
    return {"bits_per_byte": total_nll / math.log(2) / total_bytes, "perplexity": math.exp(total_nll / total_tokens),
            "tokens": total_tokens, "bytes": total_bytes}


# ----------------------------------------------------------------------------- CLI


# The TrainConfig fields the command line sets, each under its own name (--batch-size sets batch_size);
# their defaults are TrainConfig's, so they are written down once.
CLI_FIELDS = ("batch_size", "grad_accum", "lr", "warmup_steps", "max_steps", "eval_every", "eval_batches", "seed",
              "resume", "save_dtype", "compile", "mixed_precision")


def _config_default(name: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _train_args(p: argparse.ArgumentParser, lr: float | None = None, steps: int | None = None):
    """The training flags (``lr`` and ``steps``: this command's own defaults, else TrainConfig's)."""
    d = {name: _config_default(name) for name in CLI_FIELDS}
    d["lr"], d["max_steps"] = lr if lr is not None else d["lr"], steps if steps is not None else d["max_steps"]
    p.add_argument("--data", nargs="+", required=True, help="text files or folders of .txt/.txt.gz")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--val-fraction", type=float, default=0.02, help="share of whole documents held out")
    for name in ("batch_size", "grad_accum", "warmup_steps", "max_steps", "eval_every", "eval_batches"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=d[name])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seed", type=int, default=d["seed"], help="initial weights and the order of training windows")
    p.add_argument("--split-seed", type=int, default=1234,
                   help="which whole documents are held out (keep it when comparing or continuing runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/training_state")
    p.add_argument("--save-dtype", choices=["float32", "float16", "bfloat16"], default=d["save_dtype"])
    p.add_argument("--cache-dir", default=None, help="where to cache tokenized text (default: none)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on a GPU)")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default=d["mixed_precision"],
                   help="auto: bf16 on a GPU that supports it, fp32 elsewhere; bf16 also speeds up CPUs with "
                        "AVX512-BF16/AMX (about 1.6x measured here)")


def _prepare(args, tokenizer, context: int):
    docs = find_documents(args.data)
    train_docs, val_docs = split_documents(docs, args.val_fraction, args.split_seed)
    cache = Path(args.cache_dir) if args.cache_dir else None
    train_ids = cached_encode(tokenizer, train_docs, cache)
    if val_docs:
        val_ids = cached_encode(tokenizer, val_docs, cache)
    else:  # a single document: hold out its last 10 % instead
        cut = int(len(train_ids) * 0.9)
        train_ids, val_ids = train_ids[:cut], train_ids[cut:]
    if _main_process():
        print(f"data: {len(train_docs)} train docs ({len(train_ids):,} tokens), "
              f"{len(val_docs)} validation docs ({len(val_ids):,} tokens): "
              f"{', '.join(d.name for d in val_docs) or 'last 10 %'}")
    if len(val_ids) <= context + 1:
        raise TrainError(f"validation text too short ({len(val_ids)} tokens) for context {context}: add more text "
                         f"or lower --context")
    return train_docs, val_docs, train_ids, val_ids


def _cfg(args, context: int, patience: int = 0) -> TrainConfig:
    out = Path(args.out)
    return TrainConfig(out=out, context=context, patience=patience, log_file=out / "training_log.jsonl",
                       **{name: getattr(args, name) for name in CLI_FIELDS})


def _write_summary(out: Path, summary: dict, extra: dict):
    if not _main_process():
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_summary.json").write_text(json.dumps({**extra, **summary}, indent=1))


def cmd_tokenizer(args):
    train_tokenizer(args.data, args.out, args.vocab_size, args.min_frequency, args.val_fraction, args.split_seed)


def cmd_pretrain(args):
    tokenizer = load_tokenizer(args.tokenizer or args.out)
    train_docs, val_docs, train_ids, val_ids = _prepare(args, tokenizer, args.context)
    model = new_gpt2(tokenizer, args.n_layer, args.n_embd, args.n_head, args.context, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    if _main_process():
        print(f"model: GPT-2, {n_params / 1e6:.2f} M parameters")
    summary = run_training(model, tokenizer, train_ids, val_ids, _cfg(args, args.context))
    _write_summary(Path(args.out), summary, {
        "command": "pretrain", "argv": sys.argv[1:], "parameters": n_params,
        "train_documents": [d.name for d in train_docs], "validation_documents": [d.name for d in val_docs]})


def cmd_finetune(args):
    model = load_causal_lm(args.model)
    tokenizer = load_tokenizer(args.model)
    context = min(args.context or 10**9, getattr(model.config, "n_positions", 1024))
    train_docs, val_docs, train_ids, val_ids = _prepare(args, tokenizer, context)
    summary = run_training(model, tokenizer, train_ids, val_ids, _cfg(args, context, patience=args.patience))
    _write_summary(Path(args.out), summary, {"command": "finetune", "argv": sys.argv[1:], "base_model": args.model,
                                             "validation_documents": [d.name for d in val_docs]})


def cmd_evaluate(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=torch.float32)
    docs = find_documents(args.data)
    if args.max_chars:
        texts = [d.read()[: args.max_chars] for d in docs]
    else:
        texts = [d.read() for d in docs]
    result = bits_per_byte(model, tokenizer, texts, context=args.context, stride=args.stride)
    result["documents"] = [d.name for d in docs]
    print(json.dumps(result, indent=1))
    return result


def cmd_sample(args):
    import torch

    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, dtype=torch.float32).eval()
    for prompt in args.prompt:
        torch.manual_seed(args.seed)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, temperature=args.temperature, top_k=0, top_p=args.top_p,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        print(f"--- temperature {args.temperature}, top-p {args.top_p}, seed {args.seed}\n{prompt}{text}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--val-fraction", type=float, default=0.02, help="leave out the documents pretrain holds out")
    p.add_argument("--split-seed", "--seed", dest="split_seed", type=int, default=1234,
                   help="as pretrain's --split-seed")
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("pretrain", help="train a GPT-2 from scratch")
    _train_args(p, lr=1e-3, steps=5000)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --out)")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.0)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="continue training a checkpoint on your texts")
    _train_args(p, lr=1e-4, steps=1000)
    p.add_argument("--model", required=True, help="checkpoint folder or hub id (safetensors)")
    p.add_argument("--context", type=int, default=None, help="training window (default: model's context)")
    p.add_argument("--patience", type=int, default=3, help="evaluations without improvement before stopping")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="bits per byte and perplexity on text files")
    p.add_argument("--model", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--max-chars", type=int, default=None, help="evaluate only the start of each file")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="print sampled continuations of prompts (a quick look at a checkpoint)")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", nargs="+", required=True)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_sample)

    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
