"""Keep the machine's cores busy, as another tenant would: one process per core spinning on
arithmetic, until stopped or for at most ``--seconds``. Used by ``.ci/repeat --busy`` to show that the
test suite does not depend on a quiet machine.

    python benchmarks/cpu_load.py                 # every core, until Ctrl-C (at most an hour)
    python benchmarks/cpu_load.py --procs 2 --seconds 600
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import time


def spin(deadline: float) -> None:
    x = 0
    while time.monotonic() < deadline:
        for i in range(100_000):
            x = (x * 31 + i) % 1_000_003


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    p.add_argument("--seconds", type=float, default=3600, help="stop by itself after this long (default: 1 hour)")
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.seconds
    procs = [mp.Process(target=spin, args=(deadline,), daemon=True) for _ in range(max(1, args.procs))]
    for proc in procs:
        proc.start()
    print(f"cpu_load: {len(procs)} busy processes for at most {args.seconds:.0f} s (pid {os.getpid()})", flush=True)

    def stop(*_):
        for proc in procs:
            proc.terminate()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
