"""How fast each core of this machine is, and what that means for a split.

Usage::

    python benches/cores.py [--size 1536] [--rounds 6]

Each round times, in fresh processes, the same one-thread float32 matrix
product (numpy, BLAS held to one thread) pinned to each logical CPU in turn,
then the product on all CPUs at once (BLAS's own static split), then one
pinned one-thread product per CPU, all at the same time.  Linux only (it
pins with ``os.sched_setaffinity``).

On a shared cloud VM the vCPUs need not be equally fast: the host runs them
on cores whose clocks and neighbours differ, and which is the slow one
changes over minutes.  A split of one piece of work into equal static
shares then waits for the slowest CPU, so its speed-up over one thread is
at most ``n * t_fast / t_slow`` when the one-thread run had the fast CPU,
and more than ``n`` when it had the slow one, while independent work gets
the sum of the CPUs' speeds.  ``benches/compare.py``'s thread-scaling row
measures a fit's one-thread time on whichever CPU the scheduler picked;
this shows how far apart the CPUs were at the time.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

_CHILD = r"""
import os, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
cpu, n, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
a = np.random.RandomState(0).rand(n, n).astype(np.float32)
with threadpool_limits(threads):
    a @ a
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    print(time.perf_counter() - t0)
"""


def _run(jobs, size):
    """Start one child per (cpu, threads) job, release them together, and
    return their times."""
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(cpu), str(size),
                               str(threads)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
             for cpu, threads in jobs]
    for p in procs:
        p.stdout.readline()
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
    return [float(p.communicate()[0]) for p in procs]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("cores.py pins processes to CPUs: Linux only")
    cpus = sorted(os.sched_getaffinity(0))
    n = len(cpus)
    print(f"float32 {args.size}^2 products x 5, {n} CPUs {cpus}; seconds")
    rows = []
    for r in range(args.rounds):
        alone = [_run([(c, 1)], args.size)[0] for c in cpus]
        split = _run([(-1, n)], args.size)[0]
        together = _run([(c, 1) for c in cpus], args.size)
        fast, slow = min(alone), max(alone)
        rows.append((fast, slow, split, together))
        print(f"round {r + 1}: one thread on each CPU "
              + " ".join(f"{t:.3f}" for t in alone)
              + f" (slowest {slow / fast:.2f}x the fastest); {n}-thread product "
              f"{split:.3f}: {fast / split:.2f}x the fastest CPU alone, "
              f"{slow / split:.2f}x the slowest; one per CPU at once "
              + " ".join(f"{t:.3f}" for t in together)
              + f": {sum(fast / t for t in together):.2f}x the fastest CPU's "
              "throughput")
    fast, slow, split, _ = (np.array(v) for v in zip(*rows))
    print(f"median: slowest CPU {np.median(slow / fast):.2f}x the fastest; "
          f"{n}-thread product {np.median(fast / split):.2f}x the fastest CPU "
          f"alone, {np.median(slow / split):.2f}x the slowest")


if __name__ == "__main__":
    main()
