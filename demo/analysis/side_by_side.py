"""Samples side by side: N continuations of one prompt, each with its own seed, optionally under two
settings (the same seeds in both rows, so only the settings differ). No Gradio.

Each sample is an ordinary generation request (:class:`demo.runtime.generation.GenerationRequest`) with its
seed fixed: they all stream together through the model's batched decode loop
(:func:`demo.runtime.generation.stream_samples`), and any one re-run alone with its seed and settings gives
the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from demo.core.sampling import SETTING, SamplingParams, resolve_seed
from demo.core.validation import MAX_SEED, Setting, check_bool
from demo.runtime.generation import GenerationRequest, GenerationUpdate, validate_request

N_SAMPLES = Setting("n", label="Samples", kind="int", default=4, lo=2, hi=8, slider=(2, 8, 1),
                    help="How many continuations to generate at once (each with the next seed)")
FIRST_SEED = Setting("first_seed", label="Seed of the first sample", kind="seed", default=1,
                     help="The samples use this seed, the next one, and so on (-1 = random)")
SAMPLE_TOKENS = Setting("max_new_tokens", label="Max new tokens per sample", kind="int", default=40, lo=1, hi=256,
                        slider=(1, 128, 1), help="How many tokens each sample adds at most")
# The second row's settings: what most changes the character of a text.
SECOND_SETTINGS = ("temperature", "top_p")


@dataclass(frozen=True)
class SampleSet:
    """The samples to generate: one row per setting, one column per seed."""

    prompt: str
    max_new_tokens: int
    seeds: tuple[int, ...]
    rows: tuple[SamplingParams, ...]  # one or two settings, seeds left out

    def requests(self) -> list[GenerationRequest]:
        """Row by row, seed by seed."""
        return [GenerationRequest(self.prompt, self.max_new_tokens, replace(params, seed=seed))
                for params in self.rows for seed in self.seeds]

    def describe(self, i: int) -> dict:
        """What sample ``i`` (in :meth:`requests` order) was made with."""
        row, col = divmod(i, len(self.seeds))
        params = replace(self.rows[row], seed=self.seeds[col])
        return {"row": row, "seed": self.seeds[col], "settings": params.as_dict()}


def sample_set(prompt, n, first_seed, max_new_tokens, params: SamplingParams, compare=False,
               temperature_b=None, top_p_b=None) -> SampleSet:
    """A :class:`SampleSet` from request values, every one checked (``params`` already validated)."""
    request = validate_request(prompt, SAMPLE_TOKENS.check(max_new_tokens), params)
    n = N_SAMPLES.check(n)
    first = FIRST_SEED.check(first_seed)
    first = int(resolve_seed(replace(params, seed=first)).seed or 0)  # -1: a random first seed, shown on every sample
    seeds = tuple((first + i) % (MAX_SEED + 1) for i in range(n))
    rows = [replace(params, seed=None)]
    if check_bool("compare", compare):
        second = {"temperature": temperature_b, "top_p": top_p_b}
        rows.append(replace(params, seed=None, **{k: SETTING[k].check(v) for k, v in second.items()}))
    return SampleSet(request.prompt, request.max_new_tokens, seeds, tuple(rows))


def results(samples: SampleSet, updates: list[GenerationUpdate]) -> dict:
    """Plain data of finished (or running) samples, for the API and to re-run one alone."""
    return {
        "prompt": samples.prompt,
        "max_new_tokens": samples.max_new_tokens,
        "samples": [{**samples.describe(i), "text": u.text, "tokens": u.n_tokens, "done": u.done,
                     "stop_reason": u.stop_reason} for i, u in enumerate(updates)],
    }
