# cython: language_level=3
"""Decides how many OpenMP threads a kernel may use."""
import os

cdef extern from "cbp_omp.h" nogil:
    int omp_get_max_threads()
    int cbp_have_openmp()


def openmp_enabled():
    """Return True when the extension was compiled with OpenMP support."""
    return bool(cbp_have_openmp())


def _cpu_count():
    """Cores this process may run on (affinity masks and cgroups respected)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return max(os.cpu_count() or 1, 1)


def effective_n_threads(n_threads=None):
    """Number of threads a kernel should use.

    Parameters
    ----------
    n_threads : int or None
        ``None`` follows scikit-learn's convention: the OpenMP limit in force
        (``OMP_NUM_THREADS`` or a threadpoolctl limit) capped by the cores this
        process may use. ``-1`` means every usable core, other negative values
        count back from it (``-2`` is all but one), a positive value is used
        as it is.

    Returns
    -------
    n : int
        A positive thread count; always 1 when OpenMP is not available.
    """
    if n_threads is not None and (isinstance(n_threads, bool)
                                  or not isinstance(n_threads, int)):
        raise TypeError(f"n_threads must be None or an int, got {n_threads!r}.")
    if n_threads == 0:
        raise ValueError("n_threads=0 is invalid: use None, -1 or a positive int.")
    if not cbp_have_openmp():
        return 1
    cpus = _cpu_count()
    if n_threads is None:
        return max(min(omp_get_max_threads(), cpus), 1)
    if n_threads < 0:
        return max(cpus + 1 + n_threads, 1)
    return n_threads
