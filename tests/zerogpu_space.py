"""Run the app as a ZeroGPU Space would, under the real ``spaces`` package, on a machine without a GPU.

    SPACES_ZERO_GPU=true SPACES_ZERO_DEVICE_API_URL=http://… python tests/zerogpu_space.py [app.py's flags]

Only what a CPU-only torch build lacks is stood in for, and the package's device API is the caller's
(tests/test_zerogpu_spaces.py serves one):

* before ``spaces`` is imported: the CUDA version string and the two CUDA hooks the package reads at
  import (a CPU build has neither), and bitsandbytes imported first, so that it takes its CPU backend
  (after the package's import it would look for its CUDA library, which a CPU machine lacks);
* in each forked worker: the package's ``init`` (which attaches the booked GPU) does nothing, and its
  ``move`` (which copies the emulated weights, packed on disk or still in memory, onto the GPU) puts
  them in the worker's memory instead. Everything else is the package's own code: the emulation in the
  app's main thread, packing at launch, scheduling and releasing through the device API, the forked
  workers, their reuse, and how arguments, results and errors travel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _no_cuda(*args, **kwargs):
    raise RuntimeError("this torch build has no CUDA")


def _not_in_bad_fork() -> bool:
    return False


def before_import() -> None:
    torch.version.cuda = torch.version.cuda or "12.8"  # type: ignore[misc]
    if not hasattr(torch._C, "_cuda_init"):
        torch._C._cuda_init = _no_cuda  # type: ignore[attr-defined]
    torch.cuda._is_in_bad_fork = _not_in_bad_fork  # a CPU build's is a lambda, which cannot be pickled
    import bitsandbytes  # noqa: F401


def move_to_worker_memory(callback=None) -> None:
    """The package's ``move`` with the worker's memory for the GPU: each emulated tensor gets its data,
    from memory (loaded after the packing) or from the pack file (the layout ``pack_tensors`` writes:
    page-aligned tensors, batches first, then the big ones)."""
    from spaces.zero.torch import patching

    for fake, original in patching.cuda_aliases.items():
        if original is not None:
            fake.data = original
    for pack in patching.tensor_packs:
        data = torch.frombuffer(bytearray(Path(pack.path()).read_bytes()), dtype=torch.uint8)
        offset = 0
        for tensor, size, aligned_size in [*[t for batch in pack.batches for t in batch], *pack.big_tensors]:
            storage = data[offset:offset + size].clone().untyped_storage()
            offset += aligned_size
            moved = torch.tensor([], dtype=tensor.dtype).set_(storage, 0, tensor.shape, tensor.stride())
            for fake in pack.fakes[tensor]:
                fake.data = moved


def after_import() -> None:
    import spaces.zero.torch as zero_torch

    zero_torch.init = lambda nvidia_uuid: None
    zero_torch.move = move_to_worker_memory


def main(argv: list[str]) -> int | None:
    sys.path.insert(0, str(ROOT))
    before_import()
    import spaces  # noqa: F401  (in the main thread, as app.py's create_app will: this is where it emulates)

    after_import()
    import app

    return app.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
