"""MLPClassifier and MLPRegressor: scikit-learn's MLP API over cbackprop's kernels.

Everything that is not arithmetic happens here: parameter and data
validation, dtype choice, label binarisation, weight initialisation (the same
draws as scikit-learn), shuffling, the early-stopping split and the stopping
rules.  Each epoch, and each lbfgs function evaluation, is one call into a
``nogil`` kernel of :mod:`cbackprop._kernels`; plain mini-batch training
makes one call for all its epochs, the kernel drawing the same shuffles and
applying the same stopping rule (see ``_BaseMLP._epochs_in_kernel``).
"""

import os
import threading
import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import scipy.optimize
import scipy.sparse as sp
import threadpoolctl
from scipy.special import log_expit, log_softmax
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController

from cbackprop import _blas, _kernels
from cbackprop._openmp_helpers import effective_n_threads
from cbackprop._progress import EpochProgress

HIDDEN_ACTIVATIONS = {"identity": 0, "logistic": 1, "tanh": 2, "relu": 3,
                      "leaky_relu": 4, "elu": 5, "lecun_tanh": 6, "softplus": 7,
                      "maxout": 8}
OUTPUT_ACTIVATIONS = {"identity": 0, "logistic": 1, "softmax": 2, "exp": 3}
LOSSES = {"squared_error": 0, "log_loss": 1, "binary_log_loss": 2, "poisson": 3,
          "absolute_error": 4, "huber": 5, "hinge": 6, "multiclass_hinge": 7}
INITS = ("glorot_uniform", "lecun", "he", "nguyen_widrow")
_STOCHASTIC_SOLVERS = ("sgd", "adam")
_STATUS_NONFINITE = 1
_STATUS_INTERRUPTED = 2

# Bumped whenever the pickled state of the estimators changes meaning; a
# model saved under another format refuses to load (see __setstate__).
_PERSISTENCE_FORMAT = 2

def _cbackprop_version():
    from cbackprop import __version__

    return __version__


# Rows per thread-private block when predicting.
_PREDICT_ROWS = 256

# Below this share of non-zeros, the first layer reads only the non-zero
# inputs instead of calling BLAS on the dense rows: per sample in online
# mode, and in mini-batch / full-batch mode from a CSR copy (whose products
# are bound by cache bandwidth rather than arithmetic, so they need a lower
# density to win).  Crossovers measured with float32 on MNIST made denser
# with random non-zeros, 784-100-10, one thread: python benches/density.py.
_SKIP_ZEROS_DENSITY = {"online": 0.4, "batch": 0.25}


# A zero-heavy dense X is converted once per fit to CSR (its non-zeros never
# change between epochs) when the copy is this small.  Otherwise online mode
# finds each row's non-zeros again, and batch mode stays on BLAS, so memory
# stays at one batch-sized buffer.  Beyond 64 MiB the copy may take at most
# 5% of X's size: a fit's extra memory stays under 10% of X.
_CSR_CACHE_BYTES = 64 * 2**20
_CSR_CACHE_SHARE = 0.05


class _CsrMemory:
    """The memory of the last CSR copy of a dense X, lent to the next fit.

    A fresh array's pages fault on their first write, and numpy asks for 2
    MB pages above 4 MB, whose faults clear (and may first have to free) 2
    MB each: filling the copy of 8,000 MNIST rows (two 4.7 MB arrays) took
    3-12 ms a fit in fresh memory against 1-2 ms in reused memory.  Fits in
    a loop (a grid search, cross-validation, warm restarts) reuse it: adam
    784-512-256-10, 2-epoch fits on two threads, 1.028x and 1.043x (paired
    medians of 80 rounds).  At most ``keep_bytes`` stay between fits; a
    concurrent fit allocates its own.  Only workspaces that give the memory
    back borrow it (the stochastic solvers' training workspace); the
    full-batch objectives of lbfgs, rprop, gtol and validation_data keep
    their copies for as long as their closures live and allocate their own.
    """

    def __init__(self, keep_bytes):
        self.keep_bytes = keep_bytes
        self._held = None
        self._lock = threading.Lock()

    def take(self, nnz, dtype):
        """``(values, indices)`` arrays of at least ``nnz`` elements (of
        ``dtype`` and int32), uninitialised: the held pair when it is large
        enough and of that dtype, else new ones."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None and held[0].dtype == dtype and held[0].shape[0] >= nnz:
            return held
        return np.empty(nnz, dtype=dtype), np.empty(nnz, dtype=np.int32)

    def give(self, pair):
        """Hold ``pair`` (from :meth:`take`) for the next fit when small
        enough; no array made from it may be used afterwards."""
        if pair[0].nbytes + pair[1].nbytes <= self.keep_bytes:
            with self._lock:
                self._held = pair

    def held_bytes(self):
        """Bytes held for the next fit."""
        with self._lock:
            return 0 if self._held is None else sum(a.nbytes for a in self._held)


# The CSR copy's memory kept between fits: at most 32 MiB.
_CSR_MEMORY = _CsrMemory(keep_bytes=32 * 2**20)

# Weight-gradient blocks per layer below which output columns are cut too,
# and the narrowest piece (see _Workspace._grad_blocks).
_GRAD_MIN_BLOCKS = 8
_GRAD_MIN_COLS = 8

# Smallest update block (see _Workspace._update_blocks).
_UPDATE_MIN_BLOCK = 1024

# Chunk-local gradients (see _Workspace): a chunk's gradient of at most this
# many bytes, from chunks of at least this many rows.  Each chunk writes a
# whole gradient and the batch sums them, work that pays when the copies
# stay in the cache and the chunks are long: digits-sized 64-100-10 (60 KB)
# gained 1.03-1.10x at batch 200 (8,000 dense rows, 2 epochs, 1 and 2
# threads) while 784-100-10 in float32 (318 KB) lost 0.87-0.93x at batch
# 100 and 784-512-256-10 lost 0.96x at batch 200 on two threads; chunks of
# 16 rows (batch 32) lost 0.75-0.94x.  Outside these limits the gradient is
# made block by block over the whole batch.
_CHUNK_GRAD_BYTES = 128 * 1024
_CHUNK_GRAD_MIN_ROWS = 32


# Hidden-layer rows of the kernels' block buffers are padded to a multiple
# of this many values: a cache line of float32, two of float64.
_ROW_ALIGN = _kernels.CACHE_LINE_BYTES // 4


def _aligned_empty(n, dtype):
    """An uninitialised 1-D array whose first element starts a cache line.
    The vector loops load a line (64 bytes) at a time; from numpy's usual
    16-byte-aligned buffers every such load of a weight row straddles two
    lines, which halved the sparse first layer's rate in a C benchmark (45
    -> 25 GFLOP/s, 784-512 on MNIST rows)."""
    dtype = np.dtype(dtype)
    line = _kernels.CACHE_LINE_BYTES
    buf = np.empty(n + line // dtype.itemsize, dtype=dtype)
    off = (-buf.ctypes.data % line) // dtype.itemsize
    return buf[off:off + n]


def _aligned_zeros(n, dtype):
    """Zeros, aligned as :func:`_aligned_empty`."""
    out = _aligned_empty(n, dtype)
    out[:] = 0
    return out


def _zero_columns_likely(X):
    """Whether a few hundred rows spread over the dense ``X`` show enough
    mostly-zero columns (non-zero in at most 5% of the rows, which a
    100-row chunk then often has all zero) for the chunks' gathers to leave
    some out (see _kernels._gather_cols).  Otherwise no per-row column masks
    are made (a pass over X, and 1/64 of its size in float64)."""
    if X.shape[0] == 0 or X.shape[1] == 0:
        return False
    probe = X[::max(1, X.shape[0] // 256)]
    rate = np.count_nonzero(probe, axis=0) / probe.shape[0]
    need = max(1, X.shape[1] // _kernels.ZERO_COLS_FRACTION)
    return int(np.count_nonzero(rate <= 0.05)) >= need


def _one_hot_classes(Y):
    """Each row's class (int32) when every row of the target matrix ``Y``
    is one-hot (one 1, zeros elsewhere), else None: the kernels then take a
    softmax layer's loss and deltas from the class alone instead of reading
    the target rows (see _kernels.run_epoch's ``ycls``)."""
    if Y.ndim != 2 or Y.shape[1] < 2 or Y.shape[0] == 0:
        return None
    cls = np.argmax(Y, axis=1).astype(np.int32)
    one_hot = np.zeros_like(Y)
    one_hot[np.arange(Y.shape[0]), cls] = 1
    return cls if np.array_equal(Y, one_hot) else None


def _first_layer_copy(spec, dtype, sparse):
    """Room for the kernels' cache-aligned copy of the first layer's weights
    (empty when the input is not read sparsely or no copy is needed)."""
    n = _kernels.w0_copy_size(int(spec["units"][0]), int(spec["zw"][1]),
                              np.dtype(dtype).itemsize) if sparse else 0
    return _aligned_empty(n, dtype)


def _csr_copy_bytes(nnz, itemsize):
    """Size of the CSR copy of a dense X with ``nnz`` non-zeros (values and
    32-bit column indices)."""
    return nnz * (itemsize + np.dtype(np.int32).itemsize)


def _csr_copy_budget(X):
    """Most memory the CSR copy (and what it brings) of dense ``X`` may take."""
    return max(_CSR_CACHE_BYTES, _CSR_CACHE_SHARE * X.nbytes)


def _kernel_input(X, dtype, mode=None, n_threads=1, defer=False, csr_memory=None):
    """``(data, indices, indptr, skip_zeros, row_nnz)``: X as the kernels read it.

    Dense X stays as it is when already C-contiguous in ``dtype`` (no copy);
    sparse X becomes CSR with 32-bit column indices (scipy's own, not
    copied).  ``row_nnz`` counts the non-zeros of each row when the first
    layer works on non-zeros only.

    ``mode`` is ``"online"`` or ``"batch"`` when training (``None``:
    prediction, where dense X always goes to BLAS).  A dense X whose share of
    non-zeros is below ``_SKIP_ZEROS_DENSITY[mode]`` becomes CSR when the copy
    fits the cache budget; a larger one is compacted row by row in online
    mode and left to BLAS in batch mode.  ``n_threads`` fill the copy.

    ``defer`` (online mode): when a sample of rows is clearly sparse, scan
    rows for now and leave the full count and the copy to a later call; a
    single pass over the data is cheaper than making the copy.

    ``csr_memory`` (a list, optional): a CSR copy of dense X is written to
    the memory of :data:`_CSR_MEMORY`, whose arrays are appended to the
    list, to be given back when the copy is no longer used.
    """
    if not sp.issparse(X):
        X = np.ascontiguousarray(X, dtype=dtype)
        if mode is None or X.size == 0:
            return X, None, None, False, None
        threshold = _SKIP_ZEROS_DENSITY[mode]
        # A cheap look at a few rows first: dense data (the common case)
        # is not scanned in full.
        probe = X[::max(1, X.shape[0] // 256)]
        probe_nnz = np.count_nonzero(probe)
        if probe_nnz >= 1.5 * threshold * probe.size:
            return X, None, None, False, None
        if defer and mode == "online" and probe_nnz < threshold * probe.size:
            return X, None, None, True, None
        row_nnz = _kernels.row_nonzeros(X, n_threads)
        total_nnz = int(row_nnz.sum())
        if total_nnz >= threshold * X.size:
            return X, None, None, False, None
        if _csr_copy_bytes(total_nnz, X.itemsize) > _csr_copy_budget(X):
            if mode == "batch":
                return X, None, None, False, None
            return X, None, None, True, row_nnz
        if csr_memory is None:
            data, ind, ptr = _kernels.dense_to_csr(X, row_nnz, n_threads)
        else:
            pair = _CSR_MEMORY.take(max(total_nnz, 1), X.dtype)
            csr_memory.append(pair)
            data, ind, ptr = _kernels.dense_to_csr(X, row_nnz, n_threads, *pair)
        return data, ind, ptr, False, row_nnz
    X = sp.csr_matrix(X, dtype=dtype)
    if X.shape[1] > np.iinfo(np.int32).max:
        raise ValueError(
            f"X has {X.shape[1]} features; cbackprop indexes input features with "
            "32-bit integers (at most 2147483647). Reduce the number of features, "
            "for example with sklearn.feature_selection or a hashing vectorizer "
            "with fewer features.")
    if mode == "online" and not X.has_canonical_format:
        # Online mode walks each row once in column order.
        X = X.copy()
        X.sum_duplicates()
    return (np.ascontiguousarray(X.data, dtype=dtype),
            np.ascontiguousarray(X.indices, dtype=np.int32),
            np.ascontiguousarray(X.indptr, dtype=np.intp), False, np.diff(X.indptr))


# Values drawn per call of _draw_uniform: a float64 temporary of 256 KB.
_DRAW_CHUNK = 1 << 15


def _draw_uniform(rng, low, high, out):
    """Fill the 1-D ``out`` with ``rng.uniform(low, high, out.size)``, in
    pieces: the legacy generator yields the same values in the same order
    however the draws are split, without a float64 array of the whole
    layer (3 MB and ~800 page faults for MNIST's 784 x 512)."""
    for i in range(0, out.shape[0], _DRAW_CHUNK):
        piece = out[i:i + _DRAW_CHUNK]
        piece[:] = rng.uniform(low, high, piece.shape[0])


# Whether plain stochastic training may run all its epochs in one kernel
# call (tests switch it off to compare with the epoch-by-epoch loop).
_EPOCHS_IN_KERNEL = True


def _validate(est, X, y="no_validation", **kwargs):
    """scikit-learn's ``validate_data``, with the check that X holds no NaN
    or infinity made by the kernels on all cores (numpy's runs on one: 2 ms
    of every fit on 8,000 MNIST rows).  Skipped, as there, under
    ``sklearn.set_config(assume_finite=True)``; when it fails, scikit-learn's
    own check runs to raise its error."""
    out = validate_data(est, X, y, ensure_all_finite=False, **kwargs)
    Xv = out if isinstance(y, str) and y == "no_validation" else out[0]
    if not get_config()["assume_finite"]:
        data = Xv.data if sp.issparse(Xv) else Xv
        if not _kernels.all_finite(np.ravel(data, order="K"), est._n_threads()):
            check_array(Xv, accept_sparse=True, dtype=None, ensure_2d=False,
                        ensure_all_finite=True, estimator=est, input_name="X")
            raise ValueError("Input X contains NaN or infinity.")
    return out


class _Workspace:
    """Work buffers of one fit (or one objective), allocated once.

    ``cap`` is the number of rows a kernel pass holds: the batch size for
    stochastic solvers, at most ``SUPER_BLOCK_ROWS`` for full-batch passes.
    ``spec`` is the network description of :meth:`_BaseMLP._net_spec`.
    """

    def __init__(self, X, dtype, spec, cap, n_threads, online=False, full_pass=False,
                 borrow=False):
        # borrow: a CSR copy of X goes to memory lent by _CSR_MEMORY, which
        # the owner gives back with release() when the fit ends.
        self._csr_memory = [] if borrow else None
        self.data, self.ind, self.ptr, self.skip_zeros, row_nnz = _kernel_input(
            X, dtype, "online" if online else "batch", n_threads, defer=online,
            csr_memory=self._csr_memory)
        # Online mode on zero-heavy dense X scans rows in the first epoch;
        # the CSR copy is made only if a second one follows (settle_input).
        self._deferred = (X, dtype) if online and self.skip_zeros else None
        self.n_features = X.shape[1]
        n_params = spec["n_params"]
        total = int(np.sum(spec["stride"][1:]))
        self.cap = cap = max(1, int(cap))
        # Zeros: the activation functions also run over the rows' padding
        # (see _row_strides), which must hold finite values.
        self.acts = _aligned_zeros(cap * total, dtype)
        self.deltas = _aligned_zeros(cap * total, dtype)
        # Dropout's per-unit gates (mask times f'(z)) share the layout.
        self.gates = np.empty(cap * total if spec["dropout"] > 0 else 1, dtype=dtype)
        dense_blas = self.ind is None and not self.skip_zeros
        self.xbuf = _aligned_empty(cap * self.n_features if dense_blas else 1, dtype)
        self.grad = _aligned_empty(n_params, dtype)
        self.ublocks = self._update_blocks(spec)
        n_ublocks = self.ublocks.shape[0] // _kernels.UPDATE_BLOCK_FIELDS
        self.gblocks = self._grad_blocks(spec)
        # Per-row-chunk losses and weights, per-update-block sums, and the
        # penalty of every gradient task when the step is made in the
        # gradient pass (see _kernels.Fuse).
        n_gtasks = self.gblocks.shape[0] // _kernels.GRAD_BLOCK_FIELDS + len(
            spec["units"]) - 1
        self.dwork = np.empty(max(2 * cap + 2 * n_ublocks + n_gtasks, 1))
        self.iwork = np.empty(max(2 * self.n_features, 1), dtype=np.intp)
        self.n_threads = n_threads
        # Per-fit state of the kernels' thread tuner (see run_epoch).
        self.tuner = np.zeros(_kernels.TUNER_STATE_SIZE)
        # Non-zeros a block of ``cap`` rows can hold: the ``cap`` fullest rows.
        if row_nnz is None:
            self.nnz_cap = 0
        else:
            self.nnz_cap = int(np.sum(np.sort(row_nnz)[-cap:]))
        self.n_keep = 0
        if full_pass and self.ind is not None:
            self._keep_sorted_blocks(X, cap, dtype)
        n_int, n_float = _kernels.sparse_buffer_sizes(
            cap, self.nnz_cap, self.n_features, self.n_keep)
        # n_keep > 0: the kernels read the zeroed "kept" flags.
        self.spi = (np.zeros if self.n_keep else np.empty)(n_int, dtype=np.intp)
        self.spv = np.empty(max(n_float, 1), dtype=dtype)
        # The sparse forward pass's cache-aligned copy of the first layer
        # (see _kernels.w0_copy_size); online training updates the weights
        # sample by sample and reads them in place.
        self.w0 = _first_layer_copy(spec, dtype, self.ind is not None and not online)
        # The backward pass's transposed copies of narrow layers (see
        # _kernels.WT_MAX_OUT); online training has no backward product.
        self.wt = np.empty(0 if online else _kernels.wt_copy_size(spec["units"],
                                                                   spec["zw"]),
                           dtype=dtype)
        # Mini-batches of dense input make the gradient chunk by chunk, each
        # from the rows its thread just ran (see _kernels._chunk_grad), when
        # the per-chunk copies stay small.  The choice depends on shapes only,
        # so the weights do not depend on the thread count.
        n_pg = 0
        if dense_blas and not online and not full_pass \
                and n_params * np.dtype(dtype).itemsize <= _CHUNK_GRAD_BYTES \
                and _kernels.chunk_rows(cap) >= _CHUNK_GRAD_MIN_ROWS:
            n_pg = _kernels.chunk_grad_size(cap, n_params, np.dtype(dtype).itemsize)
        self.pgrad = _aligned_empty(n_pg, dtype)
        # With chunk-local gradients on our own products, each chunk's rows
        # are gathered without the columns that are zero in all of them (see
        # _kernels._gather_cols): room for the chunks' lists, and which
        # columns of each row are not zero.
        self.cols = _aligned_empty(0, np.int32)
        self.rowmask = None
        if n_pg and _blas.own_gemm_enabled() and _zero_columns_likely(self.data):
            self.cols = _aligned_empty(_kernels.cols_size(cap, self.n_features), np.int32)
            self.rowmask = _kernels.row_masks(self.data, n_threads)
        # One wide hidden layer on dense mini-batches: the hidden units'
        # blocks of the unit-split batches (see _kernels._split_batch; the
        # kernel also falls back for clipping and batches of several
        # passes).  Shapes and dtype only, so the weights do not depend on
        # the thread count.
        units = spec["units"]
        self.hsplit = np.empty(0, dtype=np.intp)
        if not online:
            self.hsplit = _kernels.split_blocks(spec, not dense_blas,
                                                np.dtype(dtype).itemsize)
        # Zeros: the blocks' padding is stepped along and must stay zero.
        self.hscratch = np.zeros(
            _kernels.split_scratch_size(self.hsplit, int(units[0]), int(units[-1]),
                                        cap, np.dtype(dtype).itemsize), dtype=dtype)

    def _keep_sorted_blocks(self, X, cap, dtype):
        """Full passes (full batch, lbfgs, rprop) over CSR data: keep every
        block's by-feature copy (see run_epoch's ``n_keep``) when it fits the
        same budget as the CSR copy of a dense X, that copy included."""
        nnz = int(self.ptr[-1] - self.ptr[0])
        n_keep = -(-(len(self.ptr) - 1) // cap)
        itemsize = np.dtype(dtype).itemsize
        n_int, n_float = _kernels.sparse_buffer_sizes(cap, nnz, self.n_features,
                                                      n_keep)
        need = n_int * np.dtype(np.intp).itemsize + n_float * itemsize
        if not sp.issparse(X):
            # The CSR copy of a dense X counts against the budget too.
            need += _csr_copy_bytes(nnz, itemsize)
            budget = _csr_copy_budget(X)
        else:
            budget = _CSR_CACHE_BYTES
        if need <= budget:
            self.n_keep = n_keep
            self.nnz_cap = nnz

    def settle_input(self):
        """Before a second pass over X: take the CSR copy that
        :func:`_kernel_input` makes when it fits the budget (the per-row
        scan stays otherwise)."""
        if self._deferred is None:
            return
        X, dtype = self._deferred
        self._deferred = None
        data, ind, ptr, _, _ = _kernel_input(X, dtype, "online", self.n_threads,
                                             csr_memory=self._csr_memory)
        if ind is not None:
            self.data, self.ind, self.ptr, self.skip_zeros = data, ind, ptr, False

    def release(self):
        """At the end of a fit: give borrowed CSR memory back for the next
        one.  The workspace's input arrays are unusable afterwards."""
        self.data = self.ind = self.ptr = None
        for pair in self._csr_memory or ():
            _CSR_MEMORY.give(pair)
        self._csr_memory = None

    @staticmethod
    def _grad_blocks(spec):
        """(layer, first unit, end unit, first column, end column) of every
        weight-gradient block.

        Input units go in steps of ``GRAD_BLOCK_ROWS``.  A layer with fewer
        than ``_GRAD_MIN_BLOCKS`` such steps (load_digits' 64 inputs) also has
        its output columns cut, in pieces of at least ``_GRAD_MIN_COLS`` that
        start at multiples of 8, so that its gradient is still shared among
        threads.  The cut depends on the shapes only, never on the thread
        count, so the weights do not either.
        """
        step = _kernels.GRAD_BLOCK_ROWS
        units, zw = spec["units"], spec["zw"]
        blocks = []
        for layer in range(len(units) - 1):
            n_in = int(units[layer])
            m = int(zw[layer + 1])
            n_i = -(-n_in // step)
            n_j = max(1, min(-(-_GRAD_MIN_BLOCKS // n_i), m // _GRAD_MIN_COLS))
            cuts = [0] + [(k * m // n_j) // 8 * 8 for k in range(1, n_j)] + [m]
            for i0 in range(0, n_in, step):
                for j0, j1 in zip(cuts[:-1], cuts[1:]):
                    blocks.append((layer, i0, min(i0 + step, n_in), j0, j1))
        return np.ascontiguousarray(np.array(blocks, dtype=np.intp).ravel())

    @staticmethod
    def _update_blocks(spec):
        """(start, end, layer, is_coef) of every parameter-update block: each
        layer's weights, then each layer's biases, cut into pieces of at most
        ``UPDATE_BLOCK_SIZE``, so a block has one learning-rate factor.

        Smaller networks get pieces of about a sixteenth of their parameters
        (at least ``_UPDATE_MIN_BLOCK``, in whole cache lines), so that
        threads share their step too.  Like the gradient blocks, the cut
        depends on the shapes only.
        """
        n_params = int(spec["n_params"])
        step = min(_kernels.UPDATE_BLOCK_SIZE,
                   max(_UPDATE_MIN_BLOCK, -(-n_params // 16 // 16) * 16))
        units, zw = spec["units"], spec["zw"]
        segments = []
        for layer in range(len(units) - 1):
            start = int(spec["coef_off"][layer])
            segments.append((start, start + int(units[layer] * zw[layer + 1]),
                             layer, 1))
        for layer in range(len(units) - 1):
            start = int(spec["icpt_off"][layer])
            segments.append((start, start + int(zw[layer + 1]), layer, 0))
        blocks = [(k0, min(k0 + step, end), layer, coef)
                  for start, end, layer, coef in segments
                  for k0 in range(start, end, step)]
        return np.ascontiguousarray(np.array(blocks, dtype=np.intp).ravel())


_BLAS_LOCK = threading.Lock()
_BLAS_STATE = {"controller": None, "depth": 0, "limiter": None}


@contextmanager
def _blas_single_thread():
    """Hold BLAS to one thread while the kernels run.

    Our own OpenMP threads are the one level of parallelism (no
    oversubscription), and a BLAS that splits its products by thread count
    would make results depend on it.  The limit is process-wide, so it is
    reference-counted: concurrent fits and predictions from several Python
    threads share one limit, set by the first and lifted by the last.  The
    threadpoolctl controller is built once (scanning the loaded libraries
    costs milliseconds).
    """
    with _BLAS_LOCK:
        if _BLAS_STATE["depth"] == 0:
            if _BLAS_STATE["controller"] is None:
                _BLAS_STATE["controller"] = ThreadpoolController()
            _release_openblas_control()
            _BLAS_STATE["limiter"] = _BLAS_STATE["controller"].limit(
                limits=1, user_api="blas")
        _BLAS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["depth"] -= 1
            if _BLAS_STATE["depth"] == 0:
                _release_openblas_control()
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None
                _release_openblas_control()


def _release_openblas_control():
    """Let the calling thread set OpenBLAS's thread count.

    threadpoolctl 3.8 lets only one Python thread (the first to set a
    limit, for good unless it set it in a ``with`` block) change the
    process-wide count of a pthreads OpenBLAS; from any other thread the
    change is silently skipped.  Our limit is a plain call, so after a
    first fit in the main thread every fit in another thread (a thread
    pool, a server's worker) kept OpenBLAS's own threads: products
    threaded inside our OpenMP regions, and two concurrent one-thread fits
    of MNIST 784-512-256-10 took 2.46-2.57 s against 0.69 s for one alone
    (0.72-0.73 s once each fit's thread may set the limit).  Setting and
    lifting our limit happens under _BLAS_LOCK, so the thread doing it may take
    control, and gives it up after.  Older threadpoolctl has no such
    control: nothing to do.
    """
    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


def _check_scalar(name, value, kind, low=None, high=None, closed="left",
                  allow=()):
    """Raise a TypeError or ValueError naming ``name`` unless ``value`` fits."""
    if value in allow and not isinstance(value, bool):
        return
    if kind is Integral:
        ok_type = isinstance(value, Integral) and not isinstance(value, bool)
        tname = "an int"
    elif kind is Real:
        ok_type = isinstance(value, Real) and not isinstance(value, bool)
        tname = "a float"
    else:  # bool
        ok_type = isinstance(value, (bool, np.bool_))
        tname = "a bool"
    if not ok_type:
        raise TypeError(f"The '{name}' parameter must be {tname}, got {value!r}.")
    if kind is bool:
        return
    lo_ok = low is None or (value >= low if closed in ("left", "both") else value > low)
    hi_ok = high is None or (
        value <= high if closed in ("right", "both") else value < high
    )
    if not (lo_ok and hi_ok):
        left = "[" if closed in ("left", "both") else "("
        right = "]" if closed in ("right", "both") else ")"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(
            f"The '{name}' parameter must be in the range {left}{lo}, {hi}{right}, "
            f"got {value!r}."
        )


def _check_option(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise ValueError(
            f"The '{name}' parameter must be one of {sorted(options)}, got {value!r}."
        )


class _BaseMLP(BaseEstimator):
    """Shared machinery of :class:`MLPClassifier` and :class:`MLPRegressor`."""

    def __init__(
        self,
        hidden_layer_sizes,
        activation,
        solver,
        alpha,
        batch_size,
        learning_rate,
        learning_rate_init,
        power_t,
        max_iter,
        loss,
        shuffle,
        random_state,
        tol,
        verbose,
        warm_start,
        momentum,
        nesterovs_momentum,
        early_stopping,
        validation_fraction,
        beta_1,
        beta_2,
        epsilon,
        n_iter_no_change,
        max_fun,
        n_threads=None,
        leaky_relu_slope=0.01,
        l1=0.0,
        dropout=0.0,
        max_grad_norm=None,
        init="glorot_uniform",
        layer_lr="uniform",
        maxout_pieces=2,
        gtol=None,
        restore_best_weights=False,
        rprop_eta_minus=0.5,
        rprop_eta_plus=1.2,
        rprop_step_init=0.1,
        rprop_step_min=1e-6,
        rprop_step_max=50.0,
    ):
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.n_threads = n_threads
        self.leaky_relu_slope = leaky_relu_slope
        self.l1 = l1
        self.dropout = dropout
        self.max_grad_norm = max_grad_norm
        self.init = init
        self.layer_lr = layer_lr
        self.maxout_pieces = maxout_pieces
        self.gtol = gtol
        self.restore_best_weights = restore_best_weights
        self.rprop_eta_minus = rprop_eta_minus
        self.rprop_eta_plus = rprop_eta_plus
        self.rprop_step_init = rprop_step_init
        self.rprop_step_min = rprop_step_min
        self.rprop_step_max = rprop_step_max

    # ------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------
    def _validate_params(self):
        if isinstance(self.activation, str):
            _check_option("activation", self.activation, HIDDEN_ACTIVATIONS)
        else:
            try:
                names = list(self.activation)
            except TypeError:
                raise ValueError(
                    "The 'activation' parameter must be a string or a list of "
                    f"strings (one per hidden layer), got {self.activation!r}."
                ) from None
            for name in names:
                _check_option("activation", name, HIDDEN_ACTIVATIONS)
        _check_option("solver", self.solver, {"lbfgs", "sgd", "adam", "rprop"})
        _check_option("learning_rate", self.learning_rate,
                      {"constant", "invscaling", "adaptive"})
        _check_scalar("alpha", self.alpha, Real, 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_scalar("batch_size", self.batch_size, Integral, 1)
        _check_scalar("learning_rate_init", self.learning_rate_init, Real, 0,
                      closed="neither")
        _check_scalar("power_t", self.power_t, Real, 0)
        _check_scalar("max_iter", self.max_iter, Integral, 1)
        _check_scalar("shuffle", self.shuffle, bool)
        _check_scalar("tol", self.tol, Real, 0)
        _check_scalar("warm_start", self.warm_start, bool)
        _check_scalar("momentum", self.momentum, Real, 0, 1, closed="both")
        _check_scalar("nesterovs_momentum", self.nesterovs_momentum, bool)
        _check_scalar("early_stopping", self.early_stopping, bool)
        _check_scalar("validation_fraction", self.validation_fraction, Real, 0, 1)
        _check_scalar("beta_1", self.beta_1, Real, 0, 1)
        _check_scalar("beta_2", self.beta_2, Real, 0, 1)
        _check_scalar("epsilon", self.epsilon, Real, 0, closed="neither")
        _check_scalar("n_iter_no_change", self.n_iter_no_change, Integral, 1,
                      allow=(np.inf,))
        _check_scalar("max_fun", self.max_fun, Integral, 1)
        if not isinstance(self.verbose, (bool, np.bool_, Integral)):
            raise TypeError(f"The 'verbose' parameter must be an int or bool, got "
                            f"{self.verbose!r}.")
        if self.n_threads is not None:
            _check_scalar("n_threads", self.n_threads, Integral)
            if self.n_threads == 0:
                raise ValueError("The 'n_threads' parameter must be None, -1 or a "
                                 "non-zero int, got 0.")
        _check_scalar("leaky_relu_slope", self.leaky_relu_slope, Real, 0, 1)
        _check_scalar("l1", self.l1, Real, 0)
        _check_scalar("dropout", self.dropout, Real, 0, 1)
        if self.max_grad_norm is not None:
            _check_scalar("max_grad_norm", self.max_grad_norm, Real, 0,
                          closed="neither")
        _check_option("init", self.init, INITS)
        _check_option("layer_lr", self.layer_lr, {"uniform", "fan_in"})
        _check_scalar("maxout_pieces", self.maxout_pieces, Integral, 2)
        if self.gtol is not None:
            _check_scalar("gtol", self.gtol, Real, 0, closed="neither")
        _check_scalar("restore_best_weights", self.restore_best_weights, bool)
        _check_scalar("rprop_eta_minus", self.rprop_eta_minus, Real, 0, 1,
                      closed="neither")
        _check_scalar("rprop_eta_plus", self.rprop_eta_plus, Real, 1,
                      closed="neither")
        _check_scalar("rprop_step_min", self.rprop_step_min, Real, 0)
        _check_scalar("rprop_step_max", self.rprop_step_max, Real, 0,
                      closed="neither")
        _check_scalar("rprop_step_init", self.rprop_step_init, Real,
                      self.rprop_step_min, self.rprop_step_max, closed="both")
        if self.dropout > 0 and self.solver not in _STOCHASTIC_SOLVERS:
            raise ValueError(
                f"dropout={self.dropout} needs a stochastic solver: the masks change "
                f"every sample, which '{self.solver}' (a full-batch method that "
                "relies on a fixed objective) cannot follow. Use solver='sgd' or "
                "'adam', or dropout=0."
            )
        # random_state is checked by check_random_state at fit time.

    def _n_threads(self):
        """Threads the kernels may use (see the n_threads parameter)."""
        return effective_n_threads(self.n_threads)

    def _hidden_activations(self, n_hidden):
        """One activation name per hidden layer."""
        if isinstance(self.activation, str):
            return [self.activation] * n_hidden
        names = list(self.activation)
        if len(names) != n_hidden:
            raise ValueError(
                f"activation lists {len(names)} activations but the network has "
                f"{n_hidden} hidden layers: give one per hidden layer, or a single "
                "string for all."
            )
        return names

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        sizes = list(sizes)
        for s in sizes:
            if not isinstance(s, Integral) or isinstance(s, bool):
                raise TypeError(
                    "hidden_layer_sizes must hold positive ints, got "
                    f"{self.hidden_layer_sizes!r}."
                )
        if any(s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    @staticmethod
    def _check_network_size(layer_units, dtype, zw=None):
        """Refuse networks that cannot be allocated before anything is."""
        int_max = 2**31 - 1  # BLAS dimensions and leading sizes are C ints
        zw = layer_units if zw is None else zw
        widest = max(a * b for a, b in zip(layer_units[:-1], zw[1:]))
        n_params = sum(a * b + b for a, b in zip(layer_units[:-1], zw[1:]))
        if widest > int_max:
            raise ValueError(
                f"A weight matrix of this network would have {widest:,} entries, "
                f"more than BLAS can index ({int_max:,}); reduce hidden_layer_sizes "
                "or the number of features."
            )
        need = n_params * np.dtype(dtype).itemsize * 4  # weights, 2 states, grad
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            ram = None
        if ram and need > ram:
            raise MemoryError(
                f"A network with layer sizes {layer_units} has {n_params:,} "
                f"parameters and needs at least {need / 2**30:.1f} GiB to train, more "
                f"than this machine's {ram / 2**30:.1f} GiB; reduce "
                "hidden_layer_sizes."
            )

    def _check_sample_weight(self, sample_weight, n_samples, dtype):
        if sample_weight is None:
            return None
        if np.isscalar(sample_weight):
            sample_weight = np.full(n_samples, sample_weight, dtype=dtype)
        sw = check_array(sample_weight, ensure_2d=False, dtype=dtype, order="C",
                         input_name="sample_weight")
        if sw.ndim != 1 or sw.shape[0] != n_samples:
            raise ValueError(
                f"sample_weight.shape == {sw.shape}, expected ({n_samples},): give "
                "one weight per sample."
            )
        if np.any(sw < 0):
            raise ValueError(
                "sample_weight has negative values; weights must be >= 0."
            )
        if not np.any(sw > 0):
            raise ValueError(
                "sample_weight sums to zero: give at least one sample a positive "
                "weight."
            )
        return sw

    # ------------------------------------------------------------------
    # Parameter vector plumbing
    # ------------------------------------------------------------------
    @staticmethod
    def _layout(layer_units, zw=None):
        """Offsets of every layer in the packed parameter vector.

        ``zw[l]`` is the number of pre-activations of layer ``l`` (the
        columns of ``coefs_[l - 1]``): ``layer_units[l]`` times the pieces of
        a maxout layer, else ``layer_units[l]``.
        """
        units = np.asarray(layer_units, dtype=np.intp)
        zw = units if zw is None else np.asarray(zw, dtype=np.intp)
        coef_sizes = units[:-1] * zw[1:]
        coef_off = np.concatenate(([0], np.cumsum(coef_sizes)[:-1])).astype(np.intp)
        n_coef = int(coef_sizes.sum())
        icpt_off = (n_coef + np.concatenate(([0], np.cumsum(zw[1:])[:-1]))).astype(
            np.intp
        )
        n_params = n_coef + int(zw[1:].sum())
        return units, coef_off, icpt_off, n_params

    def _layer_units(self):
        """Activations per layer, input first (what each layer passes on)."""
        return [c.shape[0] for c in self.coefs_] + [self.coefs_[-1].shape[1]]

    def _layer_zw(self):
        """Pre-activations per layer: the columns of each weight matrix."""
        return [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]

    def _planned_zw(self, layer_units):
        """Pre-activation widths of a network about to be initialised."""
        names = self._hidden_activations(len(layer_units) - 2)
        return [layer_units[0]] + [
            u * self.maxout_pieces if name == "maxout" else u
            for u, name in zip(layer_units[1:-1], names)
        ] + [layer_units[-1]]

    def _net_spec(self, layer_units, zw, out_activation=None):
        """What the kernels need to know about the network, as arrays.

        A maxout layer's rows in the kernels' block buffers hold its
        ``units`` activations followed by its ``units * pieces``
        pre-activations (the backward pass needs the winning piece).
        """
        units, coef_off, icpt_off, n_params = self._layout(layer_units, zw)
        zw = np.asarray(zw, dtype=np.intp)
        L = len(units) - 1
        names = self._hidden_activations(L - 1)
        act = np.zeros(L + 1, dtype=np.intp)
        act_param = np.zeros(L + 1)
        for layer, name in enumerate(names, start=1):
            act[layer] = HIDDEN_ACTIVATIONS[name]
            act_param[layer] = float(self.leaky_relu_slope)
        maxout = act == HIDDEN_ACTIVATIONS["maxout"]
        for layer in np.flatnonzero(maxout):
            if zw[layer] % units[layer] or zw[layer] < 2 * units[layer]:
                raise ValueError(
                    f"Hidden layer {layer} is a maxout layer of {units[layer]} units "
                    f"but coefs_[{layer - 1}] has {zw[layer]} columns: it needs "
                    "units * maxout_pieces columns, with maxout_pieces >= 2."
                )
        if self.layer_lr == "fan_in":
            lr_mult = 1.0 / np.sqrt(units[:-1].astype(float))
        else:
            lr_mult = np.ones(L)
        out, loss = self._codes(out_activation)
        return {
            "units": units, "zw": zw,
            "zoff": np.where(maxout, units, 0).astype(np.intp),
            "stride": self._row_strides(units, zw, maxout),
            "act": act, "act_param": act_param,
            "lr_mult": np.ascontiguousarray(lr_mult, dtype=np.float64),
            "coef_off": coef_off, "icpt_off": icpt_off, "n_params": n_params,
            "out_act": out, "loss": loss,
            "loss_param": float(getattr(self, "huber_delta", 1.0)),
            "dropout": float(self.dropout),
            "seed": int(getattr(self, "_dropout_seed", 0) or 0),
        }

    @staticmethod
    def _row_strides(units, zw, maxout):
        """Values a row of each layer takes in the kernels' block buffers.

        Hidden rows are padded to a multiple of ``_ROW_ALIGN`` values so that
        every row starts on a cache line: the first layer's gradient reads a
        whole delta row per non-zero input, in 64-byte vectors (784-100-10
        on MNIST, sgd batch 200: 1.09x faster on two threads, 1.13x on
        one).  The output layer stays unpadded: the kernels read its rows as
        one ``n x n_outputs`` block.
        """
        stride = np.where(maxout, units + zw, units).astype(np.intp)
        stride[1:-1] = -(-stride[1:-1] // _ROW_ALIGN) * _ROW_ALIGN
        return stride

    def _pack(self, dtype):
        """The current ``coefs_`` / ``intercepts_`` as one flat vector.

        Reading the lists every time means that whatever a user assigned to
        them is what the kernels use.
        """
        units = self._layer_units()
        zw = self._layer_zw()
        for i, (c, b) in enumerate(zip(self.coefs_, self.intercepts_)):
            if c.shape != (units[i], zw[i + 1]) or np.shape(b) != (zw[i + 1],):
                raise ValueError(
                    f"coefs_[{i}] has shape {np.shape(c)} and intercepts_[{i}] "
                    f"{np.shape(b)}; they must be ({units[i]}, {zw[i + 1]}) and "
                    f"({zw[i + 1]},) to chain the layers."
                )
        parts = [np.asarray(c, dtype=dtype).ravel() for c in self.coefs_] + [
            np.asarray(b, dtype=dtype).ravel() for b in self.intercepts_]
        return np.concatenate(parts, out=_aligned_empty(sum(map(len, parts)), dtype))

    def _unpack_views(self, params, layer_units, zw=None):
        """Point ``coefs_`` / ``intercepts_`` at slices of ``params``."""
        units, coef_off, icpt_off, _ = self._layout(layer_units, zw)
        zw = units if zw is None else zw
        L = len(units) - 1
        self.coefs_ = [
            params[coef_off[i]: coef_off[i] + units[i] * zw[i + 1]].reshape(
                units[i], zw[i + 1]
            )
            for i in range(L)
        ]
        self.intercepts_ = [
            params[icpt_off[i]: icpt_off[i] + zw[i + 1]] for i in range(L)
        ]

    def _codes(self, out_activation=None):
        """Kernel codes of the output activation and the loss."""
        out_activation = out_activation or self.out_activation_
        loss = self.loss
        if loss == "log_loss" and out_activation == "logistic":
            loss = "binary_log_loss"
        if loss == "hinge" and getattr(self, "_label_binarizer", None) is not None \
                and self._label_binarizer.y_type_ == "multiclass":
            loss = "multiclass_hinge"
        return OUTPUT_ACTIVATIONS[out_activation], LOSSES[loss]

    def _loss_scale(self):
        """scikit-learn averages multi-output squared error over outputs in the
        reported loss (but not in its gradient); stopping rules use that scale
        so that trajectories stay the same."""
        if is_classifier(self) or self.loss != "squared_error":
            return 1
        return self.n_outputs_

    # ------------------------------------------------------------------
    # Forward pass
    # ------------------------------------------------------------------
    def _forward_raw(self, X, out_activation):
        """Output of the network for validated X, with ``out_activation``."""
        params = self._pack(self.coefs_[0].dtype)
        x_dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        dtype = np.result_type(params.dtype, x_dtype)
        params = params.astype(dtype, copy=False)
        spec = self._net_spec(self._layer_units(), self._layer_zw(), out_activation)
        units = spec["units"]
        n = X.shape[0]
        out = np.empty((n, units[-1]), dtype=dtype)
        if n == 0:
            return out
        data, ind, ptr, _, _ = _kernel_input(X, dtype)
        cap = min(_PREDICT_ROWS, n)
        threads = self._n_threads() if n > cap else 1
        per = cap * int(np.sum(spec["stride"][1:]))
        per += -per % _ROW_ALIGN
        acts = _aligned_zeros(threads * per, dtype).reshape(threads, per)
        rsre = np.empty((threads, 2 * cap), dtype=np.intp)
        with _blas_single_thread():
            _kernels.forward(data, ind, ptr, n, X.shape[1], spec, params, out, acts,
                             rsre, threads, _first_layer_copy(spec, dtype, ind is not None))
        return out

    def _forward_pass_fast(self, X, check_input=True):
        if check_input:
            X = _validate(self, X, accept_sparse=["csr", "csc"], reset=False,
                          dtype=(np.float64, np.float32))
        return self._forward_raw(X, self.out_activation_)

    # ------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------
    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self.loss == "hinge":
            self.out_activation_ = "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"

        zw = self._planned_zw(layer_units)
        names = self._hidden_activations(len(layer_units) - 2)
        # Drawn straight into the packed vector (in ``dtype``): no float64
        # copy of the network, no second packing.
        _, coef_off, icpt_off, n_params = self._layout(layer_units, zw)
        params = _aligned_empty(n_params, dtype)
        for i, (fan_in, fan_out) in enumerate(zip(layer_units[:-1], zw[1:])):
            # The activation the layer feeds (the output layer: as the last
            # hidden layer, which is scikit-learn's single activation).
            if names:
                name = names[min(i, len(names) - 1)]
            else:
                name = self.activation if isinstance(self.activation, str) else "relu"
            hidden = i < len(layer_units) - 2
            self._init_layer(fan_in, fan_out, name, hidden,
                             params[coef_off[i]:coef_off[i] + fan_in * fan_out],
                             params[icpt_off[i]:icpt_off[i] + fan_out])
        self._unpack_views(params, layer_units, zw)
        # Early stopping's best weights so far (see _fit_stochastic).
        self._best_params = params.copy() if self.early_stopping else None

        self.validation_loss_curve_ = None
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping and self.solver in _STOCHASTIC_SOLVERS:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self._best_stop_loss = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None
        return params

    def _init_layer(self, fan_in, fan_out, activation, hidden, coef, intercept):
        """Initial weights and biases of one layer, drawn from the estimator's
        random stream in scikit-learn's order (weights, then biases) into the
        flat views ``coef`` (row-major ``fan_in x fan_out``) and
        ``intercept``.

        'glorot_uniform' is scikit-learn's scheme; 'lecun' and 'he' draw
        uniform weights of variance 1/fan_in and 2/fan_in with zero biases;
        'nguyen_widrow' spreads the hidden units' active regions over the
        input range (uniform weights whose columns are rescaled to norm
        0.7 * fan_out ** (1 / fan_in), biases uniform in +-that norm) and
        initialises the output layer like 'glorot_uniform'.
        """
        rng = self._random_state
        init = self.init
        if init == "lecun" or init == "he":
            bound = np.sqrt((3.0 if init == "lecun" else 6.0) / fan_in)
            _draw_uniform(rng, -bound, bound, coef)
            intercept[:] = 0
            return
        if init == "nguyen_widrow" and hidden:
            beta = 0.7 * fan_out ** (1.0 / fan_in)
            full = rng.uniform(-0.5, 0.5, (fan_in, fan_out))
            norms = np.linalg.norm(full, axis=0)
            full *= beta / np.where(norms > 0, norms, 1.0)
            coef[:] = full.ravel()
            _draw_uniform(rng, -beta, beta, intercept)
            return
        factor = 2.0 if activation == "logistic" else 6.0
        bound = np.sqrt(factor / (fan_in + fan_out))
        _draw_uniform(rng, -bound, bound, coef)
        _draw_uniform(rng, -bound, bound, intercept)

    def _class_weights(self, y, sample_weight, incremental, dtype):
        """Fold ``class_weight`` into the sample weights (classifier only)."""
        class_weight = getattr(self, "class_weight", None)
        if class_weight is None:
            return sample_weight
        y_type = self._label_binarizer.y_type_
        if y_type not in ("binary", "multiclass"):
            raise ValueError(
                f"class_weight needs single-label targets, got {y_type} targets; "
                "pass per-sample weights as sample_weight instead."
            )
        if isinstance(class_weight, str) and incremental:
            raise ValueError(
                "class_weight='balanced' cannot be used with partial_fit, which "
                "never sees the whole data: compute the weights once with "
                "sklearn.utils.class_weight.compute_class_weight and pass them as "
                "a dict."
            )
        idx = np.argmax(y, axis=1) if y.shape[1] > 1 else y[:, 0].astype(np.intp)
        labels = self.classes_[idx]
        weights = compute_class_weight(class_weight, classes=self.classes_, y=labels)
        per_sample = weights[idx].astype(dtype)
        if sample_weight is not None:
            per_sample = per_sample * sample_weight
        if not np.any(per_sample > 0):
            raise ValueError("class_weight gives every sample a zero weight.")
        return np.ascontiguousarray(per_sample, dtype=dtype)

    def _fit(self, X, y, sample_weight=None, incremental=False, validation_data=None):
        self._validate_params()
        hidden = self._hidden_sizes()
        self._hidden_activations(len(hidden))
        first_pass = not hasattr(self, "coefs_") or (
            not self.warm_start and not incremental
        )
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        dtype = X.dtype if first_pass else self.coefs_[0].dtype
        sample_weight = self._check_sample_weight(sample_weight, X.shape[0], dtype)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        if is_classifier(self):
            sample_weight = self._class_weights(y, sample_weight, incremental, dtype)
        if not is_classifier(self) and self.loss == "poisson" and np.any(y < 0):
            raise ValueError(
                "loss='poisson' needs non-negative targets y; use "
                "loss='squared_error' for targets that can be negative."
            )
        layer_units = [X.shape[1]] + hidden + [y.shape[1]]
        self._check_network_size(layer_units, dtype, self._planned_zw(layer_units))
        if not first_pass:
            if (self._layer_units() != layer_units
                    or self._layer_zw() != self._planned_zw(layer_units)):
                raise ValueError(
                    f"The fitted network has layer sizes {self._layer_units()} "
                    f"(pre-activations {self._layer_zw()}) but this call needs "
                    f"{layer_units} (pre-activations "
                    f"{self._planned_zw(layer_units)}): keep hidden_layer_sizes, "
                    "activation, maxout_pieces and the number of outputs, or fit "
                    "with warm_start=False."
                )
        self.n_outputs_ = y.shape[1]
        self._random_state = check_random_state(self.random_state)
        params = None
        if first_pass:
            params = self._initialize(y, layer_units, dtype)
        if self.dropout > 0 and getattr(self, "_dropout_seed", None) is None:
            self._dropout_seed = int(self._random_state.randint(np.iinfo(np.int32).max))
        if self.restore_best_weights and validation_data is None and not (
                self.early_stopping and self.solver in _STOCHASTIC_SOLVERS):
            raise ValueError(
                "restore_best_weights=True needs a validation set: pass "
                "validation_data=(X_val, y_val) to fit, or use early_stopping=True "
                "with solver='sgd' or 'adam'."
            )
        validation = None
        if validation_data is not None:
            validation = self._validation_set(validation_data, dtype)

        if params is None:
            # Whatever the user assigned to coefs_ / intercepts_ since.
            params = self._pack(dtype)
            self._unpack_views(params, layer_units, self._layer_zw())
        self._best_val_loss = np.inf
        self._best_val_params = None
        with _blas_single_thread():
            if self.solver in _STOCHASTIC_SOLVERS:
                self._fit_stochastic(X, y, sample_weight, params, layer_units,
                                     incremental, validation)
            elif self.solver == "rprop":
                self._fit_rprop(X, y, sample_weight, params, layer_units, validation)
            else:
                self._fit_lbfgs(X, y, sample_weight, params, layer_units, validation)
        if self.restore_best_weights and self._best_val_params is not None:
            params[:] = self._best_val_params
        self._best_val_params = None

        if not np.isfinite(params).all():
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may "
                "contain large values and need to be preprocessed."
            )
        return self

    def _encode_targets(self, y, n_samples, dtype, name="y"):
        """``(y, Y)``: targets given as to ``fit`` (a column vector made 1-D)
        and the same in the network's output encoding, checked against the
        fitted classes and number of outputs."""
        y = np.asarray(y)
        if y.shape[0] != n_samples:
            raise ValueError(
                f"X has {n_samples} samples but {name} has {y.shape[0]}: give one "
                "target per sample."
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y)
        if is_classifier(self):
            unknown = np.setdiff1d(np.unique(y), self.classes_) if y.ndim == 1 else []
            if len(unknown):
                raise ValueError(
                    f"{name} has labels {unknown} that the estimator was not fitted "
                    f"on (classes_ = {self.classes_})."
                )
            Y = self._label_binarizer.transform(y)
        else:
            Y = np.asarray(y, dtype=dtype)
        Y = np.ascontiguousarray(Y.reshape(n_samples, -1), dtype=dtype)
        if Y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"{name} has {Y.shape[1]} outputs but the estimator has "
                f"{self.n_outputs_}."
            )
        return y, Y

    def _validation_set(self, validation_data, dtype):
        """Check a user's ``validation_data`` and return ``(X, Y, y, sw)``:
        Y in the network's target encoding, y as ``score`` takes it."""
        if not isinstance(validation_data, (tuple, list)) or \
                len(validation_data) not in (2, 3):
            raise ValueError(
                "validation_data must be a tuple (X_val, y_val) or (X_val, y_val, "
                f"sample_weight_val), got {type(validation_data).__name__}."
            )
        X_val, y_val = validation_data[0], validation_data[1]
        sw_val = validation_data[2] if len(validation_data) == 3 else None
        X_val = _validate(self, X_val, accept_sparse=["csr", "csc"], reset=False,
                          dtype=dtype)
        if X_val.shape[0] == 0:
            raise ValueError("validation_data holds no samples.")
        y_val, Y_val = self._encode_targets(y_val, X_val.shape[0], dtype,
                                            "validation_data's y_val")
        sw_val = self._check_sample_weight(sw_val, X_val.shape[0], dtype)
        return X_val, Y_val, y_val, sw_val

    def _validation_loss_fn(self, validation, dtype, layer_units):
        """``f(params)``: the data loss on the validation set, on the scale of
        ``loss_curve_``'s data term; also keeps the best weights."""
        X_val, Y_val, _, sw_val = validation
        objective = self._objective_setup(X_val, Y_val, sw_val, dtype, layer_units)
        scale = self._loss_scale()

        def validation_loss(params):
            data, _, _ = objective(params, need_grad=False)
            loss = float(data) / scale
            self.validation_loss_curve_.append(loss)
            if loss < self._best_val_loss:
                self._best_val_loss = loss
                if self.restore_best_weights:
                    self._best_val_params = params.copy()
            return loss

        self.validation_loss_curve_ = []
        return validation_loss

    def _objective_setup(self, X, y, sample_weight, dtype, layer_units,
                         dropout_step=None):
        """Full-batch function ``objective(params, need_grad)`` returning
        ``(data_loss, penalty, grad)``.  ``dropout_step`` evaluates the
        network with the dropout masks of the training epoch that starts at
        that sample counter (a fixed, differentiable objective); by default
        the whole network is used."""
        spec = self._net_spec(layer_units, self._layer_zw())
        ws = _Workspace(X, dtype, spec, min(X.shape[0], _kernels.SUPER_BLOCK_ROWS),
                        self._n_threads(), full_pass=True)
        if dropout_step is None:
            ws.gates = np.empty(1, dtype=dtype)
        Y = np.ascontiguousarray(y, dtype=dtype)
        has_sw = sample_weight is not None
        sw = sample_weight if has_sw else np.empty(1, dtype=dtype)
        alpha = float(self.alpha)
        l1 = float(self.l1)

        def objective(params, need_grad=True):
            data_loss, penalty = _kernels.loss_grad(
                ws.data, ws.ind, ws.ptr, ws.n_features, Y, sw, has_sw, spec,
                ws.gblocks, params, ws.grad, ws.acts, ws.deltas, ws.gates, ws.xbuf,
                ws.dwork, ws.spi, ws.spv, ws.nnz_cap, alpha, l1, ws.n_threads,
                need_grad, dropout_step, ws.n_keep, ws.w0, ws.wt,
            )
            return data_loss, penalty, ws.grad

        return objective

    def _fit_lbfgs(self, X, y, sample_weight, params, layer_units, validation):
        objective = self._objective_setup(X, y, sample_weight, params.dtype,
                                          layer_units)
        validation_loss = None
        if validation is not None:
            validation_loss = self._validation_loss_fn(validation, params.dtype,
                                                       layer_units)

        # What an interrupt falls back to: the last finite evaluation; and
        # the gradient norm of the last evaluation, for gtol.
        last = {"x": params.astype(np.float64), "fun": np.inf, "nit": 0,
                "gnorm": np.inf, "gx": None}

        def fun(x):
            params[:] = x
            data, penalty, grad = objective(params)
            loss = data + penalty
            if np.isfinite(loss):
                last["x"], last["fun"] = x.copy(), loss
            last["gx"] = x.copy()
            last["gnorm"] = float(np.linalg.norm(grad))
            return loss, grad.astype(np.float64)

        def callback(intermediate_result):
            last["nit"] += 1
            if self.verbose:
                print("Iteration, loss = %.8f" % intermediate_result.fun)
            x = intermediate_result.x
            if validation_loss is not None:
                params[:] = x
                validation_loss(params)
            if self.gtol is not None:
                if last["gx"] is None or not np.array_equal(last["gx"], x):
                    fun(x)
                if last["gnorm"] < self.gtol:
                    raise StopIteration

        try:
            res = scipy.optimize.minimize(
                fun, params.astype(np.float64), method="L-BFGS-B", jac=True,
                callback=callback,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                         "gtol": self.tol},
            )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
            self.n_iter_ = last["nit"]
            self.loss_ = float(last["fun"])
            params[:] = last["x"]
            return
        self.n_iter_ = min(res.nit, self.max_iter)
        if not (np.isfinite(res.x).all() and np.isfinite(res.fun)):
            params[:] = last["x"]
            self.loss_ = float(last["fun"])
            raise ValueError(
                "lbfgs diverged: the loss or the weights became infinite or NaN. "
                "The last finite weights were kept. Scale the inputs (for example "
                "with StandardScaler) or increase alpha."
            )
        stopped_by_gtol = self.gtol is not None and last["gnorm"] < self.gtol
        if res.status != 0 and not stopped_by_gtol:
            msg = (f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                   f"(status={res.status}):\n{res.message}\n")
            if self.n_iter_ == self.max_iter:
                msg += ("\nIncrease the number of iterations to improve the "
                        f"convergence (max_iter={self.max_iter}).")
            msg += "\nYou might also want to scale the data."
            warnings.warn(msg, ConvergenceWarning, stacklevel=3)
        self.loss_ = float(res.fun)
        params[:] = res.x

    def _fit_rprop(self, X, y, sample_weight, params, layer_units, validation):
        """iRprop- on the full batch: one kernel call for the loss and
        gradient and one for the update per epoch."""
        objective = self._objective_setup(X, y, sample_weight, params.dtype,
                                          layer_units)
        validation_loss = None
        if validation is not None:
            validation_loss = self._validation_loss_fn(validation, params.dtype,
                                                       layer_units)
        state = getattr(self, "_rprop", None)
        if state is None or state[0].shape != params.shape or not self.warm_start:
            state = (np.zeros_like(params),
                     np.full_like(params, self.rprop_step_init))
        self._rprop = state
        prev, step = state
        scale = self._loss_scale()
        snapshot = np.empty_like(params)
        self.n_iter_ = 0
        try:
            for _ in range(self.max_iter):
                data, penalty, grad = objective(params)
                if not np.isfinite(data + penalty):
                    params[:] = snapshot
                    raise ValueError(
                        f"rprop diverged in epoch {self.n_iter_ + 1}: the loss became "
                        "infinite or NaN. The weights of the last finite epoch were "
                        "kept. Lower rprop_step_max or scale the inputs."
                    )
                self.loss_ = float(data + penalty)
                self.loss_curve_.append(self.loss_)
                if self._print_lines():
                    print("Iteration %d, loss = %.8f" % (self.n_iter_ + 1, self.loss_))
                if self.gtol is not None and np.linalg.norm(grad) < self.gtol:
                    break
                snapshot[:] = params
                _kernels.rprop_update(params, grad, prev, step,
                                      float(self.rprop_eta_minus),
                                      float(self.rprop_eta_plus),
                                      float(self.rprop_step_min),
                                      float(self.rprop_step_max))
                self.n_iter_ += 1
                if validation_loss is not None:
                    validation_loss(params)
                self._update_no_improvement_count(
                    False, None, None, None, data / scale + penalty, params)
                if self._no_improvement_count > self.n_iter_no_change:
                    if self._print_lines():
                        print("Training loss did not improve more than tol=%f for %d "
                              "consecutive epochs. Stopping."
                              % (self.tol, self.n_iter_no_change))
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        "rprop: Maximum iterations (%d) reached and the optimization "
                        "hasn't converged yet." % self.max_iter,
                        ConvergenceWarning, stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)

    def _optimizer_state(self, n_params, dtype, incremental):
        if incremental and getattr(self, "_opt", None) is not None \
                and self._opt["state1"].shape[0] == n_params:
            self._opt["state1"] = self._opt["state1"].astype(dtype, copy=False)
            self._opt["state2"] = self._opt["state2"].astype(dtype, copy=False)
            return self._opt
        s1 = _aligned_zeros(n_params, dtype)
        if self.solver == "sgd":
            self._opt = {
                "kind": "sgd", "lr": float(self.learning_rate_init),
                "momentum": float(self.momentum),
                "nesterov": bool(self.nesterovs_momentum),
                "alpha": float(self.alpha), "state1": s1, "state2": s1,
            }
        else:
            self._opt = {
                "kind": "adam", "lr": float(self.learning_rate_init),
                "beta1": float(self.beta_1), "beta2": float(self.beta_2),
                "eps": float(self.epsilon), "t": 0, "alpha": float(self.alpha),
                "state1": s1, "state2": _aligned_zeros(n_params, dtype),
            }
        return self._opt

    def _fit_stochastic(self, X, y, sample_weight, params, layer_units, incremental,
                        validation=None):
        dtype = params.dtype
        spec = self._net_spec(layer_units, self._layer_zw())
        opt = self._optimizer_state(spec["n_params"], dtype, incremental)
        opt["alpha"] = float(self.alpha)
        opt["l1"] = float(self.l1)
        opt["clip"] = float(self.max_grad_norm or 0.0)

        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        if early_stopping and validation is not None:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val, Y_val, y_val, sw_val = validation
        elif early_stopping:
            stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            split = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction,
                                     stratify=stratify)
            X_train, X_val, y_train, Y_val = split[:4]
            sw_train, sw_val = (split[4], split[5]) if sample_weight is not None \
                else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            y_val = Y_val
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(Y_val)
            validation = (X_val, np.ascontiguousarray(Y_val, dtype=dtype), y_val,
                          sw_val)
        else:
            X_train, y_train, sw_train = X, y, sample_weight
            X_val = y_val = sw_val = None
        if early_stopping and self.validation_scores_ is None:
            # A warm start of a network first fitted without early stopping.
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self._best_params = params.copy()
        validation_loss = None
        if validation is not None:
            validation_loss = self._validation_loss_fn(validation, dtype, layer_units)

        n_samples = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is "
                    "going to be clipped", stacklevel=3
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        # One batch of every sample: the gradient is the same sum in any row
        # order, so rows go in their natural order (consecutive rows, and
        # the first layer's by-feature copies can be kept between epochs).
        full_pass = batch_size >= n_samples
        ws = _Workspace(X_train, dtype, spec, min(batch_size, _kernels.SUPER_BLOCK_ROWS),
                        self._n_threads(), online=batch_size == 1, full_pass=full_pass,
                        borrow=True)
        Y = np.ascontiguousarray(y_train, dtype=dtype)
        # Online training reads the target rows itself (see run_epoch).
        ycls = _one_hot_classes(Y) if batch_size > 1 else None
        has_sw = sw_train is not None
        sw = np.ascontiguousarray(sw_train, dtype=dtype) if has_sw \
            else np.empty(1, dtype=dtype)
        # Online SGD defers the weight-decay / momentum steps of first-layer
        # rows whose input is zero (see _kernels); worth it on sparse inputs.
        # L1 and clipping make those steps depend on more than the row.
        lazy = (batch_size == 1 and opt["kind"] == "sgd" and not has_sw
                and (ws.skip_zeros or ws.ind is not None)
                and (self.alpha > 0 or self.momentum > 0)
                and opt["l1"] == 0 and opt["clip"] == 0)
        gradient_norm = None
        if self.gtol is not None:
            full = self._objective_setup(X_train, Y, sw_train, dtype, layer_units)

            def gradient_norm(params):
                return float(np.linalg.norm(full(params)[2]))
        scale = self._loss_scale()
        sample_idx = np.arange(n_samples, dtype=int)
        snapshot = np.empty_like(params)

        progress = None
        if not isinstance(self.verbose, bool) and self.verbose >= 2:
            progress = EpochProgress(1 if incremental else self.max_iter, n_samples,
                                     desc=type(self).__name__)
        # Plain training (no per-epoch Python work: no early stopping,
        # validation, printing, progress bar or gtol) runs all its epochs in
        # one kernel call, which shuffles and applies the stopping rule as
        # the loop below does: 70 us an epoch of Python and call overhead
        # against 0.3-1 ms of work an epoch on load_digits.
        rng = getattr(self._random_state, "_bit_generator", None)
        in_kernel = (
            batch_size > 1 and not incremental and not early_stopping
            and validation_loss is None and progress is None
            and gradient_norm is None and not self._print_lines()
            and getattr(self, "best_loss_", None) is not None
            and getattr(self, "_best_stop_loss", None) is not None
            and (not self.shuffle or (hasattr(rng, "capsule") and hasattr(rng, "lock")))
            and _EPOCHS_IN_KERNEL)

        def run_epoch(order, tables=None, **multi):
            return _kernels.run_epoch(
                ws.data, ws.ind, ws.ptr, ws.n_features, Y, sw, has_sw, order, spec,
                ws.gblocks, ws.ublocks, params, opt["state1"], opt["state2"],
                ws.grad, ws.acts, ws.deltas, ws.gates, ws.xbuf, ws.iwork, ws.dwork,
                ws.spi, ws.spv, ws.nnz_cap, batch_size, ws.n_threads, opt, tables,
                self.t_, ws.n_keep, ws.tuner, ws.w0, ws.wt, ws.pgrad,
                hsplit=ws.hsplit, hscratch=ws.hscratch, cols=ws.cols,
                rowmask=ws.rowmask, ycls=ycls, **multi)

        try:
            self.n_iter_ = 0
            if in_kernel:
                self._epochs_in_kernel(run_epoch, sample_idx, params, snapshot, opt,
                                       rng if self.shuffle else None, full_pass, scale)
            for epoch in range(0 if in_kernel else self.max_iter):
                if epoch == 1:
                    ws.settle_input()
                if self.shuffle:
                    # scikit-learn's shuffle() draws exactly this permutation
                    # (RandomState.shuffle of arange(n)), without its
                    # parameter validation: a sixth of a small fit's time.
                    # A full pass draws it too (the random stream stays the
                    # same) but keeps its rows in order.
                    perm = np.arange(n_samples)
                    self._random_state.shuffle(perm)
                    if not full_pass:
                        sample_idx = sample_idx[perm]
                order = np.ascontiguousarray(sample_idx, dtype=np.intp)
                snapshot[:] = params
                tables = _kernels.lazy_tables(
                    n_samples, opt["lr"] * spec["lr_mult"][0], opt["momentum"],
                    opt["nesterov"], opt["alpha"]) if lazy else None
                status, data_sum, pen_sum, _, _ = run_epoch(order, tables)
                self._check_epoch_status(status, params, snapshot)
                self.n_iter_ += 1
                self.loss_ = (data_sum + pen_sum) / n_samples
                stop_loss = (data_sum / scale + pen_sum) / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self._print_lines():
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))

                if validation_loss is not None:
                    validation_loss(params)
                self._update_no_improvement_count(early_stopping, X_val, y_val,
                                                  sw_val, stop_loss, params)
                if progress is not None:
                    progress.update(self.loss_, self.validation_scores_[-1]
                                    if early_stopping else None)
                if opt["kind"] == "sgd" and self.learning_rate == "invscaling":
                    opt["lr"] = float(self.learning_rate_init) / (
                        self.t_ + 1) ** self.power_t

                if gradient_norm is not None and gradient_norm(params) < self.gtol:
                    if self._print_lines():
                        print("Full-batch gradient norm below gtol=%g. Stopping."
                              % self.gtol)
                    break
                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than "
                               "tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f"
                               " for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    if self._trigger_stopping(msg, opt):
                        break
                    self._no_improvement_count = 0

                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    self._warn_max_iter(stacklevel=3)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        finally:
            if progress is not None:
                progress.close()
            ws.release()

        if early_stopping:
            params[:] = self._best_params

    def _epochs_in_kernel(self, run_epoch, sample_idx, params, snapshot, opt, rng,
                          full_pass, scale):
        """The epoch loop of _fit_stochastic as one kernel call (see there):
        the same shuffles from ``rng`` (a RandomState's bit generator, None
        when not shuffling), the same losses, stopping rule and schedule,
        hence the same weights and attributes."""
        fields = _kernels.RULE_FIELDS
        rule = np.zeros(fields["size"])
        rule[fields["tol"]] = self.tol
        rule[fields["patience"]] = self.n_iter_no_change
        rule[fields["best_stop"]] = self._best_stop_loss
        rule[fields["best_loss"]] = self.best_loss_
        rule[fields["count"]] = self._no_improvement_count
        rule[fields["scale"]] = scale
        schedule = "constant"
        if opt["kind"] == "sgd" and self.learning_rate in ("invscaling", "adaptive"):
            schedule = self.learning_rate
        rule[fields["schedule"]] = _kernels.SCHEDULES[schedule]
        rule[fields["lr_init"]] = self.learning_rate_init
        rule[fields["power_t"]] = self.power_t
        rule[fields["t"]] = self.t_
        losses = np.empty(max(self.max_iter, 1))
        order = np.array(sample_idx, dtype=np.intp)
        status, _, _, _, done = run_epoch(
            order, n_epochs=self.max_iter,
            bitgen=rng.capsule if rng is not None else None,
            bitgen_lock=rng.lock if rng is not None else None,
            permute=not full_pass, rule=rule, losses=losses, snapshot=snapshot)
        self.n_iter_ = done
        self.loss_curve_.extend(losses[:done].tolist())
        if done:
            self.loss_ = self.loss_curve_[-1]
        self.t_ = int(rule[fields["t"]])
        self.best_loss_ = float(rule[fields["best_loss"]])
        self._best_stop_loss = float(rule[fields["best_stop"]])
        self._no_improvement_count = int(rule[fields["count"]])
        self._check_epoch_status(status, params, snapshot)
        if not rule[fields["stopped"]] and self.n_iter_ == self.max_iter:
            self._warn_max_iter(stacklevel=4)

    def _check_epoch_status(self, status, params, snapshot):
        """Raise for an epoch the kernel did not finish, with the weights
        back at the end of the last whole epoch (``snapshot``), so that they
        match n_iter_ and loss_curve_."""
        if status == _STATUS_INTERRUPTED:
            params[:] = snapshot
            raise KeyboardInterrupt
        if status == _STATUS_NONFINITE:
            params[:] = snapshot
            raise ValueError(
                f"Training diverged in epoch {self.n_iter_ + 1}: the loss became "
                "infinite or NaN. The weights of the last finite epoch were kept. "
                "Lower learning_rate_init, scale the inputs (for example with "
                "StandardScaler) or increase alpha.")

    def _warn_max_iter(self, stacklevel):
        warnings.warn(
            "Stochastic Optimizer: Maximum iterations (%d) reached and the "
            "optimization hasn't converged yet." % self.max_iter,
            ConvergenceWarning, stacklevel=stacklevel + 1)

    def _print_lines(self):
        """verbose=True/1 prints scikit-learn's lines; 2 and above a bar."""
        return bool(self.verbose) and (isinstance(self.verbose, bool)
                                       or self.verbose < 2)

    def _trigger_stopping(self, msg, opt):
        """True to stop; the 'adaptive' schedule first divides the rate by 5."""
        if opt["kind"] == "adam" or self.learning_rate != "adaptive":
            if self._print_lines():
                print(msg + " Stopping.")
            return True
        if opt["lr"] <= 1e-6:
            if self._print_lines():
                print(msg + " Learning rate too small. Stopping.")
            return True
        opt["lr"] /= 5.0
        if self._print_lines():
            print(msg + " Setting learning rate to %f" % opt["lr"])
        return False

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val,
                                     stop_loss, params):
        if early_stopping:
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self._print_lines():
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = params.copy()
        else:
            if stop_loss > self._best_stop_loss - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if stop_loss < self._best_stop_loss:
                self._best_stop_loss = stop_loss
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def fit(self, X, y, sample_weight=None, validation_data=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data. float32 input trains float32 weights.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (classification) or real targets (regression).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights, not all zero.
        validation_data : tuple (X_val, y_val) or (X_val, y_val, sw_val), \
default=None
            A held-out set (not in scikit-learn). Its loss is recorded after
            every epoch (lbfgs: iteration) in ``validation_loss_curve_``;
            with ``early_stopping=True`` it replaces the internal
            ``validation_fraction`` split; with ``restore_best_weights=True``
            the weights of its lowest loss are kept. In a pipeline or a
            search, route it with ``set_fit_request(validation_data=True)``:
            being one tuple, cross-validation never slices it by rows.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False,
                         validation_data=validation_data)

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. "
                f"{self.solver} is not stochastic."
            )
        return True

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    def __getstate__(self):
        state = super().__getstate__()
        state["_cbackprop_version"] = _cbackprop_version()
        state["_cbackprop_format"] = _PERSISTENCE_FORMAT
        return state

    def __setstate__(self, state):
        fmt = state.get("_cbackprop_format")
        if fmt is not None and fmt != _PERSISTENCE_FORMAT:
            raise ValueError(
                f"This {type(self).__name__} was saved by cbackprop "
                f"{state.get('_cbackprop_version', '?')} (model format {fmt}) and "
                f"cannot be loaded by cbackprop {_cbackprop_version()} (format "
                f"{_PERSISTENCE_FORMAT}). Install cbackprop "
                f"{state.get('_cbackprop_version', '?')} to load it, or refit."
            )
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_PARAMS_DOC = """
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        Width of each hidden layer.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'leaky_relu', 'elu', \
'lecun_tanh', 'softplus', 'maxout'} or list of those, default='relu'
        Hidden-layer activation, or a list with one per hidden layer.
        Beyond scikit-learn: 'leaky_relu' (``max(z, slope z)``, slope
        ``leaky_relu_slope``), 'elu' (``z`` for ``z > 0``, else
        ``exp(z) - 1``), 'lecun_tanh' (``1.7159 tanh(2z/3)``), 'softplus'
        (``log(1 + exp(z))``) and 'maxout' (each unit is the largest of
        ``maxout_pieces`` linear pieces; its layer's ``coefs_`` has
        ``units * maxout_pieces`` columns, unit ``j``'s pieces being columns
        ``j * k`` to ``j * k + k - 1``).
    solver : {'lbfgs', 'sgd', 'adam', 'rprop'}, default='adam'
        'sgd' and 'adam' run whole epochs inside one nogil kernel call;
        'lbfgs' drives scipy's L-BFGS-B with a kernel that returns the
        full-batch loss and gradient together; 'rprop' (not in
        scikit-learn) is iRprop- on the full batch, one loss-and-gradient
        kernel call and one update call per epoch.
    alpha : float, default=0.0001
        L2 penalty; the term ``0.5 * alpha * ||W||^2`` is divided by the
        (weighted) number of samples of the batch, as in scikit-learn.
    batch_size : int or 'auto', default='auto'
        Mini-batch size; 'auto' is ``min(200, n_samples)``. ``batch_size=1`` runs
        the online kernel, which updates the weights in place after every
        sample.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Learning-rate schedule of 'sgd'.
    learning_rate_init : float, default=0.001
        Initial step size of 'sgd' and 'adam'.
    power_t : float, default=0.5
        Exponent of the 'invscaling' schedule.
    max_iter : int, default=200
        Maximum number of epochs (stochastic solvers) or iterations (lbfgs).
    shuffle : bool, default=True
        Shuffle the samples every epoch (stochastic solvers).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the shuffles and the early-stopping split;
        an int reproduces scikit-learn's trajectory.
    tol : float, default=1e-4
        Tolerance of the stopping rules.
    verbose : bool or int, default=False
        ``True`` or 1 prints scikit-learn's line per epoch; 2 shows a
        progress bar (tqdm when installed) with the loss, the validation
        score, samples per second and the time left.
    warm_start : bool, default=False
        Start from the previous solution.
    momentum : float, default=0.9
        Momentum of 'sgd'.
    nesterovs_momentum : bool, default=True
        Nesterov momentum for 'sgd'.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data and stop when the
        validation score stops improving; the best weights are restored.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.
    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's moment decay rates.
    epsilon : float, default=1e-8
        Adam's numerical-stability constant.
    n_iter_no_change : int, default=10
        Epochs without improvement by ``tol`` before stopping.
    max_fun : int, default=15000
        Maximum number of loss evaluations of 'lbfgs'.
    leaky_relu_slope : float, default=0.01
        Slope of 'leaky_relu' for negative inputs, in [0, 1) (not in
        scikit-learn).
    l1 : float, default=0.0
        L1 penalty ``l1 * sum |W|`` on the weights (not the biases), divided
        by the batch's sample weight like ``alpha``'s L2 term; its gradient
        is the subgradient ``l1 * sign(W)`` (not in scikit-learn).
    dropout : float, default=0.0
        Share of hidden units dropped for each training sample, in [0, 1);
        kept units are scaled by ``1 / (1 - dropout)`` so prediction uses
        the whole network. The masks are a pure function of
        ``random_state``, the sample's position in training and the unit, so
        a fit is reproducible and the same for any ``n_threads``. Needs
        'sgd' or 'adam' (not in scikit-learn).
    max_grad_norm : float or None, default=None
        Rescale the gradient of each update (all layers, penalties
        included) to at most this Euclidean norm (not in scikit-learn).
    init : {'glorot_uniform', 'lecun', 'he', 'nguyen_widrow'}, \
default='glorot_uniform'
        Weight initialisation (not in scikit-learn). 'glorot_uniform' is
        scikit-learn's; 'lecun' and 'he' draw uniform weights of variance
        ``1 / fan_in`` and ``2 / fan_in`` with zero biases; 'nguyen_widrow'
        rescales each hidden unit's uniform(-0.5, 0.5) weights to norm
        ``0.7 * fan_out ** (1 / fan_in)`` with biases uniform in plus or
        minus that norm, and draws the output layer like 'glorot_uniform'.
    layer_lr : {'uniform', 'fan_in'}, default='uniform'
        'fan_in' scales each layer's step size by ``1 / sqrt(fan_in)`` of
        that layer (not in scikit-learn).
    maxout_pieces : int, default=2
        Linear pieces per unit of the 'maxout' layers, at least 2.
    gtol : float or None, default=None
        Also stop when the Euclidean norm of the full-batch gradient falls
        below ``gtol``: checked every lbfgs iteration and rprop epoch at no
        extra cost, and after each sgd/adam epoch with one extra full-batch
        pass (not in scikit-learn).
    restore_best_weights : bool, default=False
        With a validation set (``validation_data`` given to ``fit``, or
        ``early_stopping=True``), end with the weights of the epoch of
        lowest validation loss (not in scikit-learn; its early stopping
        keeps the best validation *score* weights, which stays the default).
    rprop_eta_minus, rprop_eta_plus : float, default=0.5, 1.2
        Factors by which 'rprop' shrinks a weight's step when its gradient
        changes sign and grows it while the sign holds.
    rprop_step_init, rprop_step_min, rprop_step_max : float, \
default=0.1, 1e-6, 50.0
        Initial step of every weight under 'rprop', and its bounds.
    n_threads : int or None, default=None
        OpenMP threads for training and prediction (not in scikit-learn).
        None follows scikit-learn's convention (``OMP_NUM_THREADS`` and
        threadpoolctl limits, else every core this process may use), -1 means
        every core, a positive int is exact. Small work (small networks and
        batches, online mode) runs on one thread regardless. The fitted weights
        are bitwise identical for every value.
"""

_CLASSIFIER_PARAMS_DOC = """\
    loss : {'log_loss', 'squared_error', 'hinge'}, default='log_loss'
        'squared_error' trains the logistic / softmax outputs on half the
        squared error (the classic sigmoid network); 'hinge' uses linear
        output scores with the multiclass SVM loss
        ``sum_{j != y} max(0, s_j - s_y + 1)`` (binary and multilabel:
        ``max(0, 1 - t s)`` per output, ``t = +-1``), predicts from the
        scores' sign or argmax and has no ``predict_proba``.
    class_weight : None, 'balanced' or dict, default=None
        Per-class weights multiplied into ``sample_weight``; 'balanced' uses
        ``n_samples / (n_classes * bincount(y))``. Single-label targets only.
"""

_REGRESSOR_PARAMS_DOC = """    huber_delta : float, default=1.0
        Where the 'huber' loss turns from quadratic to linear (not in
        scikit-learn).
"""

_ATTRS_DOC = """
    Attributes
    ----------
    loss_ : float
        Loss of the last epoch (stochastic solvers: mean of the batch losses).
    best_loss_ : float or None
        Smallest epoch loss; None with early stopping.
    loss_curve_ : list of float
        Loss of every epoch (stochastic solvers and rprop).
    validation_scores_ : list of float or None
        Validation score of every epoch with early stopping.
    validation_loss_curve_ : list of float or None
        Data loss on the validation set after every epoch (lbfgs: every
        iteration) whenever one is used: ``validation_data`` or the
        early-stopping split. On the scale of ``loss_curve_``'s data term.
    best_validation_score_ : float or None
        Best validation score with early stopping.
    t_ : int
        Number of training samples seen by the stochastic solvers.
    coefs_ : list of ndarray
        Weight matrices, ``coefs_[i]`` of shape ``(units[i], units[i + 1])``.
        Assigning new arrays changes what predict and further training use.
    intercepts_ : list of ndarray
        Bias vectors.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str
        Feature names, when X had string column names.
    n_iter_ : int
        Epochs (or lbfgs iterations) run by the last fit.
    n_layers_ : int
        Number of layers, input and output included.
    n_outputs_ : int
        Number of outputs.
    out_activation_ : str
        Output activation.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = (
        """Multi-layer perceptron classifier trained by cbackprop's Cython kernels.

    A drop-in replacement for :class:`sklearn.neural_network.MLPClassifier`:
    same parameters, attributes and, for float64 data and an integer
    ``random_state``, the same training trajectory.

    Parameters
    ----------"""
        + _PARAMS_DOC
        + _CLASSIFIER_PARAMS_DOC
        + _ATTRS_DOC
        + """    classes_ : ndarray or list of ndarray
        Class labels.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from cbackprop import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(max_iter=50, random_state=0).fit(X / 16, y)
    >>> clf.score(X / 16, y) > 0.95
    True
    """
    )

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        n_threads=None,
        leaky_relu_slope=0.01,
        l1=0.0,
        dropout=0.0,
        max_grad_norm=None,
        init="glorot_uniform",
        layer_lr="uniform",
        maxout_pieces=2,
        gtol=None,
        restore_best_weights=False,
        rprop_eta_minus=0.5,
        rprop_eta_plus=1.2,
        rprop_step_init=0.1,
        rprop_step_min=1e-6,
        rprop_step_max=50.0,
        loss="log_loss",
        class_weight=None,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss=loss,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            n_threads=n_threads,
            leaky_relu_slope=leaky_relu_slope,
            l1=l1,
            dropout=dropout,
            max_grad_norm=max_grad_norm,
            init=init,
            layer_lr=layer_lr,
            maxout_pieces=maxout_pieces,
            gtol=gtol,
            restore_best_weights=restore_best_weights,
            rprop_eta_minus=rprop_eta_minus,
            rprop_eta_plus=rprop_eta_plus,
            rprop_step_init=rprop_step_init,
            rprop_step_min=rprop_step_min,
            rprop_step_max=rprop_step_max,
        )
        self.class_weight = class_weight

    def _validate_params(self):
        _check_option("loss", self.loss, {"log_loss", "squared_error", "hinge"})
        cw = self.class_weight
        if cw is not None and not isinstance(cw, dict) and not (
                isinstance(cw, str) and cw == "balanced"):
            raise ValueError(
                "The 'class_weight' parameter must be None, 'balanced' or a dict "
                f"mapping class labels to weights, got {cw!r}."
            )
        super()._validate_params()

    def _check_proba(self):
        if self.loss == "hinge":
            raise AttributeError(
                "probability estimates are not available for loss='hinge', whose "
                "outputs are margins; use predict, or fit with loss='log_loss' or "
                "'squared_error'."
            )
        return True

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate(self, X, y, accept_sparse=["csr", "csc"],
                         multi_output=True, dtype=(np.float64, np.float32),
                         reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes "
                        f"as in the previous call to fit. Previously got "
                        f"{self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {classes}."
                )
        return X, self._one_hot(y)

    def _one_hot(self, y):
        """Indicator matrix of ``y`` over ``classes_`` (what the label
        binarizer's ``transform`` gives, as bool).  Plain multiclass labels
        take a direct route: the binarizer re-checks the target type on
        every call, a millisecond of each fit."""
        lb = self._label_binarizer
        if lb.y_type_ == "multiclass" and y.ndim == 1 and y.dtype.kind in "iuf":
            classes = lb.classes_
            pos = np.searchsorted(classes, y)
            np.minimum(pos, len(classes) - 1, out=pos)
            if np.array_equal(classes[pos], y):
                Y = np.zeros((y.shape[0], len(classes)), dtype=bool)
                Y[np.arange(y.shape[0]), pos] = True
                return Y
        return lb.transform(y).astype(bool)

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
            Predicted classes (an indicator matrix for multilabel targets).
        """
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        # Hinge outputs are margins, whose decision threshold is 0.
        threshold = 0.0 if self.loss == "hinge" else None
        return self._label_binarizer.inverse_transform(y_pred, threshold)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Run one epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : array-like of shape (n_samples,)
            Target labels.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights.
        classes : array of shape (n_classes,), default=None
            Every class of the whole data; required on the first call.

        Returns
        -------
        self : object
            The updated estimator.
        """
        self._validate_params()
        first = False
        if getattr(self, "classes_", None) is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            if getattr(self, "classes_", None) is not None:
                if not np.array_equal(self.classes_, unique_labels(classes)):
                    raise ValueError(
                        f"`classes={classes!r}` is not the same as on last call to "
                        f"partial_fit, was: {self.classes_!r}"
                    )
            else:
                self.classes_ = unique_labels(classes)
                first = True
        if first:
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    @available_if(lambda est: est._check_proba())
    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y_prob : ndarray of shape (n_samples, n_classes)
            Probabilities, columns ordered as ``classes_``.
        """
        check_is_fitted(self)
        y_pred = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    @available_if(lambda est: est._check_proba())
    def predict_log_proba(self, X):
        """Log of the class probabilities, computed from the output scores.

        Unlike ``log(predict_proba(X))`` this never returns -inf: the logs
        are taken as log-softmax / log-sigmoid of the last layer's scores.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        log_y_prob : ndarray of shape (n_samples, n_classes)
            Log-probabilities, columns ordered as ``classes_``.
        """
        check_is_fitted(self)
        X = _validate(self, X, accept_sparse=["csr", "csc"], reset=False,
                      dtype=(np.float64, np.float32))
        z = self._forward_raw(X, "identity")
        if self.out_activation_ == "softmax":
            return log_softmax(z, axis=1)
        if self.n_outputs_ == 1:
            z = z.ravel()
            return np.vstack([log_expit(-z), log_expit(z)]).T
        return log_expit(z)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = (
        """Multi-layer perceptron regressor trained by cbackprop's Cython kernels.

    A drop-in replacement for :class:`sklearn.neural_network.MLPRegressor`.

    Parameters
    ----------
    loss : {'squared_error', 'poisson', 'absolute_error', 'huber'}, \
default='squared_error'
        'poisson' uses an exponential output and needs non-negative targets;
        'absolute_error' (sum of ``|y - p|`` over outputs) and 'huber' (half
        squared error within ``huber_delta``, linear beyond) are not in
        scikit-learn and resist outliers."""
        + _PARAMS_DOC
        + _REGRESSOR_PARAMS_DOC
        + _ATTRS_DOC
        + """
    Examples
    --------
    >>> import numpy as np
    >>> from cbackprop import MLPRegressor
    >>> X = np.linspace(-1, 1, 200).reshape(-1, 1)
    >>> reg = MLPRegressor(solver="lbfgs", random_state=0).fit(X, X.ravel() ** 2)
    >>> reg.score(X, X.ravel() ** 2) > 0.9
    True
    """
    )

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        n_threads=None,
        leaky_relu_slope=0.01,
        l1=0.0,
        dropout=0.0,
        max_grad_norm=None,
        init="glorot_uniform",
        layer_lr="uniform",
        maxout_pieces=2,
        gtol=None,
        restore_best_weights=False,
        rprop_eta_minus=0.5,
        rprop_eta_plus=1.2,
        rprop_step_init=0.1,
        rprop_step_min=1e-6,
        rprop_step_max=50.0,
        huber_delta=1.0,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss=loss,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
            n_threads=n_threads,
            leaky_relu_slope=leaky_relu_slope,
            l1=l1,
            dropout=dropout,
            max_grad_norm=max_grad_norm,
            init=init,
            layer_lr=layer_lr,
            maxout_pieces=maxout_pieces,
            gtol=gtol,
            restore_best_weights=restore_best_weights,
            rprop_eta_minus=rprop_eta_minus,
            rprop_eta_plus=rprop_eta_plus,
            rprop_step_init=rprop_step_init,
            rprop_step_min=rprop_step_min,
            rprop_step_max=rprop_step_max,
        )
        self.huber_delta = huber_delta

    def _validate_params(self):
        _check_option("loss", self.loss,
                      {"squared_error", "poisson", "absolute_error", "huber"})
        _check_scalar("huber_delta", self.huber_delta, Real, 0, closed="neither")
        super()._validate_params()

    def _validate_input(self, X, y, incremental, reset):
        X, y = _validate(self, X, y, accept_sparse=["csr", "csc"],
                         multi_output=True, y_numeric=True,
                         dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def predict(self, X):
        """Predict targets.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Predicted values.
        """
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward_pass_fast(X, check_input=check_input)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """Run one epoch over the given data.

        Only the stochastic solvers have it: an lbfgs regressor has no
        ``partial_fit`` (scikit-learn exposes one that cannot work).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative sample weights.

        Returns
        -------
        self : object
            The updated estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
