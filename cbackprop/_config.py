"""``cbackprop.show_config()``: what this installation runs on."""

import platform
import sys


def _versions():
    import numpy
    import scipy
    import sklearn
    import threadpoolctl

    from cbackprop import __version__

    return {
        "cbackprop": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "threadpoolctl": threadpoolctl.__version__,
    }


def show_config(file=None):
    """Print versions, OpenMP support and the thread pools in use.

    Parameters
    ----------
    file : file-like, default=None
        Where to print (standard output by default).

    Returns
    -------
    config : dict
        The same information: ``versions``, ``openmp`` (whether the kernels
        were built with OpenMP), ``n_threads`` (what ``n_threads=None``
        resolves to now), ``own_products`` (whether mini-batch products run
        on cbackprop's own AVX-512 kernels rather than BLAS) and
        ``threadpools`` (threadpoolctl's view of the loaded BLAS and OpenMP
        libraries with their thread counts).
    """
    from threadpoolctl import threadpool_info

    from cbackprop import _blas, _kernels  # noqa: F401  (loads the OpenMP runtime)
    from cbackprop._openmp_helpers import effective_n_threads, openmp_enabled

    config = {
        "versions": _versions(),
        "openmp": openmp_enabled(),
        "n_threads": effective_n_threads(None),
        "own_products": _blas.own_gemm_enabled(),
        "threadpools": threadpool_info(),
    }
    out = file or sys.stdout
    print("cbackprop configuration", file=out)
    print("\nversions:", file=out)
    for name, version in config["versions"].items():
        print(f"  {name:<14} {version}", file=out)
    print(f"\nOpenMP in the kernels: {'yes' if config['openmp'] else 'NO'}", file=out)
    print(f"threads used by default (n_threads=None): {config['n_threads']}", file=out)
    if config["own_products"]:
        products = "cbackprop's own AVX-512 kernels (CBACKPROP_OWN_GEMM=0: BLAS)"
    elif _blas.own_gemm_ready():
        products = "BLAS (own AVX-512 kernels turned off)"
    else:
        products = "BLAS (no AVX-512 on this CPU, or a build without it)"
    print(f"matrix products of mini-batches: {products}", file=out)
    print("\nthread pools (threadpoolctl):", file=out)
    for pool in config["threadpools"]:
        extra = f", {pool['internal_api']}" if pool.get("internal_api") else ""
        print(f"  {pool['user_api']:<7} {pool.get('prefix', '')}{extra}, "
              f"version {pool.get('version')}, {pool['num_threads']} threads\n"
              f"          {pool['filepath']}", file=out)
    return config
