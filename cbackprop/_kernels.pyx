# cython: language_level=3
"""Typed ``nogil`` kernels: forward pass, deltas, gradient accumulation and the
optimiser updates, for whole epochs at a time.

Layout
------
All parameters live in one flat vector ``params`` in scikit-learn's packing
order: every coefficient matrix (row-major, ``fan_in x fan_out``) one after the
other, then every intercept vector.  ``coef_off[l]`` and ``icpt_off[l]`` say
where layer ``l`` starts.  The optimiser state (velocities, or Adam's moments)
and the gradient use the same layout, so one loop over the vector updates it.

Activations and deltas of a block of up to ``cap`` rows are stored layer by
layer: layer ``l`` (``1 <= l <= L``) starts at ``cap * (units[1] + ... +
units[l-1])`` and row ``r`` of it at ``+ r * units[l]``.

Determinism
-----------
Every piece of parallel work is cut the same way whatever the number of
threads: rows in chunks whose size depends only on the batch size, weight
gradients in blocks of ``GRAD_BLOCK`` input units (narrow layers also cut by
output columns, from the shapes alone) or, for small networks on dense
mini-batches, chunk by chunk (see _chunk_grad), updates in blocks of at most
``UPDATE_BLOCK`` parameters (finer for small networks, from the shapes
alone); a wide single hidden layer on dense mini-batches in blocks of its
units (see split_bounds and _split_batch).  Each piece is computed by one
thread in a fixed order and reductions over pieces run in index order, so
the fitted weights are bitwise the same for any thread count.

Layer 0 and zeros
-----------------
The first layer reads only the non-zero inputs of CSR matrices (every mode;
zero-heavy dense X is converted to CSR once per fit by the estimators) and,
in online mode, of dense rows too (images, one-hot columns):
``z = b + sum_{x_i != 0} x_i W[i, :]``, and ``dW[i, :] += x_i delta`` only for
non-zero ``x_i``.  Both products keep a whole output row in vector registers
across the list of non-zeros (``cbp_sprows`` / ``cbp_spgrad``); they are
then bound by the cache bandwidth of reading one row of ``W`` (or of the
deltas) per non-zero, which is why BLAS on the dense block wins again above
about 25% non-zeros in batch mode (``benches/density.py``).  In online SGD
the rows of ``W0`` whose input is zero only feel weight decay and momentum,
a linear map ``M`` per step; they are brought up to date lazily with ``M^k``
when next needed, together with their share of the L2 term of the reported
loss.

Every entry point returns an integer status; Python turns it into an exception.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport sqrt, pow, isfinite
from libc.stdint cimport int32_t, INT32_MAX, uint32_t, uint64_t
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.string cimport memset, memcpy

from cbackprop._blas cimport mm_own, mm_rowmajor, own_gemm_on, NoTrans, Trans

import numpy as np

cdef extern from "cbp_omp.h" nogil:
    int omp_get_thread_num()
    int omp_get_num_threads()
    double omp_get_wtime()
    void cbp_barrier()
    void cbp_flag_raise(int* flag, int level)
    void cbp_flags_wait(const int* flags, int n, int stride, int level)
    bint cbp_flags_reached(const int* flags, int n, int stride, int level)


cdef extern from "cbp_math.h" nogil:
    void cbp_hidden_forward_d(int code, double param, double* z, Py_ssize_t n)
    void cbp_hidden_forward_f(int code, double param, float* z, Py_ssize_t n)
    void cbp_hidden_backward_d(int code, double param, const double* a, double* d,
                               Py_ssize_t n)
    void cbp_hidden_backward_f(int code, double param, const float* a, float* d,
                               Py_ssize_t n)
    void cbp_output_forward_d(int code, double* z, Py_ssize_t r, Py_ssize_t c)
    void cbp_output_forward_f(int code, float* z, Py_ssize_t r, Py_ssize_t c)
    double cbp_onehot_loss_delta_d(Py_ssize_t nr, Py_ssize_t n, const double* p,
                                   const int32_t* cls, const Py_ssize_t* rows,
                                   const double* sw, double* d)
    double cbp_onehot_loss_delta_f(Py_ssize_t nr, Py_ssize_t n, const float* p,
                                   const int32_t* cls, const Py_ssize_t* rows,
                                   const float* sw, float* d)
    double cbp_row_loss_d(int loss, double param, const double* p, const double* y,
                          Py_ssize_t c)
    double cbp_row_loss_f(int loss, double param, const float* p, const float* y,
                          Py_ssize_t c)
    void cbp_output_delta_d(int loss, int out, double param, const double* p,
                            const double* y, double* d, Py_ssize_t c)
    void cbp_output_delta_f(int loss, int out, double param, const float* p,
                            const float* y, float* d, Py_ssize_t c)
    double cbp_logsumexp_d(const double* z, Py_ssize_t n)

cdef extern from "cbp_gemm.h" nogil:
    void cbp_row_masks_d(Py_ssize_t n, const double* X, Py_ssize_t nf, uint64_t* out)
    void cbp_row_masks_f(Py_ssize_t n, const float* X, Py_ssize_t nf, uint64_t* out)
    Py_ssize_t cbp_gather_cols_d(Py_ssize_t nr, const Py_ssize_t* rows, const double* X,
                                 Py_ssize_t nf, const uint64_t* masks, double* xbuf,
                                 int* idx, uint64_t* words, void* perms,
                                 Py_ssize_t min_drop)
    Py_ssize_t cbp_gather_cols_f(Py_ssize_t nr, const Py_ssize_t* rows, const float* X,
                                 Py_ssize_t nf, const uint64_t* masks, float* xbuf,
                                 int* idx, uint64_t* words, void* perms,
                                 Py_ssize_t min_drop)


cdef extern from "cbp_loops.h" nogil:
    ctypedef int32_t cbp_idx
    int cbp_all_finite_d(Py_ssize_t n, const double* x)
    int cbp_all_finite_f(Py_ssize_t n, const float* x)
    void cbp_axpy_d(Py_ssize_t n, double a, const double* x, double* y)
    void cbp_axpy_f(Py_ssize_t n, float a, const float* x, float* y)
    void cbp_add_rows_d(Py_ssize_t nr, Py_ssize_t m, const double* b, double* z,
                        Py_ssize_t ldz, int relu)
    void cbp_add_rows_f(Py_ssize_t nr, Py_ssize_t m, const float* b, float* z,
                        Py_ssize_t ldz, int relu)
    void cbp_sum_rows_d(Py_ssize_t nr, Py_ssize_t m, const double* d, Py_ssize_t ldd,
                        double* g, int accumulate)
    void cbp_sum_rows_f(Py_ssize_t nr, Py_ssize_t m, const float* d, Py_ssize_t ldd,
                        float* g, int accumulate)
    double cbp_dot_d(Py_ssize_t n, const double* x, const double* y)
    float cbp_dot_f(Py_ssize_t n, const float* x, const float* y)
    double cbp_sumsq_d(Py_ssize_t n, const double* x)
    double cbp_sumsq_f(Py_ssize_t n, const float* x)
    double cbp_penalty_d(Py_ssize_t n, const double* w, double alpha, double l1)
    double cbp_penalty_f(Py_ssize_t n, const float* w, double alpha, double l1)
    double cbp_sgd_ssq_d(Py_ssize_t n, double* w, double* v, double a, const double* x,
                         double alpha, double lr, double mom, int nesterov)
    double cbp_sgd_ssq_f(Py_ssize_t n, float* w, float* v, float a, const float* x,
                         float alpha, float lr, float mom, int nesterov)
    double cbp_gradsq_d(Py_ssize_t n, double c, const double* x, const double* w,
                        double alpha, double l1)
    double cbp_gradsq_f(Py_ssize_t n, float c, const float* x, const float* w,
                        float alpha, float l1)
    double cbp_outer_gradsq_d(Py_ssize_t n, Py_ssize_t m, const double* a,
                              const double* d, const double* W, double alpha,
                              double l1)
    double cbp_outer_gradsq_f(Py_ssize_t n, Py_ssize_t m, const float* a,
                              const float* d, const float* W, float alpha, float l1)
    void cbp_sgd_d(Py_ssize_t n, double* w, double* v, double a, const double* x,
                   double alpha, double l1, double sw, double lr, double mom,
                   int nesterov)
    void cbp_sgd_f(Py_ssize_t n, float* w, float* v, float a, const float* x,
                   float alpha, float l1, float sw, float lr, float mom, int nesterov)
    double cbp_adam_ssq_d(Py_ssize_t n, double* w, double* m, double* v, double a,
                          double* x, const double* x2, double alpha, double sw,
                          double lr_t, double b1, double b2, double eps)
    double cbp_adam_ssq_f(Py_ssize_t n, float* w, float* m, float* v, float a,
                          float* x, const float* x2, float alpha, float sw,
                          float lr_t, float b1, float b2, float eps)
    void cbp_adam_d(Py_ssize_t n, double* w, double* m, double* v, double a,
                    const double* x, double alpha, double l1, double sw, double lr_t,
                    double b1, double b2, double eps)
    void cbp_adam_f(Py_ssize_t n, float* w, float* m, float* v, float a,
                    const float* x, float alpha, float l1, float sw, float lr_t,
                    float b1, float b2, float eps)
    void cbp_dropout_row_d(Py_ssize_t n, unsigned long long prefix, double rate,
                           double scale, double* a, double* gate)
    void cbp_dropout_row_f(Py_ssize_t n, unsigned long long prefix, double rate,
                           float scale, float* a, float* gate)
    void cbp_maxout_forward_d(Py_ssize_t nr, Py_ssize_t u, Py_ssize_t k,
                              const double* z, Py_ssize_t ldz, double* a,
                              Py_ssize_t lda)
    void cbp_maxout_forward_f(Py_ssize_t nr, Py_ssize_t u, Py_ssize_t k,
                              const float* z, Py_ssize_t ldz, float* a, Py_ssize_t lda)
    void cbp_maxout_backward_d(Py_ssize_t nr, Py_ssize_t u, Py_ssize_t k,
                               const double* z, Py_ssize_t ldz, const double* g,
                               Py_ssize_t ldg, double* dz)
    void cbp_maxout_backward_f(Py_ssize_t nr, Py_ssize_t u, Py_ssize_t k,
                               const float* z, Py_ssize_t ldz, const float* g,
                               Py_ssize_t ldg, float* dz)
    Py_ssize_t cbp_compact_d(Py_ssize_t n, const double* x, cbp_idx* idx, double* val)
    void cbp_prefetch(const void* p, Py_ssize_t nbytes)
    void cbp_claim(void* p, Py_ssize_t nbytes)
    Py_ssize_t cbp_compact_f(Py_ssize_t n, const float* x, cbp_idx* idx, float* val)
    Py_ssize_t cbp_compact_plain_d(Py_ssize_t n, const double* x, cbp_idx* idx,
                                   double* val)
    Py_ssize_t cbp_compact_plain_f(Py_ssize_t n, const float* x, cbp_idx* idx,
                                   float* val)
    int cbp_has_avx512()
    int cbp_has_prefetchw()
    void cbp_sprows_d(Py_ssize_t nr, const Py_ssize_t* rs, const Py_ssize_t* re,
                      const cbp_idx* idx, const double* val, const double* W,
                      Py_ssize_t m, Py_ssize_t ldw, Py_ssize_t wlen, const double* b,
                      double* z, Py_ssize_t ldz)
    void cbp_sprows_f(Py_ssize_t nr, const Py_ssize_t* rs, const Py_ssize_t* re,
                      const cbp_idx* idx, const float* val, const float* W,
                      Py_ssize_t m, Py_ssize_t ldw, Py_ssize_t wlen, const float* b,
                      float* z, Py_ssize_t ldz)
    ctypedef struct cbp_fent_f:
        cbp_idx row
        float val
    ctypedef struct cbp_fent_d:
        cbp_idx row
        double val
    void cbp_spgrad_d(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t jb, Py_ssize_t je,
                      const Py_ssize_t* fptr, const cbp_fent_d* fe, const double* D,
                      Py_ssize_t m, Py_ssize_t ldd, Py_ssize_t dlen, double* G,
                      int accumulate)
    void cbp_spgrad_f(Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t jb, Py_ssize_t je,
                      const Py_ssize_t* fptr, const cbp_fent_f* fe, const float* D,
                      Py_ssize_t m, Py_ssize_t ldd, Py_ssize_t dlen, float* G,
                      int accumulate)
    void cbp_gemv_skip_d(Py_ssize_t n, const double* a, const double* W, Py_ssize_t m,
                         const double* b, double* z)
    void cbp_gemv_skip_f(Py_ssize_t n, const float* a, const float* W, Py_ssize_t m,
                         const float* b, float* z)
    void cbp_gemv_t_d(Py_ssize_t n, Py_ssize_t m, const double* W, const double* d,
                      double* out)
    void cbp_gemv_t_f(Py_ssize_t n, Py_ssize_t m, const float* W, const float* d,
                      float* out)
    double cbp_sgd_outer_d(Py_ssize_t n, Py_ssize_t m, const double* a, const double* d,
                           double* W, double* V, double alpha, double l1, double sw,
                           double lr, double mom, int nesterov)
    double cbp_sgd_outer_f(Py_ssize_t n, Py_ssize_t m, const float* a, const float* d,
                           float* W, float* V, float alpha, float l1, float sw,
                           float lr, float mom, int nesterov)
    double cbp_adam_outer_d(Py_ssize_t n, Py_ssize_t m, const double* a,
                            const double* d, double* W, double* M1, double* M2,
                            double alpha, double l1, double sw, double lr_t, double b1,
                            double b2, double eps)
    double cbp_adam_outer_f(Py_ssize_t n, Py_ssize_t m, const float* a, const float* d,
                            float* W, float* M1, float* M2, float alpha, float l1,
                            float sw, float lr_t, float b1, float b2, float eps)
    double cbp_lazy_forward_d(Py_ssize_t n, const cbp_idx* rows, const double* vals,
                              Py_ssize_t* last, Py_ssize_t t, const double* powers,
                              const double* prefix, double* W, double* V, Py_ssize_t m,
                              const double* b, double* z, double* ssq)
    double cbp_lazy_forward_f(Py_ssize_t n, const cbp_idx* rows, const float* vals,
                              Py_ssize_t* last, Py_ssize_t t, const double* powers,
                              const double* prefix, float* W, float* V, Py_ssize_t m,
                              const float* b, float* z, double* ssq)
    void cbp_lazy_step_d(Py_ssize_t n, const cbp_idx* rows, const double* vals,
                         Py_ssize_t* last, Py_ssize_t t, double* W, double* V,
                         Py_ssize_t m, const double* d, double alpha, double lr,
                         double mom, int nesterov)
    void cbp_lazy_step_f(Py_ssize_t n, const cbp_idx* rows, const float* vals,
                         Py_ssize_t* last, Py_ssize_t t, float* W, float* V,
                         Py_ssize_t m, const float* d, float alpha, float lr,
                         float mom, int nesterov)
    double cbp_lazy_flush_d(Py_ssize_t n_rows, Py_ssize_t* last, Py_ssize_t t,
                            const double* powers, const double* prefix, double* W,
                            double* V, Py_ssize_t m)
    double cbp_lazy_flush_f(Py_ssize_t n_rows, Py_ssize_t* last, Py_ssize_t t,
                            const double* powers, const double* prefix, float* W,
                            float* V, Py_ssize_t m)

cdef extern from "Python.h":
    # Declared here without Cython's ``except -1`` so that a pending
    # KeyboardInterrupt can be turned into a status code and cleared.
    int PyErr_CheckSignals()
    void PyErr_Clear()

cdef extern from "cbp_rng.h" nogil:
    double cbp_rng_uniform(unsigned long long seed, unsigned long long a,
                           unsigned long long b, unsigned long long c)
    unsigned long long cbp_rng_prefix(unsigned long long seed, unsigned long long a,
                                      unsigned long long b)
    double cbp_rng_unit(unsigned long long prefix, unsigned long long c)

# Status codes shared with cbackprop/_mlp.py.
cdef enum:
    STATUS_OK = 0
    STATUS_NONFINITE = 1
    STATUS_INTERRUPTED = 2

cdef enum:
    OPT_SGD = 0
    OPT_ADAM = 1

# Fixed work partition (see "Determinism" above).
cdef enum:
    GRAD_BLOCK = 64       # input units per weight-gradient block
    GB_FIELDS = 5         # (layer, i0, i1, j0, j1) per weight-gradient block
    UB_FIELDS = 4         # (start, end, layer, is_coef) per update block
    UPDATE_BLOCK = 16384  # most parameters per update block
    SUPER_ROWS = 2048     # rows per pass when a batch is larger than this
    LINE_BYTES = 64       # cache line, and the width of the vector loads

# Online mode looks for Ctrl-C every this many samples, mini-batch mode about
# as often (and at least once per batch).
cdef Py_ssize_t SIGNAL_EVERY = 64

# Threads pay only when a batch holds enough work to hide the three or four
# fork-joins it costs.  Work is the forward pass's multiply-adds per batch,
# the first layer's counted over the stored non-zeros of CSR input.  Measured
# on the development machine (2 cores, min of 11 alternating fits, 2 threads
# against 1): 4-500-1 lost at 160k (0.78x) and 500k (0.97x); load_digits'
# 64-100-10 lost at 237k (batch 32, 0.96x) and won at 1.48M (batch 200,
# 1.27x); 784-100-10 on MNIST (150 non-zeros a row) won at 1.0M (batch 64,
# 1.18x) and 2.0M (batch 128, 1.40x).  Below that, at batch 32 (0.5M), it won
# 1.02-1.13x in quiet spells but lost 2x while the VM's host was busy (each
# fork-join then waited tens of microseconds for the second core).
cdef double PARALLEL_MIN_BATCH_WORK = 1.0e6

# Parameters below which the optimiser step runs on one thread.  Adam on
# load_digits' 7,510 parameters takes about 15 us a batch on one thread,
# several times the cost of waking a second one.
cdef Py_ssize_t STEP_MIN_PARALLEL = 4096


# Step inside the weight-gradient pass when it can (see Fuse); tests turn it
# off to check that the weights are bitwise the same either way.
cdef bint FUSE_STEP = True


def _set_fused_step(bint on):
    """Turn the in-pass optimiser step on or off; returns the old setting."""
    global FUSE_STEP
    old = FUSE_STEP
    FUSE_STEP = on
    return old


# Mini-batches on several threads in one region (see _merged_pass):
# 0 off, 1 on, 2 on with every step of a layer above the first put off to
# after the tasks (for the tests: the path that real runs take only when a
# chunk is slow).  MERGED_PASSES counts the merged passes run, PUT_OFF the
# steps they put off.
cdef int MERGE_MODE = 1
cdef long long MERGED_PASSES = 0
cdef long long PUT_OFF = 0


def _set_merged_pass(int mode):
    """Set the merged-pass mode (0 off, 1 on, 2 on, steps of layers >= 1
    put off); returns the old mode."""
    global MERGE_MODE
    old = MERGE_MODE
    MERGE_MODE = mode
    return old


def _merged_passes():
    """How many merged passes have run in this process, and how many
    steps they put off."""
    return MERGED_PASSES, PUT_OFF


cdef bint UNIT_SPLIT = True
cdef bint LOCAL_STEP = True
cdef long long LOCAL_STEPS = 0


def _set_local_step(bint on):
    """Whether chunk-local gradients are stepped in the chunks' region on
    several threads (see _local_pass), for tests and measurements: the
    weights are the same either way.  Returns the old setting."""
    global LOCAL_STEP
    old = LOCAL_STEP
    LOCAL_STEP = on
    return old


def _local_steps():
    """Batches stepped inside their chunks' region so far (see _local_pass)."""
    return LOCAL_STEPS


def _set_unit_split(bint on):
    """Turn unit-split batches (see _split_batch) on or off; returns the old
    setting."""
    global UNIT_SPLIT
    old = UNIT_SPLIT
    UNIT_SPLIT = on
    return old


def _set_parallel_min_work(double work):
    """Set the threading threshold (forward multiply-adds per batch) and
    return the previous one; tests use 0 to run small problems threaded."""
    global PARALLEL_MIN_BATCH_WORK
    old = PARALLEL_MIN_BATCH_WORK
    PARALLEL_MIN_BATCH_WORK = work
    return old


cdef int _threads_for(const Net* net, const Source* src, Py_ssize_t n_rows,
                      Py_ssize_t nb, int n_threads) noexcept nogil:
    """Thread count for blocks of ``nb`` rows of an ``n_rows``-row input: 1
    when threads would not pay."""
    cdef double work
    cdef Py_ssize_t li
    if n_threads <= 1:
        return 1
    if src.csr and n_rows > 0:
        work = (<double>(src.ptr[n_rows] - src.ptr[0])) / n_rows * net.zw[1]
    else:
        work = (<double>net.units[0]) * net.zw[1]
    for li in range(1, net.n_layers):
        work += (<double>net.units[li]) * net.zw[li + 1]
    if nb * work < PARALLEL_MIN_BATCH_WORK:
        return 1
    return n_threads

GRAD_BLOCK_ROWS = GRAD_BLOCK
GRAD_BLOCK_FIELDS = GB_FIELDS
UPDATE_BLOCK_FIELDS = UB_FIELDS
SUPER_BLOCK_ROWS = SUPER_ROWS
UPDATE_BLOCK_SIZE = UPDATE_BLOCK
CACHE_LINE_BYTES = LINE_BYTES

cdef enum:
    ACT_RELU = 3          # CBP_ACT_RELU of cbp_math.h
    ACT_MAXOUT = 8        # CBP_ACT_MAXOUT of cbp_math.h
    OUT_SOFTMAX = 2       # CBP_OUT_SOFTMAX
    LOSS_LOG = 1          # CBP_LOSS_LOG


cdef struct Net:
    # Layer l (0 = input, L = output) has units[l] activations and
    # zw[l] = units[l] * pieces pre-activations (maxout: pieces > 1).  In the
    # block buffers a row of layer l takes stride[l] values: the activations
    # first, then (maxout only) the zw[l] pre-activations at zoff[l].  The
    # weights of layer l are a units[l] x zw[l + 1] matrix.
    Py_ssize_t n_layers        # weight layers L
    const Py_ssize_t* units
    const Py_ssize_t* zw
    const Py_ssize_t* stride
    const Py_ssize_t* zoff
    const Py_ssize_t* act      # hidden activation code of layer l (1..L-1)
    const double* act_param    # its parameter (leaky-relu slope)
    const double* lr_mult      # learning-rate factor of the weights of layer l
    const Py_ssize_t* coef_off
    const Py_ssize_t* icpt_off
    Py_ssize_t n_coef          # coefficients come first, intercepts after
    Py_ssize_t n_params
    Py_ssize_t total_units     # stride[1] + ... + stride[L]
    int out_act
    int loss
    double loss_param          # Huber's delta
    double drop                # dropout rate of hidden units; 0 = none
    unsigned long long seed    # dropout key
    long long step0            # sample counter of position 0 of this call
    # A copy of the first layer's weights whose rows start on 64-byte
    # boundaries, ldw0 apart, for the sparse forward pass (NULL: none; see
    # _attach_w0).  The optimiser step keeps it in sync.
    void* w0
    Py_ssize_t ldw0
    # Transposed copies of the narrow layers' weights for the backward pass
    # (NULL: none; see _attach_wt), refreshed by _accumulate.
    void* wt
    # Chunk-local gradients (NULL: none; see _chunk_grad): room for the
    # partial gradient of every row chunk of a batch, pg_stride apart.
    void* pgrad
    Py_ssize_t pg_stride
    # Room for every row chunk's list of the input columns that are not
    # all zero in its rows, cols_ld apart (NULL: whole rows; see
    # _attach_cols).
    int* cols
    Py_ssize_t cols_ld
    const uint64_t* row_masks   # see row_masks
    # Each sample's class when the targets are one-hot and the output is
    # softmax with log loss (NULL: read the targets; see run_epoch).
    const int32_t* ycls


cdef struct Optim:
    int kind
    double lr           # SGD: current rate; Adam: learning_rate_init
    double momentum
    bint nesterov
    double beta1
    double beta2
    double eps
    double alpha        # L2 strength
    double l1           # L1 strength
    double clip         # max global gradient norm; 0 = no clipping
    long long t         # Adam step counter, carried across calls


cdef struct Fuse:
    # The optimiser step made inside the weight-gradient pass, each block of
    # parameters right after its gradient (see _block_grad): nothing reads
    # the weights there, and the block is still in cache.  Set up by the
    # caller; ``done`` tells it whether the pass stepped.
    Optim* o
    void* params        # floating*: the parameters of the pass
    void* s1            # optimiser state (floating*)
    void* s2
    double* pen         # weight penalty before the step, per gradient task
    bint wt_fresh       # the transposed copies (see WT_MAX_OUT) hold the weights
    double lr_t         # set by the pass
    double sw_sum       # set by the pass
    bint done
    double pen_total    # set by the pass when done: the penalties' sum
    # Chunk-local gradients (dense input) left unsummed by the pass: the
    # step sums each block just before stepping it (see _apply_step).
    Py_ssize_t pending
    # Or, when ublocks is not NULL and the chunks run on several threads,
    # the pass sums and steps them itself, in the chunks' region (see
    # _local_pass); bpen: room for a penalty per update block.
    const Py_ssize_t* ublocks
    Py_ssize_t n_ublocks
    double* bpen


cdef struct Source:
    # Where input rows come from.
    bint csr                # CSR arrays (x = data) instead of a dense X
    Py_ssize_t n_features
    const void* x           # dense row-major X (floating*), or CSR data
    const cbp_idx* ind      # CSR column indices
    const Py_ssize_t* ptr   # CSR row pointers


cdef struct SpBatch:
    # The non-zeros of the rows of one block: row r holds entries
    # rs[r] .. re[r] of (idx, val); and the same entries by feature
    # (fptr, and fent's (row, value) records: cbp_fent_f / cbp_fent_d, two
    # values of the dtype each; rows in increasing order) for X^T delta.
    Py_ssize_t* rs
    Py_ssize_t* re
    const cbp_idx* idx
    const void* val
    Py_ssize_t* fptr
    void* fent
    # Full passes over a fixed CSR X (full batch, lbfgs, rprop) keep the
    # by-feature copy of each of their ``n_keep`` blocks of ``cap``
    # consecutive rows: the copies are the same in every pass, and making
    # one costs about as much as the block's forward pass.  ``kept[b]`` is
    # the row count of block b's stored copy (0: none yet); the regions
    # start at the ``*0`` pointers.
    Py_ssize_t n_keep
    Py_ssize_t* kept
    Py_ssize_t* fptr0
    void* fent0
    # Mini-batches (n_keep == 0) have two slots of by-feature buffers: while
    # a batch's weight gradients are made, one task sorts the next batch's
    # rows into the other slot, so the sort is off the forward pass (where
    # one task among a few row chunks left a thread idle).  ``ahead`` is the
    # row list that slot ``ahead_slot`` was made for (NULL: none).
    Py_ssize_t nnz_cap
    const Py_ssize_t* ahead
    Py_ssize_t ahead_nb
    int ahead_slot


# ---------------------------------------------------------------------------
# Dtype dispatch of the C helpers.
# ---------------------------------------------------------------------------

cdef inline void _hidden_forward(const Net* net, Py_ssize_t layer, floating* z,
                                 Py_ssize_t n) noexcept nogil:
    if floating is float:
        cbp_hidden_forward_f(<int>net.act[layer], net.act_param[layer], z, n)
    else:
        cbp_hidden_forward_d(<int>net.act[layer], net.act_param[layer], z, n)


cdef inline void _hidden_backward(const Net* net, Py_ssize_t layer, const floating* a,
                                  floating* d, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cbp_hidden_backward_f(<int>net.act[layer], net.act_param[layer], a, d, n)
    else:
        cbp_hidden_backward_d(<int>net.act[layer], net.act_param[layer], a, d, n)


cdef inline void _output_forward(int code, floating* z, Py_ssize_t r,
                                 Py_ssize_t c) noexcept nogil:
    if floating is float:
        cbp_output_forward_f(code, z, r, c)
    else:
        cbp_output_forward_d(code, z, r, c)


cdef inline double _row_loss(const Net* net, const floating* p, const floating* y,
                             Py_ssize_t c) noexcept nogil:
    if floating is float:
        return cbp_row_loss_f(net.loss, net.loss_param, p, y, c)
    else:
        return cbp_row_loss_d(net.loss, net.loss_param, p, y, c)


cdef inline void _output_delta(const Net* net, const floating* p, const floating* y,
                               floating* d, Py_ssize_t c) noexcept nogil:
    if floating is float:
        cbp_output_delta_f(net.loss, net.out_act, net.loss_param, p, y, d, c)
    else:
        cbp_output_delta_d(net.loss, net.out_act, net.loss_param, p, y, d, c)


cdef inline void _axpy(Py_ssize_t n, floating a, const floating* x,
                       floating* y) noexcept nogil:
    if floating is float:
        cbp_axpy_f(n, a, x, y)
    else:
        cbp_axpy_d(n, a, x, y)


cdef inline void _add_rows(Py_ssize_t nr, Py_ssize_t m, const floating* b, floating* z,
                           Py_ssize_t ldz, bint relu=False) noexcept nogil:
    """``z[r, :m] += b`` for ``nr`` rows ``ldz`` apart (a layer's bias);
    ``relu``: ``z = relu(z + b)`` in the same pass."""
    if floating is float:
        cbp_add_rows_f(nr, m, b, z, ldz, relu)
    else:
        cbp_add_rows_d(nr, m, b, z, ldz, relu)


cdef inline void _product_bias(Py_ssize_t nr, Py_ssize_t m, Py_ssize_t k,
                               const floating* a, Py_ssize_t lda, const floating* W,
                               Py_ssize_t ldw, const floating* b, floating* z,
                               Py_ssize_t ldz, bint relu,
                               const int* bidx=NULL) noexcept nogil:
    """``z = a W + b`` for ``nr`` rows (``relu``: then relu), a layer's
    forward product.  Our own products start each element from its bias and
    apply relu as they store (one pass over z instead of two); with BLAS,
    the bias (and relu) is a second pass.  ``bidx`` (own products only, or
    NULL): W's row p is row ``bidx[p]`` (see _gather_cols)."""
    if own_gemm_on():
        mm_own(<int>nr, <int>m, <int>k, a, <int>lda, W, <int>ldw, b, relu, NULL, 0, z,
               <int>ldz, False, bidx)
        return
    mm_rowmajor(NoTrans, NoTrans, <int>nr, <int>m, <int>k, <floating>1, a, <int>lda,
                W, <int>ldw, <floating>0, z, <int>ldz)
    _add_rows(nr, m, b, z, ldz, relu)


cdef inline floating _dot(Py_ssize_t n, const floating* x,
                          const floating* y) noexcept nogil:
    if floating is float:
        return cbp_dot_f(n, x, y)
    else:
        return cbp_dot_d(n, x, y)


cdef inline double _sumsq(Py_ssize_t n, const floating* x) noexcept nogil:
    if floating is float:
        return cbp_sumsq_f(n, x)
    else:
        return cbp_sumsq_d(n, x)


cdef inline double _penalty(Py_ssize_t n, const floating* w, double alpha,
                            double l1) noexcept nogil:
    if floating is float:
        return cbp_penalty_f(n, w, alpha, l1)
    else:
        return cbp_penalty_d(n, w, alpha, l1)


cdef inline double _gradsq(Py_ssize_t n, const floating* x, const floating* w,
                           double alpha, double l1) noexcept nogil:
    if floating is float:
        return cbp_gradsq_f(n, 1.0, x, w, <float>alpha, <float>l1)
    else:
        return cbp_gradsq_d(n, 1.0, x, w, alpha, l1)


cdef inline double _rate(const Optim* o, double lr_t, double mult) noexcept nogil:
    """Step size of a layer: SGD's current rate or Adam's corrected one."""
    return (o.lr if o.kind == OPT_SGD else lr_t) * mult


cdef inline void _step(const Optim* o, Py_ssize_t n, floating* w, floating* s1,
                       floating* s2, floating a, const floating* x, double alpha,
                       double l1, double sw, double rate) noexcept nogil:
    """Optimiser step on ``n`` parameters with gradient
    ``(a x + alpha w + l1 sign(w)) / sw`` and step size ``rate``."""
    if o.kind == OPT_SGD:
        if floating is float:
            cbp_sgd_f(n, w, s1, a, x, <float>alpha, <float>l1, <float>sw, <float>rate,
                      <float>o.momentum, o.nesterov)
        else:
            cbp_sgd_d(n, w, s1, a, x, alpha, l1, sw, rate, o.momentum, o.nesterov)
    else:
        if floating is float:
            cbp_adam_f(n, w, s1, s2, a, x, <float>alpha, <float>l1, <float>sw,
                       <float>rate, <float>o.beta1, <float>o.beta2, <float>o.eps)
        else:
            cbp_adam_d(n, w, s1, s2, a, x, alpha, l1, sw, rate, o.beta1, o.beta2,
                       o.eps)


cdef inline double _adam_ssq(const Optim* o, Py_ssize_t n, floating* w, floating* m,
                             floating* v, double a, floating* x, const floating* x2,
                             double alpha, double sw, double rate) noexcept nogil:
    """Adam without L1 on ``n`` parameters (gradient ``(a x + alpha w) /
    sw``, ``x`` first summed with ``x2`` when not NULL); returns ``sum w^2``
    before the step, read in the same pass."""
    if floating is float:
        return cbp_adam_ssq_f(n, w, m, v, <float>a, x, x2, <float>alpha, <float>sw,
                              <float>rate, <float>o.beta1, <float>o.beta2,
                              <float>o.eps)
    else:
        return cbp_adam_ssq_d(n, w, m, v, a, x, x2, alpha, sw, rate, o.beta1, o.beta2,
                              o.eps)


cdef inline double _sgd_ssq(const Optim* o, Py_ssize_t n, floating* w, floating* v,
                            double a, const floating* x, double alpha,
                            double rate) noexcept nogil:
    """SGD step with gradient ``a x + alpha w`` (no L1); returns the sum of
    ``w^2`` before it."""
    if floating is float:
        return cbp_sgd_ssq_f(n, w, v, <float>a, x, <float>alpha, <float>rate,
                             <float>o.momentum, o.nesterov)
    else:
        return cbp_sgd_ssq_d(n, w, v, a, x, alpha, rate, o.momentum, o.nesterov)


cdef inline double _adam_rate(Optim* o) noexcept nogil:
    """Advance Adam's step counter and return the bias-corrected rate."""
    o.t += 1
    return o.lr * sqrt(1.0 - pow(o.beta2, <double>o.t)) / (1.0 - pow(o.beta1, <double>o.t))


cdef inline Py_ssize_t _layer_base(const Net* net, Py_ssize_t cap,
                                   Py_ssize_t layer) noexcept nogil:
    """Start of layer ``layer`` (1..L) in a block buffer holding ``cap`` rows."""
    cdef Py_ssize_t k, off = 0
    for k in range(1, layer):
        off += net.stride[k]
    return off * cap


cdef inline Py_ssize_t _chunk_rows(Py_ssize_t nb) noexcept nogil:
    """Rows per forward chunk: a function of the batch size only.

    Every chunk's BLAS calls pack the whole weight matrix of each dense
    layer, so chunks of fewer than about 100 rows spend a large share of
    their time packing: half a batch up to 128 rows, a quarter beyond
    (adam 784-512-256-10 at batch 200, 100-row chunks instead of 50:
    1.05-1.07x faster on one thread and on two, Intel Xeon VM).
    """
    cdef Py_ssize_t c = nb // 2
    if c > 128:
        c = max(128, nb // 4)
    if c < 8:
        c = 8
    if c > 512:
        c = 512
    return c


cdef bint _interrupted() noexcept nogil:
    """True when Ctrl-C (or another signal whose handler raised) arrived.

    Takes the GIL for a moment so Python's signal handlers can run; the
    exception they set is cleared and reported as STATUS_INTERRUPTED.
    """
    cdef int r
    with gil:
        r = PyErr_CheckSignals()
        if r != 0:
            PyErr_Clear()
    return r != 0


# ---------------------------------------------------------------------------
# Hidden layers: activation (or maxout), dropout, and their backward pass.
# ---------------------------------------------------------------------------

cdef void _hidden_layer_forward(const Net* net, Py_ssize_t layer, floating* row,
                                floating* gate, Py_ssize_t nr,
                                long long pos) noexcept nogil:
    """Activations of ``nr`` rows of hidden layer ``layer`` from their
    pre-activations, then dropout.  Rows are ``stride`` apart; ``pos`` is the
    epoch position of the first row, which keys its dropout mask.

    With dropout, ``gate`` receives what the backward pass multiplies the
    delta by: ``mask / (1 - rate) * f'(z)`` (maxout: without ``f'``, the
    routing does that part), and the activations are masked in place.
    """
    cdef Py_ssize_t u = net.units[layer], s = net.stride[layer], r, j
    cdef bint maxout = net.act[layer] == ACT_MAXOUT
    cdef unsigned long long h
    cdef floating scale
    if maxout:
        if floating is float:
            cbp_maxout_forward_f(nr, u, net.zw[layer] // u, row + net.zoff[layer], s,
                                 row, s)
        else:
            cbp_maxout_forward_d(nr, u, net.zw[layer] // u, row + net.zoff[layer], s,
                                 row, s)
    else:
        _hidden_forward(net, layer, row, nr * s)
    if net.drop <= 0:
        return
    scale = <floating>(1.0 / (1.0 - net.drop))
    for r in range(nr):
        # f'(z) first, from the activations before they are masked.
        for j in range(u):
            gate[r * s + j] = 1
        if not maxout:
            _hidden_backward(net, layer, row + r * s, gate + r * s, u)
        h = cbp_rng_prefix(net.seed, <unsigned long long>(net.step0 + pos + r),
                           <unsigned long long>layer)
        if floating is float:
            cbp_dropout_row_f(u, h, net.drop, scale, row + r * s, gate + r * s)
        else:
            cbp_dropout_row_d(u, h, net.drop, scale, row + r * s, gate + r * s)


cdef void _hidden_layer_backward(const Net* net, Py_ssize_t layer, const floating* row,
                                 const floating* gate, floating* g,
                                 Py_ssize_t nr) noexcept nogil:
    """Turn ``g`` = dloss/da of ``nr`` rows of hidden layer ``layer`` into
    dloss/dz (at ``g + zoff``)."""
    cdef Py_ssize_t u = net.units[layer], s = net.stride[layer], r, j
    cdef bint maxout = net.act[layer] == ACT_MAXOUT
    if net.drop > 0:
        for r in range(nr):
            for j in range(u):
                g[r * s + j] *= gate[r * s + j]
    if maxout:
        if floating is float:
            cbp_maxout_backward_f(nr, u, net.zw[layer] // u, row + net.zoff[layer], s,
                                  g, s, g + net.zoff[layer])
        else:
            cbp_maxout_backward_d(nr, u, net.zw[layer] // u, row + net.zoff[layer], s,
                                  g, s, g + net.zoff[layer])
    elif net.drop <= 0:
        _hidden_backward(net, layer, row, g, nr * s)


# ---------------------------------------------------------------------------
# Layer 0 of one row block.
# ---------------------------------------------------------------------------

cdef void _layer0_forward(const Net* net, const floating* params, const Source* src,
                          const SpBatch* sb, Py_ssize_t r0, Py_ssize_t nr,
                          const floating* xin, floating* z, Py_ssize_t ldz,
                          bint relu=False, const int* cols=NULL) noexcept nogil:
    """``z[r, :] = x_r W0 + b0`` for rows ``r0 .. r0 + nr`` (no activation);
    with ``relu``, dense input: ``relu(x_r W0 + b0)``, the bias and relu in
    one pass.  ``cols`` (or NULL): the rows hold only the columns listed
    there (see _gather_cols)."""
    cdef Py_ssize_t u_in = net.units[0], m = net.zw[1]
    cdef const floating* b = params + net.icpt_off[0]
    cdef const floating* W = params
    cdef Py_ssize_t ldw = m, wlen = net.n_params
    if src.csr:
        if net.w0 != NULL:
            W = <const floating*>net.w0
            ldw = net.ldw0
            wlen = u_in * ldw
        if floating is float:
            cbp_sprows_f(nr, sb.rs + r0, sb.re + r0, sb.idx, <const float*>sb.val,
                         W, m, ldw, wlen, b, z, ldz)
        else:
            cbp_sprows_d(nr, sb.rs + r0, sb.re + r0, sb.idx, <const double*>sb.val,
                         W, m, ldw, wlen, b, z, ldz)
        return
    _product_bias(nr, m, cols[0] if cols != NULL else u_in, xin + r0 * u_in, u_in,
                  params, m, b, z, ldz, relu, cols + 1 if cols != NULL else NULL)


cdef void _layer0_grad_block(const Net* net, const Source* src, const SpBatch* sb,
                             Py_ssize_t nb, const floating* xin, const floating* d,
                             Py_ssize_t ldd, Py_ssize_t dlen, floating* G, Py_ssize_t i0,
                             Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1,
                             bint accumulate) noexcept nogil:
    """Rows ``i0:i1``, columns ``j0:j1`` of ``dW0 (+)= X^T delta`` over the
    ``nb`` batch rows; ``dlen`` elements are readable from ``d``."""
    cdef Py_ssize_t u_in = net.units[0], m = net.zw[1]
    if src.csr:
        if floating is float:
            cbp_spgrad_f(i0, i1, j0, j1, sb.fptr, <const cbp_fent_f*>sb.fent, d,
                         m, ldd, dlen, G, accumulate)
        else:
            cbp_spgrad_d(i0, i1, j0, j1, sb.fptr, <const cbp_fent_d*>sb.fent, d,
                         m, ldd, dlen, G, accumulate)
        return
    mm_rowmajor(Trans, NoTrans, <int>(i1 - i0), <int>(j1 - j0), <int>nb, <floating>1,
                xin + i0, <int>u_in, d + j0, <int>ldd,
                <floating>1 if accumulate else <floating>0,
                G + i0 * m + j0, <int>m)


cdef inline Py_ssize_t _aligned_ld(Py_ssize_t m, Py_ssize_t itemsize) noexcept nogil:
    """``m`` rounded up to a whole number of cache lines."""
    cdef Py_ssize_t per = LINE_BYTES // itemsize
    return (m + per - 1) // per * per


def w0_copy_size(Py_ssize_t n_in, Py_ssize_t m, Py_ssize_t itemsize):
    """Elements of the aligned copy of an ``n_in x m`` first layer that the
    sparse forward pass reads instead of the weights (see _attach_w0); 0
    when rows of ``m`` values of ``itemsize`` bytes already start on cache
    lines."""
    cdef Py_ssize_t ld = _aligned_ld(m, itemsize)
    return 0 if ld == m else n_in * ld


cdef void _attach_w0(Net* net, const Source* src, floating[::1] w0,
                     const floating* params):
    """Have the sparse forward pass read the first layer's weights from
    ``w0`` (None or empty: no copy; else cache-line aligned, with room for
    :func:`w0_copy_size` elements), filled here from ``params``, when the
    input is CSR and the weights' own rows straddle cache lines.

    Each non-zero input reads a whole weight row in 64-byte vectors; a row
    of 100 float32 weights starts 16, 32 or 48 bytes into a line three times
    in four, and those loads each touch two lines: 784-112-10 fitted faster
    than 784-100-10 on MNIST, with 12% more work.  The copy's padding is
    zero (the last vector of a row is loaded whole).
    """
    cdef Py_ssize_t n_in = net.units[0], m = net.zw[1], i
    cdef Py_ssize_t ld = _aligned_ld(m, sizeof(floating))
    cdef floating* copy
    if w0 is None or not src.csr or ld == m or w0.shape[0] < n_in * ld \
            or (<size_t>&w0[0]) % LINE_BYTES != 0:
        return
    copy = &w0[0]
    net.w0 = copy
    net.ldw0 = ld
    for i in range(n_in):
        memcpy(copy + i * ld, params + i * m, m * sizeof(floating))
        memset(copy + i * ld + m, 0, (ld - m) * sizeof(floating))


cdef inline void _sync_w0(const Net* net, const floating* params, Py_ssize_t k0,
                          Py_ssize_t k1, bint claim) noexcept nogil:
    """Copy first-layer weights ``k0:k1`` (flat positions) to ``net.w0``
    (``claim``: see _step_range)."""
    cdef Py_ssize_t m = net.zw[1], i = k0 // m, j = k0 % m, seg
    cdef floating* w0 = <floating*>net.w0
    while k0 < k1:
        seg = min(m - j, k1 - k0)
        if claim:
            cbp_claim(w0 + i * net.ldw0 + j, seg * sizeof(floating))
        memcpy(w0 + i * net.ldw0 + j, params + k0, seg * sizeof(floating))
        k0 += seg
        i += 1
        j = 0


# The backward product delta_l W_l^T of a layer with fewer outputs than this
# (the output layer of a classifier) reads a transposed copy of W_l instead:
# OpenBLAS runs the transposed-operand form through its general path
# (packing and a beta pass) when the inner dimension is under 32, but the
# plain form through its small-matrix kernels.  100-row chunks of load_digits'
# 100 x 10 output layer: 5.8 us a product as W^T, 3.3 us as a copy made
# once a batch (0.7 us) plus the plain product.
cdef Py_ssize_t WT_MAX_OUT = 32
# With our own products (see _blas), which take B only as stored, every
# layer whose weights fit in WT_OWN_MAX elements gets a copy: MNIST
# 784-512-256-10's backward product through its 512 x 256 layer otherwise
# stays on BLAS (AVX2 kernels at half the rate on this project's VM).  The
# copy is refreshed by the thread that steps each block, while the block is
# in its cache.  The cap bounds the copies' memory next to the weights'.
cdef Py_ssize_t WT_OWN_MAX = 1 << 22


cdef inline bint _has_wt(const Py_ssize_t* units, const Py_ssize_t* zw,
                         Py_ssize_t li) noexcept nogil:
    """Whether layer ``li`` has a transposed copy (see WT_MAX_OUT): the
    first layer has no backward product, and a single-output layer's
    weights are their own transpose in memory."""
    if li < 1 or zw[li + 1] == 1:
        return False
    if own_gemm_on():
        return units[li] * zw[li + 1] <= WT_OWN_MAX
    return zw[li + 1] < WT_MAX_OUT


cdef inline Py_ssize_t _wt_offset(const Py_ssize_t* units, const Py_ssize_t* zw,
                                  Py_ssize_t li) noexcept nogil:
    """Start of layer ``li``'s transposed copy, or -1 when it has none."""
    cdef Py_ssize_t k, off = 0
    if not _has_wt(units, zw, li):
        return -1
    for k in range(1, li):
        if _has_wt(units, zw, k):
            off += units[k] * zw[k + 1]
    return off


cdef Py_ssize_t _wt_size(const Py_ssize_t* units, const Py_ssize_t* zw,
                         Py_ssize_t n_layers) noexcept nogil:
    """Elements of all the transposed copies of :func:`_wt_offset`."""
    cdef Py_ssize_t li, n = 0
    for li in range(1, n_layers):
        if _wt_offset(units, zw, li) >= 0:
            n += units[li] * zw[li + 1]
    return n


def wt_copy_size(const Py_ssize_t[::1] units, const Py_ssize_t[::1] zw):
    """Elements of the transposed copies of :func:`_wt_offset`."""
    return _wt_size(&units[0], &zw[0], units.shape[0] - 1)


cdef void _attach_wt(Net* net, floating[::1] wt) noexcept:
    """Have the backward pass read layers with a copy through ``wt`` (None
    or too small: it reads the weights in place)."""
    cdef Py_ssize_t n = _wt_size(net.units, net.zw, net.n_layers)
    if n > 0 and wt is not None and wt.shape[0] >= n:
        net.wt = &wt[0]


# Columns of W a transposing pass carries at once: 16 rows of the copy
# (one 64-byte line of float32 each) are written a row of W at a time.
cdef Py_ssize_t WT_TILE = 16


cdef inline void _transpose_block(const floating* W, Py_ssize_t m, floating* T,
                                  Py_ssize_t u, Py_ssize_t i0, Py_ssize_t i1,
                                  Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """``T[j, i] = W[i, j]`` for rows ``i0:i1`` and columns ``j0:j1`` of the
    row-major ``W`` (``m`` columns) into ``T`` (``u`` columns).  Column
    tiles, so that both sides move through memory a line at a time (the
    plain element loop wrote each value a row of T away from the last:
    slow on wide layers)."""
    cdef Py_ssize_t jt, jb, i, j
    jt = j0
    while jt < j1:
        jb = min(jt + WT_TILE, j1)
        for i in range(i0, i1):
            for j in range(jt, jb):
                T[j * u + i] = W[i * m + j]
        jt = jb


cdef void _refresh_wt_rect(const Net* net, const floating* params, Py_ssize_t li,
                           Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,
                           Py_ssize_t j1) noexcept nogil:
    """Copy rows ``i0:i1``, columns ``j0:j1`` of layer ``li``'s weights into
    its transposed copy, if it has one."""
    cdef Py_ssize_t off
    if net.wt == NULL or i1 <= i0 or j1 <= j0:
        return
    off = _wt_offset(net.units, net.zw, li)
    if off >= 0:
        _transpose_block(params + net.coef_off[li], net.zw[li + 1],
                         (<floating*>net.wt) + off, net.units[li], i0, i1, j0, j1)


cdef void _refresh_wt_range(const Net* net, const floating* params, Py_ssize_t li,
                            Py_ssize_t e0, Py_ssize_t e1) noexcept nogil:
    """Copy weights ``e0:e1`` (row-major, within layer ``li``) into the
    layer's transposed copy, if it has one: a partial first row, the whole
    rows, a partial last row."""
    cdef Py_ssize_t m = net.zw[li + 1], i0 = e0 // m, i1 = e1 // m
    if i0 == i1:
        _refresh_wt_rect(net, params, li, i0, i0 + 1, e0 - i0 * m, e1 - i0 * m)
        return
    if e0 > i0 * m:
        _refresh_wt_rect(net, params, li, i0, i0 + 1, e0 - i0 * m, m)
        i0 += 1
    _refresh_wt_rect(net, params, li, i0, i1, 0, m)
    _refresh_wt_rect(net, params, li, i1, i1 + 1, 0, e1 - i1 * m)


cdef void _refresh_wt(const Net* net, const floating* params) noexcept nogil:
    """Fill the transposed copies from the current weights."""
    cdef Py_ssize_t li
    for li in range(1, net.n_layers):
        _refresh_wt_range(net, params, li, 0, net.units[li] * net.zw[li + 1])


cdef void _sparse_rows(const Source* src, SpBatch* sb, const Py_ssize_t* rows,
                       Py_ssize_t nb) noexcept nogil:
    """Row lists of the block's non-zeros: pointers into the CSR arrays."""
    cdef Py_ssize_t r
    for r in range(nb):
        sb.rs[r] = src.ptr[rows[r]]
        sb.re[r] = src.ptr[rows[r] + 1]
    sb.idx = src.ind
    sb.val = src.x


# Rows ahead whose non-zeros the counting sort asks the cache for.
cdef Py_ssize_t SORT_AHEAD = 4


cdef void _sort_by_feature(const Source* src, const Py_ssize_t* rows, Py_ssize_t nb,
                           Py_ssize_t* fptr, floating* fent) noexcept nogil:
    """Counting sort of the non-zeros of rows ``rows[0:nb]`` by feature,
    rows kept in order: feature i's entries are records ``fptr[i]:fptr[i +
    1]`` of ``fent`` (cbp_fent_f / cbp_fent_d: the 0-based position in
    ``rows`` and the value)."""
    cdef Py_ssize_t r, p, i, nf = src.n_features, pos
    cdef cbp_fent_f* fe_f = <cbp_fent_f*>fent
    cdef cbp_fent_d* fe_d = <cbp_fent_d*>fent
    cdef const floating* val = <const floating*>src.x
    cdef const cbp_idx* idx = src.ind
    memset(fptr, 0, (nf + 1) * sizeof(Py_ssize_t))
    for r in range(nb):
        if r + SORT_AHEAD < nb:
            # The batch's rows are scattered over X and not yet in cache.
            p = src.ptr[rows[r + SORT_AHEAD]]
            i = src.ptr[rows[r + SORT_AHEAD] + 1] - p
            cbp_prefetch(idx + p, i * sizeof(cbp_idx))
            cbp_prefetch(val + p, i * sizeof(floating))
        for p in range(src.ptr[rows[r]], src.ptr[rows[r] + 1]):
            fptr[idx[p] + 1] += 1
    for i in range(nf):
        fptr[i + 1] += fptr[i]
    for r in range(nb):
        for p in range(src.ptr[rows[r]], src.ptr[rows[r] + 1]):
            i = idx[p]
            # fptr[i] is used as the fill cursor and restored below.
            pos = fptr[i]
            if floating is float:
                fe_f[pos].row = <cbp_idx>r
                fe_f[pos].val = val[p]
            else:
                fe_d[pos].row = <cbp_idx>r
                fe_d[pos].val = val[p]
            fptr[i] = pos + 1
    for i in range(nf, 0, -1):
        fptr[i] = fptr[i - 1]
    fptr[0] = 0


cdef inline void _sort_into_slot(const Source* src, const SpBatch* sb,
                                 const Py_ssize_t* rows, Py_ssize_t nb, int slot,
                                 const floating* witness) noexcept nogil:
    """:func:`_sort_by_feature` into mini-batch slot ``slot`` (0 or 1)."""
    _sort_by_feature(src, rows, nb, sb.fptr0 + slot * (src.n_features + 1),
                     (<floating*>sb.fent0) + 2 * slot * sb.nnz_cap)


# ---------------------------------------------------------------------------
# Row-local work: forward, loss, output error and deltas of a chunk.
# ---------------------------------------------------------------------------

cdef void _forward_rows(const Net* net, const floating* params, const Source* src,
                        const SpBatch* sb, Py_ssize_t nr, const floating* xin,
                        floating* acts, floating* gates, Py_ssize_t cap, Py_ssize_t r0,
                        long long pos, const int* cols=NULL) noexcept nogil:
    """Activations of layers 1..L for rows ``r0 .. r0 + nr`` of a block whose
    first row is at epoch position ``pos``; ``cols``: see _layer0_forward."""
    cdef Py_ssize_t L = net.n_layers, li, u_in, m, s_in, s_out, base
    cdef floating* z
    cdef const floating* a_in
    cdef bint relu
    for li in range(L):
        u_in = net.units[li]
        m = net.zw[li + 1]
        s_out = net.stride[li + 1]
        base = _layer_base(net, cap, li + 1) + r0 * s_out
        z = acts + base + net.zoff[li + 1]
        # A relu layer after a BLAS product (no dropout): bias and relu in one
        # pass over the block (the sparse kernel adds the bias itself).
        relu = (li < L - 1 and net.act[li + 1] == ACT_RELU and net.drop <= 0
                and not (li == 0 and src.csr))
        if li == 0:
            _layer0_forward(net, params, src, sb, r0, nr, xin, z, s_out, relu, cols)
        else:
            s_in = net.stride[li]
            a_in = acts + _layer_base(net, cap, li) + r0 * s_in
            _product_bias(nr, m, u_in, a_in, s_in, params + net.coef_off[li], m,
                          params + net.icpt_off[li], z, s_out, relu)
        if li == L - 1:
            _output_forward(net.out_act, z, nr, m)
        elif not relu:
            _hidden_layer_forward(net, li + 1, acts + base, gates + base, nr, pos + r0)


cdef inline double _rows_weight(const Py_ssize_t* rows, Py_ssize_t nr,
                                const floating* sw) noexcept nogil:
    """Total weight of samples ``rows[:nr]`` (``sw`` NULL: 1 each), added
    in row order: a chunk's weight, the same sum wherever it is made."""
    cdef Py_ssize_t r
    cdef double wsum = 0.0
    if sw == NULL:
        # Adding 1.0 nr times gives nr exactly (nr < 2**53).
        return <double>nr
    for r in range(nr):
        wsum += <double>sw[rows[r]]
    return wsum


cdef double _rows_loss_delta(const Net* net, const Py_ssize_t* rows, Py_ssize_t nr,
                             const floating* Y, const floating* sw, const floating* out,
                             floating* d, double* sw_out) noexcept nogil:
    """Weighted loss of ``nr`` output rows ``out`` (targets ``Y`` and
    weights ``sw`` of samples ``rows``), and with ``d`` (else NULL) their
    weighted output deltas; ``sw_out`` gets the rows' weight."""
    cdef Py_ssize_t n_out = net.units[net.n_layers], r, j
    cdef const floating* yrow
    cdef floating w
    cdef double loss = 0.0
    if net.ycls != NULL:
        sw_out[0] = _rows_weight(rows, nr, sw)
        if floating is float:
            return cbp_onehot_loss_delta_f(nr, n_out, out, net.ycls, rows, sw, d)
        else:
            return cbp_onehot_loss_delta_d(nr, n_out, out, net.ycls, rows, sw, d)
    for r in range(nr):
        yrow = Y + rows[r] * n_out
        w = sw[rows[r]] if sw != NULL else <floating>1
        loss += (<double>w) * _row_loss(net, out + r * n_out, yrow, n_out)
        if d != NULL:
            _output_delta(net, out + r * n_out, yrow, d + r * n_out, n_out)
            if sw != NULL:
                for j in range(n_out):
                    d[r * n_out + j] *= w
    sw_out[0] = _rows_weight(rows, nr, sw)
    return loss


cdef inline bint _consecutive(const Py_ssize_t* rows, Py_ssize_t nb) noexcept nogil:
    """Whether ``rows[0:nb]`` are consecutive rows of X (usable in place)."""
    cdef Py_ssize_t r
    for r in range(1, nb):
        if rows[r] != rows[0] + r:
            return False
    return True


cdef inline void _gather_rows(const Source* src, const Py_ssize_t* rows,
                              Py_ssize_t r0, Py_ssize_t r1,
                              floating* xbuf) noexcept nogil:
    """Dense rows ``rows[r0:r1]`` of X to rows ``r0:r1`` of ``xbuf``."""
    cdef Py_ssize_t r, nf = src.n_features
    for r in range(r0, r1):
        memcpy(xbuf + r * nf, (<const floating*>src.x) + rows[r] * nf,
               nf * sizeof(floating))


# A chunk's rows are gathered without their all-zero columns when at least
# 1/COLS_DROP_FRACTION of the columns are (and at least one): each such
# column saves 4 x rows x units flops in the first layer's forward and
# gradient products, and leaving them out costs a permute per 8 columns of
# every gathered row.  load_digits' 64 pixels: 9 of them on average in a
# 100-row chunk.
cdef Py_ssize_t COLS_DROP_FRACTION = 16
ZERO_COLS_FRACTION = COLS_DROP_FRACTION
cdef bint ZERO_COLS = True


def _set_zero_cols(bint on):
    """Whether chunks are gathered without their all-zero columns where
    they can be (see _gather_cols), for tests and measurements: the weights
    are the same either way.  Returns the old setting."""
    global ZERO_COLS
    old = ZERO_COLS
    ZERO_COLS = on
    return old


def _py_gather_cols(const floating[:, ::1] X, const Py_ssize_t[::1] rows,
                    Py_ssize_t min_drop):
    """Python door to :func:`_gather_cols` for tests: ``(kept, idx,
    gathered)``, the columns kept (``n_features`` when none were left out),
    their indices (None then) and the gathered rows, each ``n_features``
    wide with its first ``kept`` values written (the rest NaN)."""
    cdef Py_ssize_t nf = X.shape[1], nr = rows.shape[0], r
    cdef Net net
    cdef Source src
    for r in range(nr):
        if rows[r] < 0 or rows[r] >= X.shape[0]:
            raise IndexError("row out of range")
    if not own_gemm_on():
        raise RuntimeError("our own products are off or not available here")
    dtype = np.float32 if floating is float else np.float64
    out = np.full((max(nr, 1), max(nf, 1)), np.nan, dtype=dtype)
    if nr == 0 or nf == 0:
        return nf, None, out[:nr, :nf]
    masks = row_masks(X)
    cdef const uint64_t[:, ::1] mv = masks
    buf = np.empty(_cols_ld(nf) + LINE_BYTES // 4, dtype=np.int32)
    k = (-buf.ctypes.data % LINE_BYTES) // 4
    cdef int32_t[::1] cl = buf[k:k + _cols_ld(nf)]
    cdef floating[:, ::1] ov = out
    net.row_masks = &mv[0, 0]
    src.csr = False
    src.n_features = nf
    src.x = &X[0, 0]
    left_out = _gather_cols(&net, &src, &rows[0], nr, &ov[0, 0], <int*>&cl[0], min_drop)
    kept = cl[0]
    return kept, np.asarray(cl[1:1 + kept]).copy() if left_out else None, out


cdef inline bint _gather_cols(const Net* net, const Source* src, const Py_ssize_t* rows,
                              Py_ssize_t nr, floating* xb, int* cols,
                              Py_ssize_t min_drop) noexcept nogil:
    """Dense rows ``rows[:nr]`` of X to ``xb``, without the columns that are
    zero in all of them when at least ``min_drop`` are (see
    cbp_gather_cols), else whole (_gather_rows).  Returns whether it left
    any out; ``cols`` (a chunk's list, see _cols_ld) then holds how many
    columns are left and their indices."""
    cdef Py_ssize_t nf = src.n_features, kept
    cdef uint64_t* words = <uint64_t*>(cols + _cols_words(nf))
    cdef void* perms = <void*>(cols + _cols_perms(nf))
    if floating is float:
        kept = cbp_gather_cols_f(nr, rows, <const float*>src.x, nf, net.row_masks, xb,
                                 cols + 1, words, perms, min_drop)
    else:
        kept = cbp_gather_cols_d(nr, rows, <const double*>src.x, nf, net.row_masks, xb,
                                 cols + 1, words, perms, min_drop)
    cols[0] = <int>kept
    if kept == nf:
        _gather_rows(src, rows, 0, nr, xb)
    return kept < nf


# A chunk's list (int32 elements, each part on a cache line of its own):
# the count of columns kept and their indices; the OR of its rows' mask
# words; a permutation vector per 8 columns (see cbp_gather_cols).
cdef inline Py_ssize_t _cols_words(Py_ssize_t nf) noexcept nogil:
    return (1 + nf + 15) // 16 * 16


cdef inline Py_ssize_t _cols_perms(Py_ssize_t nf) noexcept nogil:
    return _cols_words(nf) + (2 * ((nf + 63) // 64) + 15) // 16 * 16


cdef inline Py_ssize_t _cols_ld(Py_ssize_t nf) noexcept nogil:
    return _cols_perms(nf) + 16 * ((nf + 7) // 8)


def cols_size(Py_ssize_t cap, Py_ssize_t n_features):
    """int32 elements of the chunks' column lists (see _attach_cols) for
    blocks of at most ``cap`` rows; the buffer must start a cache line."""
    return _max_chunks(cap) * _cols_ld(n_features)


def row_masks(const floating[:, ::1] X, int n_threads=1):
    """Which columns of each row of X are not zero (NaN counts, -0 does
    not): a ``(n, ceil(n_features / 64))`` uint64 array, bit ``j`` of word
    ``w`` for column ``64 w + j`` (see cbp_row_masks).  Made once a fit
    for the chunks' gathers (see _gather_cols): 1/64 of X's size in
    float64, 1/32 in float32.  Blocks of rows on ``n_threads``."""
    cdef Py_ssize_t n = X.shape[0], nf = X.shape[1], k, r0, r1
    cdef Py_ssize_t n_blocks = (n + FINITE_BLOCK - 1) // FINITE_BLOCK
    out = np.zeros((n, (nf + 63) // 64), dtype=np.uint64)
    cdef uint64_t[:, ::1] o = out
    if n == 0 or nf == 0:
        return out
    for k in prange(n_blocks, nogil=True, num_threads=max(1, n_threads),
                    schedule="static"):
        r0 = k * FINITE_BLOCK
        r1 = min(r0 + FINITE_BLOCK, n)
        if floating is float:
            cbp_row_masks_f(r1 - r0, &X[r0, 0], nf, &o[r0, 0])
        else:
            cbp_row_masks_d(r1 - r0, &X[r0, 0], nf, &o[r0, 0])
    return out


cdef void _attach_cols(Net* net, const Source* src, Py_ssize_t n_rows, Py_ssize_t cap,
                       int32_t[::1] buf, const uint64_t[:, ::1] masks) noexcept:
    """Have dense mini-batches with chunk-local gradients, on our own
    products, gather their rows without all-zero columns (see
    _gather_cols): ``buf`` (:func:`cols_size`, cache-aligned) for the
    chunks' lists, ``masks`` from :func:`row_masks` of X (``n_rows``
    rows).  Anything missing or not fitting: whole rows, always."""
    if (not ZERO_COLS or buf is None or masks is None or src.csr or net.pgrad == NULL
            or not own_gemm_on() or src.n_features == 0
            or buf.shape[0] < _max_chunks(cap) * _cols_ld(src.n_features)
            or (<size_t>&buf[0]) % LINE_BYTES != 0
            or masks.shape[0] != n_rows
            or masks.shape[1] != (src.n_features + 63) // 64):
        return
    net.cols = <int*>&buf[0]
    net.cols_ld = _cols_ld(src.n_features)
    net.row_masks = &masks[0, 0]


cdef void _chunk_backward(const Net* net, const floating* params, const Source* src,
                          const SpBatch* sb, const Py_ssize_t* rows, Py_ssize_t nr,
                          const floating* xin,
                          const floating* Y, const floating* sw, floating* acts,
                          floating* deltas, floating* gates, Py_ssize_t cap,
                          Py_ssize_t r0, long long pos, double* loss_out,
                          double* sw_out, bint need_grad,
                          int* ready=NULL, const int* cols=NULL) noexcept nogil:
    """Forward pass, loss, and (``need_grad``) every delta of one row chunk.
    ``ready`` (or NULL): the chunk's progress flag, raised to ``L - l + 1``
    once the deltas of layer ``l`` are written (see _merged_pass).
    ``cols``: see _layer0_forward."""
    cdef Py_ssize_t L = net.n_layers, li, u, m, s, s_next, off
    cdef Py_ssize_t n_out = net.units[L]
    cdef floating* d
    cdef floating* g
    cdef const floating* wt

    _forward_rows(net, params, src, sb, nr, xin, acts, gates, cap, r0, pos, cols)
    loss_out[0] = _rows_loss_delta(
        net, rows + r0, nr, Y, sw, acts + _layer_base(net, cap, L) + r0 * n_out,
        deltas + _layer_base(net, cap, L) + r0 * n_out if need_grad else NULL, sw_out)
    if not need_grad:
        return
    if ready != NULL:
        cbp_flag_raise(ready, 1)
    for li in range(L - 1, 0, -1):
        u = net.units[li]
        s = net.stride[li]
        m = net.zw[li + 1]
        s_next = net.stride[li + 1]
        d = deltas + _layer_base(net, cap, li + 1) + r0 * s_next + net.zoff[li + 1]
        g = deltas + _layer_base(net, cap, li) + r0 * s
        off = _wt_offset(net.units, net.zw, li)
        # W^T as a plain row-major m x u matrix (see WT_MAX_OUT), or NULL.
        wt = NULL
        if m == 1:
            wt = params + net.coef_off[li]
        elif off >= 0 and net.wt != NULL:
            wt = (<const floating*>net.wt) + off
        if (wt != NULL and own_gemm_on() and net.drop <= 0
                and net.act[li] == ACT_RELU):
            # The product and relu's derivative in one pass (the same select
            # as cbp_hidden_backward's).
            mm_own(<int>nr, <int>u, <int>m, d, <int>s_next, wt, <int>u, NULL, False,
                   acts + _layer_base(net, cap, li) + r0 * s, <int>s, g, <int>s)
        else:
            if wt != NULL:
                mm_rowmajor(NoTrans, NoTrans, <int>nr, <int>u, <int>m, <floating>1, d,
                            <int>s_next, wt, <int>u, <floating>0, g, <int>s)
            else:
                mm_rowmajor(NoTrans, Trans, <int>nr, <int>u, <int>m, <floating>1, d,
                            <int>s_next, params + net.coef_off[li], <int>m,
                            <floating>0, g, <int>s)
            _hidden_layer_backward(net, li, acts + _layer_base(net, cap, li) + r0 * s,
                                   gates + _layer_base(net, cap, li) + r0 * s, g, nr)
        if ready != NULL:
            cbp_flag_raise(ready, <int>(L - li + 1))


cdef inline void _bias_grad(Py_ssize_t m, const floating* d, Py_ssize_t ldd,
                            Py_ssize_t nr, floating* gb, bint accumulate) noexcept nogil:
    """``gb (+)=`` the column sums of the ``nr`` rows of ``d``, in row order."""
    if floating is float:
        cbp_sum_rows_f(nr, m, d, ldd, gb, accumulate)
    else:
        cbp_sum_rows_d(nr, m, d, ldd, gb, accumulate)


cdef void _chunk_grad(const Net* net, const floating* xin, const floating* acts,
                      const floating* deltas, Py_ssize_t cap, Py_ssize_t r0,
                      Py_ssize_t nr, floating* P, const int* cols=NULL) noexcept nogil:
    """Unnormalised gradient of rows ``r0 .. r0 + nr`` of a dense block
    (``A^T delta`` and the column sums of ``delta`` of every layer), written
    to ``P`` in the packed layout.  ``cols`` (or NULL): the input rows hold
    only the columns listed there (see _gather_cols); the first layer's
    gradient is zero in the others' rows."""
    cdef Py_ssize_t L = net.n_layers, li, u_in, m, s_next, lda, p, j0, k1, rows
    cdef const floating* a_in
    cdef const floating* d
    cdef const int* cidx
    for li in range(L):
        u_in = net.units[li]
        m = net.zw[li + 1]
        s_next = net.stride[li + 1]
        d = deltas + _layer_base(net, cap, li + 1) + r0 * s_next + net.zoff[li + 1]
        if li == 0:
            lda = u_in
            a_in = xin + r0 * lda
        else:
            lda = net.stride[li]
            a_in = acts + _layer_base(net, cap, li) + r0 * lda
        if own_gemm_on():
            rows = u_in
            cidx = NULL
            if li == 0 and cols != NULL:
                # The rows of the columns left out are zero; the others are
                # written by index.
                j0 = 0
                for p in range(cols[0] + 1):
                    k1 = cols[p + 1] if p < cols[0] else u_in
                    memset(P + j0 * m, 0, (k1 - j0) * m * sizeof(floating))
                    j0 = k1 + 1
                rows = cols[0]
                cidx = cols + 1
            # The bias gradient made by the same pass over the deltas.
            mm_own(<int>rows, <int>m, <int>nr, a_in, <int>lda, d, <int>s_next, NULL,
                   False, NULL, 0, P + net.coef_off[li], <int>m, True, NULL, cidx,
                   P + net.icpt_off[li])
            continue
        mm_rowmajor(Trans, NoTrans, <int>u_in, <int>m, <int>nr, <floating>1, a_in,
                    <int>lda, d, <int>s_next, <floating>0, P + net.coef_off[li],
                    <int>m)
        _bias_grad(m, d, s_next, nr, P + net.icpt_off[li], False)


cdef inline Py_ssize_t _n_chunks(Py_ssize_t nb) noexcept nogil:
    """Row chunks of a block of ``nb`` rows."""
    cdef Py_ssize_t ch = _chunk_rows(nb)
    return (nb + ch - 1) // ch


cdef Py_ssize_t _max_chunks(Py_ssize_t cap) noexcept nogil:
    """Most row chunks a block of at most ``cap`` rows is cut into."""
    cdef Py_ssize_t nb, most = 1
    for nb in range(1, cap + 1):
        most = max(most, _n_chunks(nb))
    return most


def chunk_rows(Py_ssize_t nb):
    """Rows per forward chunk of a block of ``nb`` rows (see _chunk_rows)."""
    return _chunk_rows(nb)


def chunk_grad_size(Py_ssize_t cap, Py_ssize_t n_params, Py_ssize_t itemsize):
    """Elements of the chunk-local gradients of blocks of at most ``cap``
    rows (see :func:`_chunk_grad`): one cache-aligned packed gradient per
    chunk but the first (which is made in the gradient buffer)."""
    return (_max_chunks(cap) - 1) * _aligned_ld(n_params, itemsize)


cdef void _attach_pgrad(Net* net, Py_ssize_t cap, floating[::1] pgrad) noexcept:
    """Have mini-batches of dense input make their gradient chunk by chunk
    in ``pgrad`` (None or too small: block by block, see _block_grad)."""
    cdef Py_ssize_t ld = _aligned_ld(net.n_params, sizeof(floating))
    if pgrad is not None and pgrad.shape[0] >= (_max_chunks(cap) - 1) * ld \
            and pgrad.shape[0] > 0:
        net.pgrad = &pgrad[0]
        net.pg_stride = ld


cdef inline void _reduce_chunks(const Net* net, floating* grad, Py_ssize_t k0,
                                Py_ssize_t k1, Py_ssize_t n_chunks) noexcept nogil:
    """``grad[k0:k1]`` (which holds the first chunk's gradient) plus the
    other chunks' gradients, in chunk order."""
    cdef Py_ssize_t c
    cdef const floating* P = <const floating*>net.pgrad
    for c in range(1, n_chunks):
        _axpy(k1 - k0, <floating>1, P + (c - 1) * net.pg_stride + k0, grad + k0)


cdef inline void _chunk_task(const Net* net, const floating* params, const Source* src,
                             SpBatch* sb, const Py_ssize_t* rows, Py_ssize_t nb,
                             Py_ssize_t c, long long pos, const floating* Y,
                             const floating* sw, const floating* xin, floating* xbuf,
                             floating* acts, floating* deltas, floating* gates,
                             Py_ssize_t cap, floating* grad, double* closs, double* csw,
                             bint need_grad, bint local, int* ready=NULL) noexcept nogil:
    """Chunk ``c`` of a block of ``nb`` rows: gather its dense rows into
    ``xbuf`` (when not NULL; ``xin`` is then that buffer), forward and
    backward pass, and with ``local`` its partial gradient."""
    cdef Py_ssize_t ch = _chunk_rows(nb), r0 = c * ch, nr = min(ch, nb - r0)
    cdef int* cols = NULL
    if xbuf != NULL:
        if local and net.cols != NULL:
            cols = net.cols + c * net.cols_ld
            if not _gather_cols(net, src, rows + r0, nr, xbuf + r0 * src.n_features,
                                cols, max(1, src.n_features // COLS_DROP_FRACTION)):
                cols = NULL
        else:
            _gather_rows(src, rows, r0, r0 + nr, xbuf)
    _chunk_backward(net, params, src, sb, rows, nr, xin, Y, sw, acts, deltas,
                    gates, cap, r0, pos, &closs[c], &csw[c], need_grad, ready, cols)
    if local:
        # The first chunk's gradient goes straight into grad.
        _chunk_grad(net, xin, acts, deltas, cap, r0, nr,
                    grad if c == 0 else (<floating*>net.pgrad)
                    + (c - 1) * net.pg_stride, cols)


# Values a thread adds up per task when the chunk gradients are reduced.
cdef Py_ssize_t REDUCE_BLOCK = 1024


cdef inline Py_ssize_t _task_layer(const Py_ssize_t* gblocks, Py_ssize_t n_gblocks,
                                   Py_ssize_t k) noexcept nogil:
    """Layer of gradient task ``k``: weight block ``k`` (``k < n_gblocks``),
    else the biases of layer ``k - n_gblocks``."""
    return gblocks[GB_FIELDS * k] if k < n_gblocks else k - n_gblocks


cdef void _grad_task(const Net* net, const Source* src, const SpBatch* sb,
                     Py_ssize_t nb, const floating* xin, const floating* acts,
                     const floating* deltas, Py_ssize_t cap, floating* grad,
                     const Py_ssize_t* gblocks, Py_ssize_t n_gblocks, Py_ssize_t k,
                     bint accumulate) noexcept nogil:
    """Gradient task ``k`` over the ``nb`` rows of a block: weight block ``k``
    (``A^T delta``), or a layer's bias gradient (column sums of ``delta``),
    written to (``accumulate``: added to) ``grad``.  Each element is summed
    over the rows in row order by exactly one task."""
    cdef Py_ssize_t li = _task_layer(gblocks, n_gblocks, k)
    cdef Py_ssize_t m = net.zw[li + 1], s_next = net.stride[li + 1]
    cdef Py_ssize_t i0, i1, j0, j1
    cdef const floating* d = deltas + _layer_base(net, cap, li + 1) + net.zoff[li + 1]
    if k >= n_gblocks:
        _bias_grad(m, d, s_next, nb, grad + net.icpt_off[li], accumulate)
        return
    i0 = gblocks[GB_FIELDS * k + 1]
    i1 = gblocks[GB_FIELDS * k + 2]
    j0 = gblocks[GB_FIELDS * k + 3]
    j1 = gblocks[GB_FIELDS * k + 4]
    if li == 0:
        _layer0_grad_block(net, src, sb, nb, xin, d, s_next,
                           cap * net.total_units - (d - deltas), grad, i0, i1, j0, j1,
                           accumulate)
    else:
        mm_rowmajor(Trans, NoTrans, <int>(i1 - i0), <int>(j1 - j0), <int>nb,
                    <floating>1, acts + _layer_base(net, cap, li) + i0,
                    <int>net.stride[li], d + j0, <int>s_next,
                    <floating>1 if accumulate else <floating>0,
                    grad + net.coef_off[li] + i0 * m + j0, <int>m)


cdef double _task_step(const Net* net, const Fuse* fuse, const floating* grad,
                       const Py_ssize_t* gblocks, Py_ssize_t n_gblocks, Py_ssize_t k,
                       bint claim) noexcept nogil:
    """The optimiser step (see Fuse) of the parameters of gradient task
    ``k``; returns their weight penalty before the step."""
    cdef Py_ssize_t li = _task_layer(gblocks, n_gblocks, k)
    cdef Py_ssize_t m = net.zw[li + 1], off, i0, i1, j0, j1, i
    cdef floating* fp = <floating*>fuse.params
    cdef floating* fs1 = <floating*>fuse.s1
    cdef floating* fs2 = <floating*>fuse.s2
    cdef double pen
    if k >= n_gblocks:
        off = net.icpt_off[li]
        return _step_range(net, fuse.o, off, off + m, li, False, fp, fs1, fs2, grad,
                           1.0, fuse.sw_sum, fuse.lr_t, claim)
    off = net.coef_off[li]
    i0 = gblocks[GB_FIELDS * k + 1]
    i1 = gblocks[GB_FIELDS * k + 2]
    j0 = gblocks[GB_FIELDS * k + 3]
    j1 = gblocks[GB_FIELDS * k + 4]
    if j0 == 0 and j1 == m:
        pen = _step_range(net, fuse.o, off + i0 * m, off + i1 * m, li, True, fp, fs1,
                          fs2, grad, 1.0, fuse.sw_sum, fuse.lr_t, claim)
    else:
        # A block of columns: row by row, penalties in row order.
        pen = 0.0
        for i in range(i0, i1):
            pen = pen + _step_range(net, fuse.o, off + i * m + j0, off + i * m + j1,
                                    li, True, fp, fs1, fs2, grad, 1.0, fuse.sw_sum,
                                    fuse.lr_t, claim)
    # The next batch's backward product reads the copy; nothing reads this
    # block of it any more in this batch (see _merged_pass's deferral).
    _refresh_wt_rect(net, fp, li, i0, i1, j0, j1)
    return pen


# Most row chunks and gradient tasks of a merged pass (see _merged_pass);
# progress flags a cache line apart.
cdef enum:
    MERGE_MAX_CHUNKS = 16
    MERGE_MAX_TASKS = 1024
    FLAG_STRIDE = 16


cdef inline Py_ssize_t _layer_tasks(const Py_ssize_t* gblocks,
                                    Py_ssize_t n_gblocks, Py_ssize_t li,
                                    Py_ssize_t* order,
                                    Py_ssize_t n_order) noexcept nogil:
    """Append the weight blocks of layer ``li`` to ``order[:n_order]``;
    returns the new length."""
    cdef Py_ssize_t k
    for k in range(n_gblocks):
        if gblocks[GB_FIELDS * k] == li:
            order[n_order] = k
            n_order += 1
    return n_order


cdef inline void _thread_chunks(const Net* net, const floating* params,
                                const Source* src, SpBatch* sb, const Py_ssize_t* rows,
                                Py_ssize_t nb, long long pos, const floating* Y,
                                const floating* sw, const floating* xin, floating* xbuf,
                                floating* acts, floating* deltas, floating* gates,
                                Py_ssize_t cap, floating* grad, double* closs,
                                double* csw, bint local, int* ready, int t,
                                int nt) noexcept nogil:
    """Inside a parallel region of ``nt`` threads: thread ``t``'s row chunks
    of a block (chunk c on thread c mod nt, as in _block_grad's chunk loop,
    so a chunk's buffers stay on one core batch after batch), each with its
    progress flag in ``ready`` (or NULL; see _merged_pass)."""
    cdef Py_ssize_t c = t, n_chunks = _n_chunks(nb)
    while c < n_chunks:
        _chunk_task(net, params, src, sb, rows, nb, c, pos, Y, sw, xin, xbuf, acts,
                    deltas, gates, cap, grad, closs, csw, True, local,
                    &ready[c * FLAG_STRIDE] if ready != NULL else NULL)
        c = c + nt


cdef void _merged_pass(const Net* net, const floating* params, const Source* src,
                       SpBatch* sb, const Py_ssize_t* rows, Py_ssize_t nb,
                       long long pos, const floating* Y, const floating* sw,
                       const floating* xin, floating* acts, floating* deltas,
                       floating* gates, Py_ssize_t cap, floating* grad, double* closs,
                       double* csw, const Py_ssize_t* gblocks, Py_ssize_t n_gblocks,
                       bint accumulate, int n_threads, const Py_ssize_t* rows_next,
                       Py_ssize_t nb_next, int slot, floating* xbuf, bint gather,
                       const Fuse* fuse) noexcept nogil:
    """The row chunks and the gradient tasks of one block of rows (sparse,
    or dense without chunk-local gradients) in one parallel region: a
    thread that has finished its chunks goes on to the gradient tasks whose
    deltas every chunk has written, instead of waiting for the other chunks
    at the end of a region.  ``gather``: each chunk first copies its dense
    rows into ``xbuf`` (see _chunk_task).

    Chunk c still runs on thread c mod n_threads, and every task computes
    what it computes in _block_grad's two regions, over the same rows, so
    the results are the same bit for bit; only when the work is done
    changes.  Chunks raise a progress flag as their deltas appear, layer by
    layer from the output (see _chunk_backward).  A gradient task of layer
    l waits for the deltas of layer l + 1 of every chunk, so the tasks that
    can start while chunks still run come first (see the task order
    below).  ``fuse`` (or NULL): the step as in _block_grad, except that the
    weights of a layer l >= 1 are read by the chunks' backward pass until
    they have written the deltas of layer l, so a block whose gradient is
    ready before that is stepped after the region's tasks.

    Two cores of one VM can differ in speed by 10-20% for a whole fit (the
    host's clocks and neighbours; measured in two-thread fits of the MNIST
    adam case); an equal row split then waits at every batch for the
    slower core's chunk.  Here that wait goes into the gradient of the
    upper layers and the next batch's sort.
    """
    cdef Py_ssize_t n_chunks = _n_chunks(nb), L = net.n_layers
    cdef Py_ssize_t n_tasks = n_gblocks + L, c = 0, j, k, li
    cdef Py_ssize_t ahead = 1 if rows_next != NULL else 0
    # Initialised: the region copies them in (a prange inside it).
    cdef int t = 0, nt = 1
    cdef int ready[MERGE_MAX_CHUNKS * FLAG_STRIDE]
    cdef unsigned char deferred[MERGE_MAX_TASKS]
    cdef Py_ssize_t order[MERGE_MAX_TASKS]
    cdef Py_ssize_t n_order = 0
    cdef bint any_deferred = False
    global MERGED_PASSES
    MERGED_PASSES += 1
    for c in range(n_chunks):
        ready[c * FLAG_STRIDE] = 0
    for k in range(n_tasks):
        deferred[k] = 0
    # Task order: the weight blocks of the hidden-to-hidden layers from the
    # top (their deltas are ready first, while the last chunks still run),
    # then the first layer's, then the output layer's and the biases (small
    # tasks last, to even out the threads' finish).
    for li in range(L - 2, 0, -1):
        n_order = _layer_tasks(gblocks, n_gblocks, li, order, n_order)
    n_order = _layer_tasks(gblocks, n_gblocks, 0, order, n_order)
    if L >= 2:
        n_order = _layer_tasks(gblocks, n_gblocks, L - 1, order, n_order)
    for k in range(n_gblocks, n_tasks):
        order[n_order] = k
        n_order += 1
    with parallel(num_threads=n_threads):
        t = omp_get_thread_num()
        nt = omp_get_num_threads()
        _thread_chunks(net, params, src, sb, rows, nb, pos, Y, sw, xin,
                       xbuf if gather else NULL, acts, deltas, gates, cap, grad, closs,
                       csw, False, ready, t, nt)
        for j in prange(-ahead, n_tasks, schedule="dynamic"):
            if j < 0:
                _sort_into_slot(src, sb, rows_next, nb_next, 1 - slot, xbuf)
            else:
                k = order[j]
                li = _task_layer(gblocks, n_gblocks, k)
                cbp_flags_wait(ready, <int>n_chunks, FLAG_STRIDE, <int>(L - li))
                _grad_task(net, src, sb, nb, xin, acts, deltas, cap, grad, gblocks,
                           n_gblocks, k, accumulate)
                if fuse != NULL:
                    if li == 0 or k >= n_gblocks or (MERGE_MODE == 1 and cbp_flags_reached(
                            ready, <int>n_chunks, FLAG_STRIDE, <int>(L - li + 1))):
                        fuse.pen[k] = _task_step(net, fuse, grad, gblocks, n_gblocks,
                                                 k, True)
                    else:
                        deferred[k] = 1
    if fuse == NULL:
        return
    global PUT_OFF
    for k in range(n_tasks):
        if deferred[k]:
            any_deferred = True
            PUT_OFF += 1
    if any_deferred:
        for k in prange(n_tasks, num_threads=n_threads, schedule="dynamic"):
            if deferred[k]:
                fuse.pen[k] = _task_step(net, fuse, grad, gblocks, n_gblocks, k, True)


cdef void _local_pass(const Net* net, const floating* params, const Source* src,
                      SpBatch* sb, const Py_ssize_t* rows, Py_ssize_t nb,
                      long long pos, const floating* Y, const floating* sw,
                      const floating* xin, floating* xbuf, floating* acts,
                      floating* deltas, floating* gates, Py_ssize_t cap,
                      floating* grad, double* closs, double* csw, int n_threads,
                      Fuse* fuse) noexcept nogil:
    """The row chunks of a block with chunk-local gradients and, with
    ``fuse`` (else NULL), the optimiser step in one parallel region: each
    thread runs its chunks, waits at a barrier for the others', then sums
    and steps its own run of update blocks, as :func:`_apply_step` would
    with ``pending`` chunks (same calls on the same blocks, so the same
    bits).  Saves the second region's start and end and the serial work
    between the two, per batch.  ``fuse.lr_t`` and ``fuse.sw_sum``: set by
    the caller."""
    cdef Py_ssize_t n_chunks = _n_chunks(nb), n_ub = 0
    cdef const Py_ssize_t* ub = NULL
    # Initialised: the region copies them in.
    cdef int t = 0, nt = 1
    global LOCAL_STEPS
    if fuse != NULL:
        ub = fuse.ublocks
        n_ub = fuse.n_ublocks
        LOCAL_STEPS += 1
    with parallel(num_threads=n_threads):
        t = omp_get_thread_num()
        nt = omp_get_num_threads()
        _thread_chunks(net, params, src, sb, rows, nb, pos, Y, sw, xin, xbuf, acts,
                       deltas, gates, cap, grad, closs, csw, True, NULL, t, nt)
        if fuse != NULL:
            cbp_barrier()
            # With the next batch's transposed copies (see _accumulate).
            _step_run(net, fuse.o, <floating*>fuse.params, <floating*>fuse.s1,
                      <floating*>fuse.s2, grad, 1.0, fuse.sw_sum, fuse.lr_t, ub, n_ub,
                      t, nt, n_chunks, fuse.bpen, True)
    if fuse != NULL:
        fuse.wt_fresh = True


# ---------------------------------------------------------------------------
# One block of rows: loss and gradient, in parallel.
# ---------------------------------------------------------------------------

cdef void _block_grad(const Net* net, const floating* params, const Source* src,
                      SpBatch* sb, const Py_ssize_t* rows, Py_ssize_t nb,
                      long long pos, const floating* Y,
                      const floating* sw, floating* acts, floating* deltas,
                      floating* gates, floating* xbuf, Py_ssize_t cap, floating* grad,
                      double* closs, double* csw, const Py_ssize_t* gblocks,
                      Py_ssize_t n_gblocks, bint accumulate, bint need_grad,
                      int n_threads, double* loss_sum, double* sw_sum,
                      const Py_ssize_t* rows_next, Py_ssize_t nb_next,
                      Fuse* fuse) noexcept nogil:
    """Loss of ``nb`` rows (the first at epoch position ``pos``) added to
    ``loss_sum``/``sw_sum`` and, with ``need_grad``, their unnormalised
    gradient written to (``accumulate``: added to) ``grad``: ``A^T delta``
    and column sums of ``delta``.  ``rows_next`` (or NULL): the ``nb_next``
    rows of the next batch, whose by-feature copy of sparse input is made
    beside the gradient (see SpBatch).  ``fuse`` (or NULL): step the
    parameters block by block in the gradient pass (see Fuse) when this is
    the only pass of the batch and its weights do not sum to zero."""
    cdef Py_ssize_t n_chunks, c, k, i0, i1
    cdef Py_ssize_t nf = src.n_features
    cdef const floating* xin = NULL
    cdef const floating* X = <const floating*>src.x
    cdef bint consecutive = True, gather = False
    cdef Py_ssize_t sort_task = 0, keep = -1, off, ahead_task = 0, n_red
    cdef int slot = 0
    cdef bint fused = False, merge, local_step
    # Chunk-local gradients: dense input, one pass (see _chunk_grad).
    cdef bint local = (net.pgrad != NULL and need_grad and not accumulate
                       and not src.csr)
    n_chunks = _n_chunks(nb)
    # ... stepped in the chunks' region when the step runs on several threads.
    local_step = (local and fuse != NULL and fuse.ublocks != NULL and n_chunks > 1
                  and n_threads > 1)

    # Dense BLAS input: rows are used in place when they are consecutive in
    # X, otherwise gathered once into the batch-sized buffer.
    consecutive = _consecutive(rows, nb)
    if src.csr:
        _sparse_rows(src, sb, rows, nb)
    else:
        if consecutive:
            xin = X + rows[0] * nf
        else:
            # Each forward chunk gathers its own rows first (no separate
            # parallel region for the copy).
            gather = True
            xin = xbuf

    # The by-feature copy of a sparse block (for the first layer's gradient)
    # depends only on the rows.  Unless the previous batch's gradient tasks
    # made it already, one thread makes it while others start on the
    # forward chunks: task 0 of a dynamic schedule.  Every chunk writes its
    # own outputs, so which thread runs it never changes a result.
    if src.csr and need_grad:
        sort_task = 1
        if sb.n_keep == 0 and sb.ahead == rows and sb.ahead_nb == nb:
            sort_task = 0
            slot = sb.ahead_slot
        sb.fptr = sb.fptr0 + slot * (nf + 1)
        sb.fent = (<floating*>sb.fent0) + 2 * slot * sb.nnz_cap
        if sb.n_keep > 0 and consecutive and rows[0] % cap == 0 \
                and rows[0] // cap < sb.n_keep:
            keep = rows[0] // cap
            off = src.ptr[rows[0]] - src.ptr[0]
            sb.fptr = sb.fptr0 + keep * (nf + 1)
            sb.fent = (<floating*>sb.fent0) + 2 * off
            if sb.kept[keep] == nb:
                sort_task = 0
    if sort_task:
        for c in prange(n_chunks + 1, num_threads=n_threads, schedule="dynamic"):
            if c == 0:
                _sort_by_feature(src, rows, nb, sb.fptr, <floating*>sb.fent)
            else:
                _chunk_task(net, params, src, sb, rows, nb, c - 1, pos, Y, sw, xin,
                            xbuf if gather else NULL, acts, deltas, gates, cap, grad,
                            closs, csw, need_grad, local)
    # Mini-batches on several threads, unless chunk-local: chunks and
    # gradient tasks in one region (see _merged_pass).
    merge = (MERGE_MODE > 0 and need_grad and not local and not sort_task
             and keep < 0 and (not src.csr or sb.n_keep == 0)
             and n_threads > 1 and n_chunks <= MERGE_MAX_CHUNKS
             and n_gblocks + net.n_layers <= MERGE_MAX_TASKS)
    if merge or local_step:
        # Their chunks run below, in the region that steps, which steps only
        # a batch of non-zero weight: the chunks' weights now, made as the
        # chunks make them.
        for c in range(n_chunks):
            i0 = c * _chunk_rows(nb)
            csw[c] = _rows_weight(rows + i0, min(_chunk_rows(nb), nb - i0), sw)
    elif not sort_task:
        # Chunk c on thread c mod n_threads, batch after batch: its row
        # buffers (inputs, activations, deltas, partial gradient) then stay
        # in one core's cache instead of moving to the other core whenever a
        # dynamic schedule hands the chunk over (1.02-1.05x on load_digits,
        # two threads).
        for c in prange(n_chunks, num_threads=n_threads, schedule="static",
                        chunksize=1):
            _chunk_task(net, params, src, sb, rows, nb, c, pos, Y, sw, xin,
                        xbuf if gather else NULL, acts, deltas, gates, cap, grad, closs,
                        csw, need_grad, local)
    if keep >= 0:
        sb.kept[keep] = nb
    for c in range(n_chunks):
        if not (merge or local_step):
            loss_sum[0] += closs[c]
        sw_sum[0] += csw[c]
    sb.ahead = NULL
    if not need_grad:
        return
    if local:
        # The batch gradient: the chunks' partial ones summed in chunk order,
        # here or, for a caller that steps right after, in its step.
        if n_chunks == 1:
            return
        if local_step:
            # Stepped in the chunks' region, unless the batch weighs nothing.
            fuse.done = sw_sum[0] > 0
            if fuse.done:
                fuse.sw_sum = sw_sum[0]
                fuse.lr_t = _adam_rate(fuse.o) if fuse.o.kind == OPT_ADAM else 0.0
            _local_pass(net, params, src, sb, rows, nb, pos, Y, sw, xin,
                        xbuf if gather else NULL, acts, deltas, gates, cap, grad,
                        closs, csw, n_threads, fuse if fuse.done else NULL)
            for c in range(n_chunks):
                loss_sum[0] += closs[c]
            if fuse.done:
                fuse.pen_total = 0.0
                for k in range(fuse.n_ublocks):
                    fuse.pen_total += fuse.bpen[k]
            return
        if fuse != NULL and not accumulate:
            fuse.pending = n_chunks
            return
        n_red = (net.n_params + REDUCE_BLOCK - 1) // REDUCE_BLOCK
        for k in prange(n_red, num_threads=n_threads, schedule="static"):
            i0 = k * REDUCE_BLOCK
            i1 = min(i0 + REDUCE_BLOCK, net.n_params)
            _reduce_chunks(net, grad, i0, i1, n_chunks)
        return

    # Weight gradients, one block of input units at a time, then each
    # layer's bias gradient (short tasks last, to even out the threads'
    # finish): each element is summed over the rows in row order by exactly
    # one thread.  First of all, the next batch's sort into the other slot.
    if src.csr and sb.n_keep == 0 and rows_next != NULL and nb_next > 0:
        ahead_task = 1
    if fuse != NULL:
        fuse.done = False
        if not accumulate and sw_sum[0] > 0:
            fused = True
            fuse.done = True
            fuse.sw_sum = sw_sum[0]
            fuse.lr_t = _adam_rate(fuse.o) if fuse.o.kind == OPT_ADAM else 0.0
    if merge:
        _merged_pass(net, params, src, sb, rows, nb, pos, Y, sw, xin, acts, deltas,
                     gates, cap, grad, closs, csw, gblocks, n_gblocks, accumulate,
                     n_threads, rows_next if ahead_task else NULL, nb_next, slot,
                     xbuf, gather, fuse if fused else NULL)
        for c in range(n_chunks):
            loss_sum[0] += closs[c]
    else:
        for k in prange(-ahead_task, n_gblocks + net.n_layers, num_threads=n_threads,
                        schedule="dynamic"):
            if k < 0:
                _sort_into_slot(src, sb, rows_next, nb_next, 1 - slot, xbuf)
            else:
                _grad_task(net, src, sb, nb, xin, acts, deltas, cap, grad, gblocks,
                           n_gblocks, k, accumulate)
                if fused:
                    fuse.pen[k] = _task_step(net, fuse, grad, gblocks, n_gblocks, k,
                                             n_threads > 1)
    if fused:
        # In task order.
        fuse.pen_total = 0.0
        for k in range(n_gblocks + net.n_layers):
            fuse.pen_total += fuse.pen[k]
        # Every task refreshed its block's transposed copy.
        fuse.wt_fresh = True
    if ahead_task:
        sb.ahead = rows_next
        sb.ahead_nb = nb_next
        sb.ahead_slot = 1 - slot


cdef int _accumulate(const Net* net, const floating* params, const Source* src,
                     SpBatch* sb, const Py_ssize_t* rows, Py_ssize_t n, long long pos,
                     const floating* Y, const floating* sw, floating* acts,
                     floating* deltas, floating* gates, floating* xbuf, Py_ssize_t cap,
                     floating* grad, double* closs, double* csw,
                     const Py_ssize_t* gblocks, Py_ssize_t n_gblocks, bint need_grad,
                     int n_threads, double* loss_sum, double* sw_sum,
                     bint check_signals, const Py_ssize_t* rows_next=NULL,
                     Py_ssize_t nb_next=0, Fuse* fuse=NULL) noexcept nogil:
    """Loss and unnormalised gradient of ``n`` rows, ``cap`` rows per pass.
    ``rows_next``: the next batch's rows and ``fuse`` (see :func:`_block_grad`),
    used when ``n <= cap``.

    Returns STATUS_INTERRUPTED when ``check_signals`` and Ctrl-C arrives
    between passes, else STATUS_OK."""
    cdef Py_ssize_t start = 0, nb
    loss_sum[0] = 0.0
    sw_sum[0] = 0.0
    # A local pass copied the weights it stepped (see _local_pass).
    if need_grad and not (fuse != NULL and fuse.wt_fresh):
        _refresh_wt(net, params)
    if fuse != NULL:
        fuse.wt_fresh = False
    while start < n:
        nb = min(cap, n - start)
        _block_grad(net, params, src, sb, rows + start, nb, pos + start, Y, sw, acts,
                    deltas, gates, xbuf, cap, grad, closs, csw, gblocks, n_gblocks,
                    start > 0, need_grad, n_threads, loss_sum, sw_sum,
                    rows_next if n <= cap else NULL, nb_next,
                    fuse if n <= cap else NULL)
        start += nb
        if check_signals and start < n and _interrupted():
            return STATUS_INTERRUPTED
    return STATUS_OK


cdef inline double _step_range(const Net* net, const Optim* o, Py_ssize_t k0,
                               Py_ssize_t k1, Py_ssize_t li, bint coef,
                               floating* params, floating* s1, floating* s2,
                               const floating* grad, double c, double sw_sum,
                               double lr_t, bint claim,
                               const floating* grad2=NULL) noexcept nogil:
    """Optimiser step of parameters ``k0:k1`` of layer ``li`` (weights when
    ``coef``, else biases) with the gradient scaled by the clipping factor
    ``c``; returns their weight penalty before the step.  ``claim``: the
    step runs on several threads, which have all read these weights in the
    forward pass (see cbp_claim).  A one-thread step after a multithreaded
    pass (networks under STEP_MIN_PARALLEL parameters) does not claim: on
    784-4-10 that measured within noise (minima 0.96-0.99x).  ``grad2``
    (or NULL): the last chunk gradient, added into ``grad`` first (which is
    then written, so a caller passes one only for its own accumulator); Adam
    without L1 adds it in the step's own pass (see cbp_adam_ssq)."""
    cdef double pen
    if claim:
        cbp_claim(params + k0, (k1 - k0) * sizeof(floating))
    if grad2 != NULL and not (o.kind == OPT_ADAM and o.l1 == 0):
        _axpy(k1 - k0, <floating>1, grad2 + k0, <floating*>grad + k0)
        grad2 = NULL
    if o.kind == OPT_ADAM and o.l1 == 0:
        # The penalty, the chunks' sum and the step in one pass.
        pen = (0.5 * o.alpha if coef else 0.0) * _adam_ssq(
            o, k1 - k0, params + k0, s1 + k0, s2 + k0, c, <floating*>grad + k0,
            grad2 + k0 if grad2 != NULL else NULL, o.alpha * c if coef else 0.0,
            sw_sum, _rate(o, lr_t, net.lr_mult[li]))
    elif o.kind == OPT_SGD and o.l1 == 0:
        # The penalty is read in the same pass as the step.
        pen = (0.5 * o.alpha if coef else 0.0) * _sgd_ssq(
            o, k1 - k0, params + k0, s1 + k0, c / sw_sum, grad + k0,
            o.alpha * c / sw_sum if coef else 0.0, _rate(o, lr_t, net.lr_mult[li]))
    else:
        pen = _penalty(k1 - k0, params + k0, o.alpha, o.l1) if coef else 0.0
        _step(o, k1 - k0, params + k0, s1 + k0, s2 + k0, <floating>c, grad + k0,
              o.alpha * c if coef else 0.0, o.l1 * c if coef else 0.0, sw_sum,
              _rate(o, lr_t, net.lr_mult[li]))
    if net.w0 != NULL and li == 0 and coef:
        _sync_w0(net, params, k0, k1, claim)
    return pen


cdef Py_ssize_t _first_block(const Py_ssize_t* ublocks, Py_ssize_t n_ublocks,
                             Py_ssize_t n_params, Py_ssize_t t,
                             Py_ssize_t n_threads) noexcept nogil:
    """First update block of thread ``t`` of ``n_threads`` (``n_ublocks``
    for ``t == n_threads``): the threads take the blocks (which cover the
    ``n_params`` parameters) in order, each those whose middle parameter
    lies in its equal share.  Only who steps a block depends on this, never
    a result."""
    cdef Py_ssize_t k, size, before = 0
    if t >= n_threads:
        return n_ublocks
    for k in range(n_ublocks):
        size = ublocks[UB_FIELDS * k + 1] - ublocks[UB_FIELDS * k]
        if (2 * before + size) * n_threads >= 2 * t * n_params:
            return k
        before += size
    return n_ublocks


cdef double _apply_step(const Net* net, Optim* o, floating* params, floating* s1,
                        floating* s2, floating* grad, double sw_sum,
                        const Py_ssize_t* ublocks, Py_ssize_t n_ublocks,
                        double* bwork, int n_threads,
                        Py_ssize_t pending=0, bint copy_wt=False) noexcept nogil:
    """Normalise an accumulated gradient, add the penalty terms, clip it and
    update the parameters in place.  Returns the weight penalty *before* the
    update, which the batch loss needs.  ``pending`` > 1: ``grad`` holds the
    first of that many chunk gradients, which each block sums (in chunk
    order) just before its step, while it is in cache; only without
    clipping, whose norm needs the whole sum first (run_epoch defers the
    sum only when it may fuse, which clipping rules out).

    ``ublocks`` holds (start, end, layer, is_coef) of every update block:
    blocks never straddle layers, so each has one learning-rate factor.
    ``copy_wt``: each thread also refreshes the transposed copies of the
    blocks it stepped (see _step_run), which the caller then need not do.
    """
    cdef Py_ssize_t k, k0, k1, t
    cdef bint coef
    cdef double lr_t = 0.0, pen = 0.0, c = 1.0, norm = 0.0
    cdef double* bsq = bwork
    cdef double* bpen = bwork + n_ublocks
    if o.kind == OPT_ADAM:
        lr_t = _adam_rate(o)
    if o.clip > 0:
        for k in prange(n_ublocks, num_threads=n_threads, schedule="dynamic"):
            k0 = ublocks[UB_FIELDS * k]
            k1 = ublocks[UB_FIELDS * k + 1]
            coef = ublocks[UB_FIELDS * k + 3]
            bsq[k] = _gradsq(k1 - k0, grad + k0, params + k0,
                             o.alpha if coef else 0.0, o.l1 if coef else 0.0)
        for k in range(n_ublocks):
            norm += bsq[k]
        norm = sqrt(norm) / sw_sum
        if norm > o.clip:
            c = o.clip / norm
    # Each thread steps (and sums, when pending) the same run of blocks batch
    # after batch, so their gradient, weights and moments stay in its cache.
    # The runs are cut by parameter count, not block count: the blocks'
    # lengths differ at layer ends and the biases (load_digits: a plain
    # static split of its ten blocks gave one thread 5,120 parameters, the
    # other 2,390).
    for t in prange(n_threads, num_threads=n_threads, schedule="static"):
        _step_run(net, o, params, s1, s2, grad, c, sw_sum, lr_t, ublocks, n_ublocks,
                  t, n_threads, pending, bpen, copy_wt)
    for k in range(n_ublocks):
        pen += bpen[k]
    return pen


cdef void _step_run(const Net* net, const Optim* o, floating* params, floating* s1,
                    floating* s2, floating* grad, double c, double sw_sum,
                    double lr_t, const Py_ssize_t* ublocks, Py_ssize_t n_ublocks,
                    Py_ssize_t t, Py_ssize_t nt, Py_ssize_t pending, double* bpen,
                    bint copy_wt) noexcept nogil:
    """The step of thread ``t`` of ``nt``: its run of update blocks (see
    _first_block), each summed over ``pending`` chunk gradients first when
    more than one (see _apply_step), its penalty before the step in
    ``bpen``.  ``copy_wt``: also copy the block's weights into its layer's
    transposed copy, if it has one (see _local_pass)."""
    cdef Py_ssize_t k, k0, k1, li
    cdef bint coef
    cdef const floating* last
    for k in range(_first_block(ublocks, n_ublocks, net.n_params, t, nt),
                   _first_block(ublocks, n_ublocks, net.n_params, t + 1, nt)):
        k0 = ublocks[UB_FIELDS * k]
        k1 = ublocks[UB_FIELDS * k + 1]
        li = ublocks[UB_FIELDS * k + 2]
        coef = ublocks[UB_FIELDS * k + 3]
        last = NULL
        if pending > 1:
            # All chunks but the last summed here, in chunk order; the last
            # is added by the step (in its own pass where it can).
            _reduce_chunks(net, grad, k0, k1, pending - 1)
            last = (<const floating*>net.pgrad) + (pending - 2) * net.pg_stride
        bpen[k] = _step_range(net, o, k0, k1, li, coef, params, s1, s2, grad, c,
                              sw_sum, lr_t, nt > 1, last)
        if copy_wt and coef and li > 0:
            # While the block is in this core's cache.
            _refresh_wt_range(net, params, li, k0 - net.coef_off[li],
                              k1 - net.coef_off[li])


# ---------------------------------------------------------------------------
# Unit-split mini-batches: one hidden layer, its units cut into blocks.
# ---------------------------------------------------------------------------

# Hidden units a block aims at.  Every block's products read the whole
# batch of inputs again, so blocks must be wide: with 784 inputs (dense
# MNIST, batch 200) blocks of about 50 units made one-hidden-layer fits of
# 256 units 0.84x as fast as without blocks, of 128 units 1.12-1.24x, of 256
# units (on 512) 1.20-1.38x; see split_bounds.
cdef Py_ssize_t SPLIT_UNITS = 256
# Most blocks (also the size of the arrays below), and the widest output
# layer (each block's partial output pre-activations are summed row by row).
cdef enum:
    SPLIT_MAX_BLOCKS = 8
    LINE_DOUBLES = LINE_BYTES // 8    # a per-block sum a cache line apart
cdef Py_ssize_t SPLIT_MAX_OUT = 32
# Each block's private region starts on a new page: a core's prefetchers
# read ahead into the next lines and would take them from the core that
# writes them.
cdef Py_ssize_t SPLIT_ALIGN = 4096


def split_bounds(Py_ssize_t n_hidden, Py_ssize_t itemsize):
    """Bounds of the hidden-unit blocks of a unit-split network (see
    :func:`_split_batch`): ``n_blocks + 1`` increasing unit indices from 0
    to ``n_hidden``, or an empty array for no blocks.

    ``n_hidden // SPLIT_UNITS`` blocks (at most ``SPLIT_MAX_BLOCKS``), and
    two from 256 units in float32 (paired fits on dense MNIST, 784-256-10,
    two threads: 1.15-1.38x as fast) but only from 512 in float64 (256
    units: 0.88-0.99x).  A function of the shapes alone, never of the
    thread count.
    """
    cdef Py_ssize_t n_blocks = min(n_hidden // SPLIT_UNITS, SPLIT_MAX_BLOCKS), p
    if n_hidden >= SPLIT_UNITS * (1 if itemsize <= 4 else 2):
        n_blocks = max(n_blocks, 2)
    if n_blocks < 2:
        return np.empty(0, dtype=np.intp)
    bounds = np.empty(n_blocks + 1, dtype=np.intp)
    for p in range(n_blocks + 1):
        bounds[p] = n_hidden * p // n_blocks
    return bounds


cdef bint _split_shape_ok(const Net* net, bint csr) noexcept nogil:
    """Whether a network's shape lets its mini-batches run unit-split: dense
    input, one hidden layer without dropout or maxout, at most
    SPLIT_MAX_OUT outputs.  run_epoch also needs clipping off and batches
    of one pass."""
    return (not csr and net.n_layers == 2 and net.drop <= 0
            and net.act[1] != ACT_MAXOUT and net.units[2] <= SPLIT_MAX_OUT)


def split_blocks(dict spec, bint csr, Py_ssize_t itemsize):
    """:func:`split_bounds` of a network's hidden layer, or an empty array
    when its shape rules the split out (see _split_shape_ok), so that no
    scratch is reserved for blocks the kernel would never use."""
    cdef Net net
    _make_net(&net, spec, int(spec["n_params"]), True, 0)
    if not _split_shape_ok(&net, csr):
        return np.empty(0, dtype=np.intp)
    return split_bounds(net.units[1], itemsize)


cdef struct SplitBlock:
    # Offsets (elements) of one block's private region.  The parameter
    # packs (weights, the two optimiser states and the gradient) each hold,
    # ``pack`` apart: the block's columns of W0 (n_in x ld), its part of b0
    # (ld), its rows of W1 (bw x n_out, padded) and the output bias (block 0
    # only; room in every block).
    Py_ssize_t w           # first pack (weights); then s1, s2, grad
    Py_ssize_t act         # cap x ld activations
    Py_ssize_t dlt         # cap x ld deltas
    Py_ssize_t part        # cap x n_out share of the output pre-activations
    Py_ssize_t wt          # n_out x ld: its rows of W1, transposed


cdef struct Split:
    Py_ssize_t n_blocks
    const Py_ssize_t* bounds    # n_blocks + 1 hidden-unit bounds
    void* base                  # floating*: the page-aligned block regions
    SplitBlock blk[SPLIT_MAX_BLOCKS]
    Py_ssize_t ld               # padded width of every block's rows
    Py_ssize_t pack             # elements between two packs of a block
    Py_ssize_t o_b0, o_w1, o_b1  # offsets of the parts within a pack
    double* closs               # per row chunk: weighted loss, a line apart
    double* pen                 # per block: penalty before the step, a line apart


cdef Py_ssize_t _split_plan(Split* sp, const Py_ssize_t* bounds, Py_ssize_t n_blocks,
                            Py_ssize_t n_in, Py_ssize_t n_out, Py_ssize_t cap,
                            Py_ssize_t itemsize) noexcept nogil:
    """Lay out the block regions; returns the elements they take in all
    (without the slack for aligning the base)."""
    cdef Py_ssize_t page = SPLIT_ALIGN // itemsize
    cdef Py_ssize_t p, ld, off = 0, wmax = 0
    sp.n_blocks = n_blocks
    sp.bounds = bounds
    for p in range(n_blocks):
        wmax = max(wmax, bounds[p + 1] - bounds[p])
    # One pack size for every block (the widest's), so the offsets within a
    # pack are shared.
    sp.ld = ld = _aligned_ld(wmax, itemsize)
    sp.o_b0 = n_in * ld
    sp.o_w1 = sp.o_b0 + ld
    sp.o_b1 = sp.o_w1 + _aligned_ld(wmax * n_out, itemsize)
    sp.pack = sp.o_b1 + _aligned_ld(n_out, itemsize)
    for p in range(n_blocks):
        sp.blk[p].w = off
        sp.blk[p].act = off + 4 * sp.pack
        sp.blk[p].dlt = sp.blk[p].act + cap * ld
        sp.blk[p].part = sp.blk[p].dlt + cap * ld
        sp.blk[p].wt = sp.blk[p].part + _aligned_ld(cap * n_out, itemsize)
        # Whole pages.
        off = (sp.blk[p].wt + n_out * ld + page - 1) // page * page
    return off


def split_scratch_size(const Py_ssize_t[::1] bounds, Py_ssize_t n_in, Py_ssize_t n_out,
                       Py_ssize_t cap, Py_ssize_t itemsize):
    """Elements of the zeroed scratch a unit-split network needs for
    batches of at most ``cap`` rows (0 without blocks): every block's
    private copy of its parameters, optimiser state and gradient, its
    activations and deltas, and its share of the output pre-activations."""
    cdef Split sp
    if bounds.shape[0] < 3:
        return 0
    return _split_plan(&sp, &bounds[0], bounds.shape[0] - 1, n_in, n_out, cap,
                       itemsize) + SPLIT_ALIGN // itemsize


cdef void _split_transpose(const Split* sp, Py_ssize_t p, Py_ssize_t n_out,
                           floating* base) noexcept nogil:
    """Block ``p``'s transposed copy of its rows of W1 (for the product
    with the output deltas), from its weight pack."""
    _transpose_block(base + sp.blk[p].w + sp.o_w1, n_out, base + sp.blk[p].wt, sp.ld,
                     0, sp.bounds[p + 1] - sp.bounds[p], 0, n_out)


cdef inline void _move(floating* pk, floating* flat, Py_ssize_t n,
                       bint to_blocks) noexcept nogil:
    if to_blocks:
        memcpy(pk, flat, n * sizeof(floating))
    else:
        memcpy(flat, pk, n * sizeof(floating))


cdef void _split_move(const Net* net, const Split* sp, floating* params, floating* s1,
                      floating* s2, bint to_blocks) noexcept nogil:
    """Copy the parameters and both optimiser states into the blocks'
    packs (``to_blocks``) or back; with ``to_blocks`` also fill each
    block's transposed copy of its rows of W1."""
    cdef Py_ssize_t n_in = net.units[0], H = net.units[1], n_out = net.units[2]
    cdef Py_ssize_t p, k, i, h0, bw
    cdef floating* flat
    cdef floating* pk
    for p in range(sp.n_blocks):
        h0 = sp.bounds[p]
        bw = sp.bounds[p + 1] - h0
        for k in range(3):
            flat = params if k == 0 else (s1 if k == 1 else s2)
            pk = (<floating*>sp.base) + sp.blk[p].w + k * sp.pack
            for i in range(n_in):
                _move(pk + i * sp.ld, flat + net.coef_off[0] + i * H + h0, bw,
                      to_blocks)
            _move(pk + sp.o_b0, flat + net.icpt_off[0] + h0, bw, to_blocks)
            _move(pk + sp.o_w1, flat + net.coef_off[1] + h0 * n_out, bw * n_out,
                  to_blocks)
            if p == 0:
                _move(pk + sp.o_b1, flat + net.icpt_off[1], n_out, to_blocks)
        if to_blocks:
            _split_transpose(sp, p, n_out, <floating*>sp.base)


cdef void _split_forward(const Net* net, const Split* sp, Py_ssize_t p,
                         const floating* xin, Py_ssize_t nb) noexcept nogil:
    """Block ``p``: its hidden activations ``f(x W0[:, h0:h1] + b0[h0:h1])``
    and its share ``a[:, h0:h1] W1[h0:h1, :]`` of the output
    pre-activations."""
    cdef Py_ssize_t nf = net.units[0], n_out = net.units[2], r
    cdef Py_ssize_t bw = sp.bounds[p + 1] - sp.bounds[p], ld = sp.ld
    cdef bint relu
    cdef floating* base = <floating*>sp.base
    cdef const floating* w = base + sp.blk[p].w
    cdef floating* a = base + sp.blk[p].act
    # Unit-split networks have no dropout: relu goes with the bias.
    relu = net.act[1] == ACT_RELU
    _product_bias(nb, bw, nf, xin, nf, w, ld, w + sp.o_b0, a, ld, relu)
    if not relu:
        for r in range(nb):
            _hidden_forward(net, 1, a + r * ld, bw)
    mm_rowmajor(NoTrans, NoTrans, <int>nb, <int>n_out, <int>bw, <floating>1, a,
                <int>ld, w + sp.o_w1, <int>n_out, <floating>0, base + sp.blk[p].part,
                <int>n_out)


cdef void _split_output(const Net* net, const Split* sp, Py_ssize_t q,
                        const Py_ssize_t* rows, Py_ssize_t nb, const floating* Y,
                        const floating* sw, floating* out, floating* d) noexcept nogil:
    """Row chunk ``q`` of ``n_blocks``: output pre-activations (the bias,
    then the blocks' shares in block order), outputs, weighted loss (to
    ``closs``) and output deltas."""
    cdef Py_ssize_t n_out = net.units[2], P = sp.n_blocks, r, p
    cdef Py_ssize_t r0 = nb * q // P, r1 = nb * (q + 1) // P
    cdef const floating* base = <const floating*>sp.base
    cdef const floating* b1 = base + sp.blk[0].w + sp.o_b1
    cdef double wsum
    if r1 <= r0:
        sp.closs[LINE_DOUBLES * q] = 0.0
        return
    for r in range(r0, r1):
        memcpy(out + r * n_out, b1, n_out * sizeof(floating))
    # The chunk's rows are contiguous in every share: one call a block,
    # each element still summed in block order.
    for p in range(P):
        _axpy((r1 - r0) * n_out, <floating>1, base + sp.blk[p].part + r0 * n_out,
              out + r0 * n_out)
    _output_forward(net.out_act, out + r0 * n_out, r1 - r0, n_out)
    sp.closs[LINE_DOUBLES * q] = _rows_loss_delta(
        net, rows + r0, r1 - r0, Y, sw, out + r0 * n_out, d + r0 * n_out, &wsum)


cdef void _split_backward(const Net* net, const Split* sp, Py_ssize_t p, Optim* o,
                          const floating* xin, Py_ssize_t nb, const floating* d2,
                          double sw_sum, double lr_t) noexcept nogil:
    """Block ``p``: its hidden deltas, the gradient of every parameter it
    owns (``W0[:, h0:h1]``, ``b0[h0:h1]``, ``W1[h0:h1, :]``, and block 0 the
    output bias) and their optimiser step, in its packs; ``pen`` gets
    their weight penalty before the step."""
    cdef Py_ssize_t nf = net.units[0], n_out = net.units[2], r
    cdef Py_ssize_t bw = sp.bounds[p + 1] - sp.bounds[p], ld = sp.ld
    cdef floating* base = <floating*>sp.base
    cdef floating* w = base + sp.blk[p].w
    cdef floating* m1 = w + sp.pack
    cdef floating* m2 = w + 2 * sp.pack
    cdef floating* g = w + 3 * sp.pack
    cdef const floating* a = base + sp.blk[p].act
    cdef floating* dl = base + sp.blk[p].dlt
    cdef floating* wt = base + sp.blk[p].wt
    cdef double pen = 0.0
    mm_rowmajor(NoTrans, NoTrans, <int>nb, <int>bw, <int>n_out, <floating>1, d2,
                <int>n_out, wt, <int>ld, <floating>0, dl, <int>ld)
    for r in range(nb):
        _hidden_backward(net, 1, a + r * ld, dl + r * ld, bw)
    mm_rowmajor(Trans, NoTrans, <int>nf, <int>bw, <int>nb, <floating>1, xin, <int>nf,
                dl, <int>ld, <floating>0, g, <int>ld)
    _bias_grad(bw, dl, ld, nb, g + sp.o_b0, False)
    mm_rowmajor(Trans, NoTrans, <int>bw, <int>n_out, <int>nb, <floating>1, a, <int>ld,
                d2, <int>n_out, <floating>0, g + sp.o_w1, <int>n_out)
    if p == 0:
        _bias_grad(n_out, d2, n_out, nb, g + sp.o_b1, False)
    # The packs' padding holds zeros in all four arrays, which every
    # optimiser leaves at zero; stepping it keeps the calls few.
    pen += _step_range(net, o, 0, nf * ld, 0, True, w, m1, m2, g, 1.0, sw_sum, lr_t,
                       False)
    pen += _step_range(net, o, sp.o_b0, sp.o_b0 + bw, 0, False, w, m1, m2, g, 1.0,
                       sw_sum, lr_t, False)
    pen += _step_range(net, o, sp.o_w1, sp.o_w1 + bw * n_out, 1, True, w, m1, m2, g,
                       1.0, sw_sum, lr_t, False)
    if p == 0:
        pen += _step_range(net, o, sp.o_b1, sp.o_b1 + n_out, 1, False, w, m1, m2, g,
                           1.0, sw_sum, lr_t, False)
    _split_transpose(sp, p, n_out, base)
    sp.pen[LINE_DOUBLES * p] = pen


cdef void _split_batch(const Net* net, const Split* sp, Optim* o, const Source* src,
                       const Py_ssize_t* rows, Py_ssize_t nb, const floating* Y,
                       const floating* sw, floating* acts, floating* deltas,
                       floating* xbuf, Py_ssize_t cap, int n_threads,
                       double* loss_sum, double* sw_sum, double* pen) noexcept nogil:
    """One mini-batch of a network with one hidden layer whose units are cut
    into ``sp.n_blocks`` blocks (dense input, no dropout, no clipping): loss,
    gradient and optimiser step, on the blocks' packs (see _split_move).

    Each block owns its columns of the first layer and its rows of the
    second: its activations, deltas, gradient and step need no other
    block's, so a thread keeps the same parameters in its cache batch after
    batch, and the threads meet only twice a batch: when every block's
    share of the output pre-activations is made, and when the output deltas
    are (and, for scattered rows, once they are gathered).  Nothing is
    reduced over rows in pieces, so the sums do not depend on the thread
    count.
    ``loss_sum`` and ``sw_sum`` get the weighted loss and the batch's
    weight; with no weight nothing is computed or stepped, and ``pen`` gets
    the weight penalty before the step.
    """
    cdef Py_ssize_t P = sp.n_blocks, r, q, p, nf = src.n_features
    cdef const floating* X = <const floating*>src.x
    cdef const floating* xin
    cdef floating* out = acts + cap * net.stride[1]
    cdef floating* d2 = deltas + cap * net.stride[1]
    cdef bint consecutive = True
    cdef double lr_t = 0.0, ws = 0.0
    cdef int t, nt
    if sw != NULL:
        for r in range(nb):
            ws += <double>sw[rows[r]]
    else:
        ws = <double>nb
    sw_sum[0] = ws
    loss_sum[0] = 0.0
    pen[0] = 0.0
    if not ws > 0:
        return
    consecutive = _consecutive(rows, nb)
    xin = X + rows[0] * nf if consecutive else xbuf
    if o.kind == OPT_ADAM:
        lr_t = _adam_rate(o)
    if n_threads > P:
        n_threads = <int>P
    if n_threads <= 1:
        if not consecutive:
            _gather_rows(src, rows, 0, nb, xbuf)
        for p in range(P):
            _split_forward(net, sp, p, xin, nb)
        for q in range(P):
            _split_output(net, sp, q, rows, nb, Y, sw, out, d2)
        for p in range(P):
            _split_backward(net, sp, p, o, xin, nb, d2, ws, lr_t)
    else:
        with parallel(num_threads=n_threads):
            t = omp_get_thread_num()
            nt = omp_get_num_threads()
            if not consecutive:
                # Each thread gathers a share of the rows.
                _gather_rows(src, rows, nb * t // nt, nb * (t + 1) // nt, xbuf)
                cbp_barrier()
            p = t
            while p < P:
                _split_forward(net, sp, p, xin, nb)
                p = p + nt
            cbp_barrier()
            q = t
            while q < P:
                _split_output(net, sp, q, rows, nb, Y, sw, out, d2)
                q = q + nt
            cbp_barrier()
            p = t
            while p < P:
                _split_backward(net, sp, p, o, xin, nb, d2, ws, lr_t)
                p = p + nt
    for q in range(P):
        loss_sum[0] += sp.closs[LINE_DOUBLES * q]
    for p in range(P):
        pen[0] += sp.pen[LINE_DOUBLES * p]


# ---------------------------------------------------------------------------
# Online mode: one sample at a time, updated in place, no gradient buffer.
# ---------------------------------------------------------------------------

cdef struct Lazy:
    # Deferred data-free SGD steps of the rows of W0 (see module docstring).
    bint on
    Py_ssize_t* last        # per input unit: time its row is valid at
    const double* powers    # M^k as (a, b, c, d), k = 0..n
    const double* prefix    # sum_{k<m} (a_k^2, a_k b_k, b_k^2), m = 0..n
    double l2               # sum over samples of ||W0||^2 for lazy rows


cdef double _outer_step(const Optim* o, Py_ssize_t n, Py_ssize_t m, const floating* a,
                        const floating* d, floating* W, floating* s1, floating* s2,
                        double sw, double rate, double c) noexcept nogil:
    """One sample's step of a whole layer, its gradient scaled by ``c``;
    returns the penalty of W before it (meaningful for ``c == 1``)."""
    cdef double alpha = o.alpha * c, l1 = o.l1 * c
    if o.kind == OPT_SGD:
        if floating is float:
            return cbp_sgd_outer_f(n, m, a, d, W, s1, <float>alpha, <float>l1,
                                   <float>sw, <float>rate, <float>o.momentum,
                                   o.nesterov)
        else:
            return cbp_sgd_outer_d(n, m, a, d, W, s1, alpha, l1, sw, rate, o.momentum,
                                   o.nesterov)
    if floating is float:
        return cbp_adam_outer_f(n, m, a, d, W, s1, s2, <float>alpha, <float>l1,
                                <float>sw, <float>rate, <float>o.beta1,
                                <float>o.beta2, <float>o.eps)
    else:
        return cbp_adam_outer_d(n, m, a, d, W, s1, s2, alpha, l1, sw, rate, o.beta1,
                                o.beta2, o.eps)


cdef inline void _prefetch_row(const Source* src, Py_ssize_t row, Py_ssize_t after,
                               const floating* y, Py_ssize_t n_out) noexcept nogil:
    """Start loading the input row and target of the next sample (and the CSR
    row pointers of the one after), so they arrive while this one trains."""
    cdef Py_ssize_t fsz = sizeof(floating), isz = sizeof(Py_ssize_t)
    cdef Py_ssize_t csz = sizeof(cbp_idx)
    cdef const floating* X = <const floating*>src.x
    if src.csr:
        cbp_prefetch(X + src.ptr[row], (src.ptr[row + 1] - src.ptr[row]) * fsz)
        cbp_prefetch(src.ind + src.ptr[row], (src.ptr[row + 1] - src.ptr[row]) * csz)
        if after >= 0:
            cbp_prefetch(src.ptr + after, 2 * isz)
    else:
        cbp_prefetch(X + row * src.n_features, src.n_features * fsz)
    cbp_prefetch(y, n_out * fsz)


cdef int _online_sample(const Net* net, Optim* o, floating* params, floating* s1,
                        floating* s2, const Source* src, Py_ssize_t row,
                        Py_ssize_t t, const floating* y, floating w, floating* acts,
                        floating* deltas, floating* gates, cbp_idx* nzi,
                        floating* nzv, floating* xdense, Lazy* lz, double* data_loss,
                        double* pen_loss) noexcept nogil:
    """Forward, deltas and in-place update for one sample at time ``t``.

    Without clipping, layers are processed from the output down and each
    layer's weights are updated right after the delta of the layer below has
    been computed from them, which equals computing every gradient first and
    updating after.  Clipping needs the whole gradient's norm first, so
    every delta is computed before any update.
    """
    cdef Py_ssize_t L = net.n_layers, li, j, p, nnz = 0, u_in, m
    cdef Py_ssize_t n_out = net.units[L], u0 = net.units[0]
    cdef const floating* X = <const floating*>src.x
    cdef const floating* xr = NULL
    cdef floating* z
    cdef const floating* a_in
    cdef floating* d
    cdef floating* g
    cdef double pen = 0.0, lr_t = 0.0, sw = <double>w, loss, c = 1.0, nsq = 0.0
    cdef double ssq0 = 0.0
    cdef Py_ssize_t zero = 0
    cdef bint fused = o.clip <= 0

    # Non-zero inputs of the sample.
    if src.csr:
        for p in range(src.ptr[row], src.ptr[row + 1]):
            nzi[nnz] = src.ind[p]
            nzv[nnz] = X[p]
            nnz += 1
    else:
        xr = X + row * u0
        if floating is float:
            nnz = cbp_compact_f(u0, xr, nzi, nzv)
        else:
            nnz = cbp_compact_d(u0, xr, nzi, nzv)

    # Forward pass; inputs and hidden units that are exactly zero are skipped.
    for li in range(L):
        u_in = net.units[li]
        m = net.zw[li + 1]
        z = acts + _layer_base(net, 1, li + 1) + net.zoff[li + 1]
        if li == 0 and lz.on:
            # Rows are brought up to date as the forward pass reads them.
            if floating is float:
                lz.l2 += cbp_lazy_forward_f(nnz, nzi, nzv, lz.last, t, lz.powers,
                                            lz.prefix, params, s1, m,
                                            params + net.icpt_off[0], z, &ssq0)
            else:
                lz.l2 += cbp_lazy_forward_d(nnz, nzi, nzv, lz.last, t, lz.powers,
                                            lz.prefix, params, s1, m,
                                            params + net.icpt_off[0], z, &ssq0)
            lz.l2 += ssq0
        elif li == 0:
            p = nnz
            if floating is float:
                cbp_sprows_f(1, &zero, &p, nzi, nzv, params, m, m, net.n_params,
                             params + net.icpt_off[0], z, m)
            else:
                cbp_sprows_d(1, &zero, &p, nzi, nzv, params, m, m, net.n_params,
                             params + net.icpt_off[0], z, m)
        else:
            a_in = acts + _layer_base(net, 1, li)
            if floating is float:
                cbp_gemv_skip_f(u_in, a_in, params + net.coef_off[li], m,
                                params + net.icpt_off[li], z)
            else:
                cbp_gemv_skip_d(u_in, a_in, params + net.coef_off[li], m,
                                params + net.icpt_off[li], z)
        if li < L - 1:
            _hidden_layer_forward(net, li + 1, acts + _layer_base(net, 1, li + 1),
                                  gates + _layer_base(net, 1, li + 1), 1, t)
        else:
            _output_forward(net.out_act, z, 1, m)

    z = acts + _layer_base(net, 1, L)
    loss = _row_loss(net, z, y, n_out)
    d = deltas + _layer_base(net, 1, L)
    _output_delta(net, z, y, d, n_out)
    for j in range(n_out):
        d[j] *= w

    if o.kind == OPT_ADAM:
        lr_t = _adam_rate(o)
    if xr == NULL and not lz.on:
        # CSR row: spread it into a dense vector for the full update.
        for p in range(nnz):
            xdense[nzi[p]] = nzv[p]
        xr = xdense
    for li in range(L - 1, -1, -1):
        u_in = net.units[li]
        m = net.zw[li + 1]
        d = deltas + _layer_base(net, 1, li + 1) + net.zoff[li + 1]
        a_in = acts + _layer_base(net, 1, li) if li > 0 else xr
        if li > 0:
            g = deltas + _layer_base(net, 1, li)
            if floating is float:
                cbp_gemv_t_f(u_in, m, params + net.coef_off[li], d, g)
            else:
                cbp_gemv_t_d(u_in, m, params + net.coef_off[li], d, g)
            _hidden_layer_backward(net, li, a_in, gates + _layer_base(net, 1, li), g, 1)
        if not fused:
            if floating is float:
                nsq += cbp_outer_gradsq_f(u_in, m, a_in, d, params + net.coef_off[li],
                                          <float>o.alpha, <float>o.l1)
            else:
                nsq += cbp_outer_gradsq_d(u_in, m, a_in, d, params + net.coef_off[li],
                                          o.alpha, o.l1)
            nsq += _sumsq(m, d)
            pen += _penalty(u_in * m, params + net.coef_off[li], o.alpha, o.l1)
        elif li == 0 and lz.on:
            # Only the rows with a non-zero input get a data step now.
            if floating is float:
                cbp_lazy_step_f(nnz, nzi, nzv, lz.last, t, params, s1, m, d,
                                <float>o.alpha, <float>(o.lr * net.lr_mult[0]),
                                <float>o.momentum, o.nesterov)
            else:
                cbp_lazy_step_d(nnz, nzi, nzv, lz.last, t, params, s1, m, d, o.alpha,
                                o.lr * net.lr_mult[0], o.momentum, o.nesterov)
            _step(o, m, params + net.icpt_off[0], s1 + net.icpt_off[0],
                  s2 + net.icpt_off[0], <floating>1, d, 0.0, 0.0, sw,
                  _rate(o, lr_t, net.lr_mult[0]))
        else:
            pen += _outer_step(o, u_in, m, a_in, d, params + net.coef_off[li],
                               s1 + net.coef_off[li], s2 + net.coef_off[li], sw,
                               _rate(o, lr_t, net.lr_mult[li]), 1.0)
            _step(o, m, params + net.icpt_off[li], s1 + net.icpt_off[li],
                  s2 + net.icpt_off[li], <floating>1, d, 0.0, 0.0, sw,
                  _rate(o, lr_t, net.lr_mult[li]))

    if not fused:
        # The gradient of layer l is (a d^T + alpha W + l1 sign W) / sw.
        nsq = sqrt(nsq) / sw
        if nsq > o.clip:
            c = o.clip / nsq
        for li in range(L - 1, -1, -1):
            u_in = net.units[li]
            m = net.zw[li + 1]
            d = deltas + _layer_base(net, 1, li + 1) + net.zoff[li + 1]
            a_in = acts + _layer_base(net, 1, li) if li > 0 else xr
            for j in range(m):
                d[j] *= <floating>c
            _outer_step(o, u_in, m, a_in, d, params + net.coef_off[li],
                        s1 + net.coef_off[li], s2 + net.coef_off[li], sw,
                        _rate(o, lr_t, net.lr_mult[li]), c)
            _step(o, m, params + net.icpt_off[li], s1 + net.icpt_off[li],
                  s2 + net.icpt_off[li], <floating>1, d, 0.0, 0.0, sw,
                  _rate(o, lr_t, net.lr_mult[li]))
    if xr == xdense:
        for p in range(nnz):
            xdense[nzi[p]] = 0

    data_loss[0] = loss
    pen_loss[0] = pen / sw
    if not (isfinite(loss) and isfinite(pen_loss[0])):
        return STATUS_NONFINITE
    return STATUS_OK


# ---------------------------------------------------------------------------
# Python entry points.  They validate nothing: the estimators hand them
# checked, contiguous arrays of one dtype.
# ---------------------------------------------------------------------------

cdef void _make_net(Net* net, dict spec, Py_ssize_t n_params, bint training,
                    long long step0) except *:
    """Point ``net`` at the arrays of ``spec`` (see ``_mlp._NetSpec``), which
    the caller keeps alive for the duration of the kernel call."""
    cdef const Py_ssize_t[::1] units = spec["units"]
    cdef const Py_ssize_t[::1] zw = spec["zw"]
    cdef const Py_ssize_t[::1] stride = spec["stride"]
    cdef const Py_ssize_t[::1] zoff = spec["zoff"]
    cdef const Py_ssize_t[::1] act = spec["act"]
    cdef const double[::1] act_param = spec["act_param"]
    cdef const double[::1] lr_mult = spec["lr_mult"]
    cdef const Py_ssize_t[::1] coef_off = spec["coef_off"]
    cdef const Py_ssize_t[::1] icpt_off = spec["icpt_off"]
    cdef Py_ssize_t k
    net.n_layers = units.shape[0] - 1
    net.units = &units[0]
    net.zw = &zw[0]
    net.stride = &stride[0]
    net.zoff = &zoff[0]
    net.act = &act[0]
    net.act_param = &act_param[0]
    net.lr_mult = &lr_mult[0]
    net.coef_off = &coef_off[0]
    net.icpt_off = &icpt_off[0]
    net.n_coef = icpt_off[0]
    net.n_params = n_params
    net.total_units = 0
    for k in range(1, units.shape[0]):
        net.total_units += stride[k]
    net.out_act = spec["out_act"]
    net.loss = spec["loss"]
    net.loss_param = spec["loss_param"]
    net.drop = spec["dropout"] if training else 0.0
    net.seed = spec["seed"]
    net.step0 = step0
    net.w0 = NULL
    net.ldw0 = 0
    net.wt = NULL
    net.pgrad = NULL
    net.pg_stride = 0
    net.cols = NULL
    net.cols_ld = 0
    net.row_masks = NULL
    net.ycls = NULL


cdef void _make_source(Source* src, object X, Py_ssize_t n_features,
                       object indices, object indptr,
                       const floating[::1] dtype_witness) except *:
    cdef const floating[::1] data
    cdef const floating[:, ::1] dense
    cdef const int32_t[::1] ind
    cdef const Py_ssize_t[::1] ptr
    src.n_features = n_features
    src.csr = indices is not None
    if src.csr:
        data = X
        ind = indices
        ptr = indptr
        src.x = &data[0] if data.shape[0] > 0 else NULL
        src.ind = &ind[0] if ind.shape[0] > 0 else NULL
        src.ptr = &ptr[0]
    else:
        dense = X
        src.x = &dense[0, 0]
        src.ind = NULL
        src.ptr = NULL


cdef void _make_optim(Optim* o, dict opt) except *:
    o.kind = OPT_ADAM if opt["kind"] == "adam" else OPT_SGD
    o.lr = opt["lr"]
    o.momentum = opt.get("momentum", 0.0)
    o.nesterov = opt.get("nesterov", False)
    o.beta1 = opt.get("beta1", 0.9)
    o.beta2 = opt.get("beta2", 0.999)
    o.eps = opt.get("eps", 1e-8)
    o.alpha = opt["alpha"]
    o.l1 = opt.get("l1", 0.0)
    o.clip = opt.get("clip", 0.0)
    o.t = opt.get("t", 0)


cdef void _make_spbatch(SpBatch* sb, Py_ssize_t[::1] spi, floating[::1] spv,
                        Py_ssize_t cap, Py_ssize_t nnz_cap, Py_ssize_t n_features,
                        Py_ssize_t n_keep, const Source* src,
                        Py_ssize_t n_rows) except *:
    """Carve the CSR-block buffers out of one int and one float array:
    spi = [rs: cap | re: cap | kept: n_keep | fptr: slots * (nf + 1)],
    spv = [fent: slots' * nnz_cap records of two values], where slots =
    max(n_keep, 2) and slots' = 1 if n_keep else 2.  With ``n_keep`` > 0,
    ``nnz_cap`` holds every non-zero of X and ``kept`` starts zeroed."""
    n_int, n_float = sparse_buffer_sizes(cap, nnz_cap, n_features, n_keep)
    if src.csr and cap > INT32_MAX:
        raise ValueError(f"blocks of {cap} rows are too many for the sparse path's "
                         f"32-bit row numbers: use a batch_size below {INT32_MAX}")
    if n_keep < 0 or (n_keep > 0 and not (
            src.csr and nnz_cap >= src.ptr[n_rows] - src.ptr[0])):
        raise ValueError("n_keep needs CSR input and room for all its non-zeros")
    if src.csr and (spi.shape[0] < n_int or spv.shape[0] < n_float):
        raise ValueError("the sparse work buffers are too small")
    # Pointer arithmetic from the base, not indexing: an empty region starts
    # one past the end of the buffer.
    cdef Py_ssize_t* ibase = &spi[0]
    sb.rs = ibase
    sb.re = ibase + cap
    sb.n_keep = n_keep
    sb.kept = ibase + 2 * cap
    sb.fptr0 = sb.kept + n_keep
    sb.fent0 = &spv[0]
    sb.nnz_cap = nnz_cap
    sb.ahead = NULL
    sb.ahead_nb = 0
    sb.ahead_slot = 0
    sb.fptr = sb.fptr0
    sb.fent = sb.fent0


# Values a task checks in all_finite: enough to amortise the task, few
# enough that a large X splits evenly across the threads.
cdef Py_ssize_t FINITE_BLOCK = 1 << 16


def all_finite(const floating[::1] x, int n_threads):
    """True when no value of ``x`` is NaN or infinite; blocks of values are
    checked in parallel (numpy's check of a 25 MB float32 array runs on one
    core, at about 2 ms)."""
    cdef Py_ssize_t n = x.shape[0], n_blocks = (n + FINITE_BLOCK - 1) // FINITE_BLOCK
    cdef Py_ssize_t k, i0, i1
    cdef int bad = 0
    if n == 0:
        return True
    n_threads = max(1, min(n_threads, <int>n_blocks))
    for k in prange(n_blocks, nogil=True, num_threads=n_threads, schedule="static"):
        i0 = k * FINITE_BLOCK
        i1 = min(i0 + FINITE_BLOCK, n)
        if floating is float:
            bad += 1 - cbp_all_finite_f(i1 - i0, &x[i0])
        else:
            bad += 1 - cbp_all_finite_d(i1 - i0, &x[i0])
    return bad == 0


def row_nonzeros(const floating[:, ::1] X, int n_threads):
    """Number of non-zeros of each row of ``X``, counted in parallel (numpy's
    ``count_nonzero(axis=1)`` runs on one core through a boolean copy)."""
    cdef Py_ssize_t n = X.shape[0], nf = X.shape[1], r, i, c
    counts_arr = np.zeros(n, dtype=np.intp)
    cdef Py_ssize_t[::1] counts = counts_arr
    if n > 0 and nf > 0:
        for r in prange(n, nogil=True, num_threads=n_threads, schedule="static"):
            c = 0
            for i in range(nf):
                c = c + (X[r, i] != 0)
            counts[r] = c
    return counts_arr


def dense_to_csr(const floating[:, ::1] X, const Py_ssize_t[::1] row_nnz,
                 int n_threads, object data_out=None, object ind_out=None):
    """CSR arrays ``(data, indices, indptr)`` of the non-zeros of ``X``, whose
    rows hold ``row_nnz`` non-zeros each; rows are filled in parallel.
    ``data_out`` / ``ind_out`` (optional): 1-D arrays of X's dtype and of
    int32, at least ``max(1, row_nnz.sum())`` long, written instead of new
    ones (``data`` and ``indices`` are then their first elements).

    One pass over X without the temporaries of scipy's conversion, which
    would cost more than a few epochs of training on the result.  The
    compaction (``cbp_compact_*``) may write up to 15 slots past a row's
    count.  Each thread fills one run of consecutive rows in order, so such
    writes land on rows it fills later -- except near the end of its run,
    where rows go through a scratch row and are copied into place.
    """
    cdef Py_ssize_t n = X.shape[0], nf = X.shape[1], r, cnt, t, r0, r1, end
    indptr_arr = np.zeros(n + 1, dtype=np.intp)
    cdef Py_ssize_t[::1] indptr = indptr_arr
    np.cumsum(row_nnz, out=indptr_arr[1:])
    cdef Py_ssize_t total = indptr[n]
    if nf > INT32_MAX:
        raise ValueError("more than 2**31 - 1 features: column indices are 32-bit")
    data_arr = np.empty(max(total, 1), dtype=np.asarray(X).dtype) \
        if data_out is None else data_out
    ind_arr = np.empty(max(total, 1), dtype=np.int32) if ind_out is None else ind_out
    if data_arr.shape[0] < max(total, 1) or ind_arr.shape[0] < max(total, 1):
        raise ValueError("dense_to_csr: the output arrays hold fewer than the "
                         f"{total} non-zeros")
    cdef floating[::1] data = data_arr
    cdef int32_t[::1] ind = ind_arr
    n_threads = max(1, n_threads)
    scratch_i = np.empty((n_threads, nf + 1), dtype=np.int32)
    scratch_v = np.empty((n_threads, nf + 1), dtype=np.asarray(X).dtype)
    cdef int32_t[:, ::1] si = scratch_i
    cdef floating[:, ::1] sv = scratch_v
    if n > 0 and nf > 0:
        for t in prange(n_threads, nogil=True, num_threads=n_threads,
                        schedule="static"):
            r0 = t * n // n_threads
            r1 = (t + 1) * n // n_threads
            end = indptr[r1]
            for r in range(r0, r1):
                cnt = indptr[r + 1] - indptr[r]
                if cnt == 0:
                    continue
                if indptr[r + 1] + 16 <= end:
                    if floating is float:
                        cbp_compact_f(nf, &X[r, 0], &ind[indptr[r]], &data[indptr[r]])
                    else:
                        cbp_compact_d(nf, &X[r, 0], &ind[indptr[r]], &data[indptr[r]])
                else:
                    if floating is float:
                        cbp_compact_f(nf, &X[r, 0], &si[t, 0], &sv[t, 0])
                    else:
                        cbp_compact_d(nf, &X[r, 0], &si[t, 0], &sv[t, 0])
                    memcpy(&ind[indptr[r]], &si[t, 0], cnt * sizeof(int32_t))
                    memcpy(&data[indptr[r]], &sv[t, 0], cnt * sizeof(floating))
    return data_arr[:total], ind_arr[:total], indptr_arr


# The CPU check caches its answer; ask once here, before any thread can.
HAS_AVX512 = bool(cbp_has_avx512())
# The same for the write prefetch of multithreaded optimiser steps (see
# cbp_claim).
HAS_PREFETCHW = bool(cbp_has_prefetchw())


def _compact(const floating[::1] x, bint plain):
    """``(indices, values)`` of the non-zeros of ``x`` by the kernels'
    compaction (``plain``: the portable loop instead of AVX-512)."""
    cdef Py_ssize_t n = x.shape[0], c
    idx_arr = np.empty(max(n, 1), dtype=np.int32)
    val_arr = np.empty(max(n, 1), dtype=np.asarray(x).dtype)
    cdef int32_t[::1] idx = idx_arr
    cdef floating[::1] val = val_arr
    if n == 0:
        return idx_arr[:0], val_arr[:0]
    if floating is float:
        c = (cbp_compact_plain_f if plain else cbp_compact_f)(n, &x[0], &idx[0], &val[0])
    else:
        c = (cbp_compact_plain_d if plain else cbp_compact_d)(n, &x[0], &idx[0], &val[0])
    return idx_arr[:c], val_arr[:c]


def sparse_buffer_sizes(Py_ssize_t cap, Py_ssize_t nnz_cap, Py_ssize_t n_features,
                        Py_ssize_t n_keep=0):
    """Lengths of the int and float CSR-block buffers (see _make_spbatch)."""
    cdef Py_ssize_t slots = 1 if n_keep > 0 else 2
    return (2 * cap + n_keep + max(n_keep, 2) * (n_features + 1),
            2 * slots * nnz_cap)


def lazy_tables(Py_ssize_t n, double lr, double momentum, bint nesterov,
                double alpha):
    """Powers of the data-free SGD step map and prefix sums of their norms.

    One data-free step (zero input, so the gradient is ``alpha * w``) maps
    ``(w, v)`` linearly; ``powers[k]`` is its k-th power as ``(a, b, c, d)``
    with ``w_k = a w + b v`` and ``v_k = c w + d v``, and ``prefix[m]`` sums
    ``(a_k^2, a_k b_k, b_k^2)`` over ``k < m``.
    """
    cdef double[:, ::1] pw = np.empty((n + 1, 4))
    cdef double[:, ::1] pf = np.empty((n + 2, 3))
    cdef double c = lr * alpha, a1, b1, c1, d1
    cdef Py_ssize_t k
    if nesterov:
        a1 = 1.0 - c - momentum * c
        b1 = momentum * momentum
    else:
        a1 = 1.0 - c
        b1 = momentum
    c1 = -c
    d1 = momentum
    pw[0, 0] = 1.0
    pw[0, 1] = 0.0
    pw[0, 2] = 0.0
    pw[0, 3] = 1.0
    for k in range(1, n + 1):
        pw[k, 0] = a1 * pw[k - 1, 0] + b1 * pw[k - 1, 2]
        pw[k, 1] = a1 * pw[k - 1, 1] + b1 * pw[k - 1, 3]
        pw[k, 2] = c1 * pw[k - 1, 0] + d1 * pw[k - 1, 2]
        pw[k, 3] = c1 * pw[k - 1, 1] + d1 * pw[k - 1, 3]
    pf[0, 0] = 0.0
    pf[0, 1] = 0.0
    pf[0, 2] = 0.0
    for k in range(1, n + 2):
        pf[k, 0] = pf[k - 1, 0] + pw[k - 1, 0] * pw[k - 1, 0]
        pf[k, 1] = pf[k - 1, 1] + pw[k - 1, 0] * pw[k - 1, 1]
        pf[k, 2] = pf[k - 1, 2] + pw[k - 1, 1] * pw[k - 1, 1]
    return np.asarray(pw), np.asarray(pf)


# Thread tuner of mini-batch training (see _tuned_threads).  State, kept by
# the caller across epochs: [mode (1: fall back to one thread), seconds per
# row on one thread (moving average), the same on all threads, the fastest
# all-thread batch seen, batches timed, batch of the last probe].
TUNER_STATE_SIZE = 6
cdef enum:
    TUNE_FIRST_PROBE = 4       # batch timed on one thread first
    TUNE_SLOW_FACTOR = 14      # all-thread rows 1.4x slower than their best
    TUNE_CLOSE_FACTOR = 125    # or all threads under 1.25x faster than one
    TUNE_PROBE_ALL = 16        # in fallback, try all threads every 16 batches
    TUNE_PROBE_ONE = 64        # and never probe one thread more often


cdef inline int _tuned_threads(double* tp, int threads) noexcept nogil:
    """Threads for the next batch.

    A batch's weights do not depend on its thread count, so this may change
    between batches: on a shared machine the host at times takes the
    second core away, and small batches then run slower on two threads
    than on one.  Batch ``TUNE_FIRST_PROBE`` runs on one thread; later ones
    do again (at most every ``TUNE_PROBE_ONE`` batches) only when the
    all-thread batches slowed to 1.4x their best or gained under 1.25x.
    While one thread is faster it is kept, and all threads are tried again
    every ``TUNE_PROBE_ALL`` batches."""
    cdef long long k = <long long>tp[4], last = <long long>tp[5]
    if tp[0] != 0:
        return threads if k - last >= TUNE_PROBE_ALL else 1
    if last == 0:
        return 1 if k == TUNE_FIRST_PROBE else threads
    if k - last >= TUNE_PROBE_ONE and (tp[2] * 10 > tp[3] * TUNE_SLOW_FACTOR
                                       or tp[1] * 100 < tp[2] * TUNE_CLOSE_FACTOR):
        return 1
    return threads


cdef inline void _tuner_record(double* tp, int used, double per_row) noexcept nogil:
    """Account one timed batch (``per_row`` seconds a row on ``used``
    threads) and pick the mode for the next ones."""
    cdef long long k = <long long>tp[4]
    tp[4] += 1
    if k < 2:
        # The first batches also warm the caches: not a fair measure.
        return
    if used == 1:
        tp[1] = per_row if tp[1] == 0 else 0.7 * tp[1] + 0.3 * per_row
        if tp[0] == 0:
            tp[5] = k
            if tp[1] < tp[2]:
                tp[0] = 1
        return
    if tp[3] == 0 or per_row < tp[3]:
        tp[3] = per_row
    if tp[0] != 0:
        # A probe while falling back: back to all threads if they now win.
        tp[5] = k
        if per_row < tp[1]:
            tp[0] = 0
            tp[2] = per_row
        return
    tp[2] = per_row if tp[2] == 0 else 0.7 * tp[2] + 0.3 * per_row


def _tuner_step(double[::1] state, int threads, bint record=False, int used=0,
                double per_row=0.0):
    """Python door to the thread tuner for tests: the threads it picks for
    the next batch, or (``record``) account a timed batch."""
    if state.shape[0] < TUNER_STATE_SIZE:
        raise ValueError("the tuner state needs TUNER_STATE_SIZE entries")
    if record:
        _tuner_record(&state[0], used, per_row)
        return None
    return _tuned_threads(&state[0], threads)


cdef extern from "numpy/random/bitgen.h" nogil:
    # numpy's C interface to a bit generator (NumPy's "extending" API).
    ctypedef struct bitgen_t:
        void* state
        uint64_t (*next_uint64)(void* st) nogil
        uint32_t (*next_uint32)(void* st) nogil


cdef inline uint64_t _legacy_interval(bitgen_t* bg, uint64_t top) noexcept nogil:
    """A uniform integer in ``[0, top]`` as NumPy's legacy RandomState draws
    it: the bits of ``top`` smeared into a mask, 32-bit draws while ``top``
    fits in them, masked draws above ``top`` rejected."""
    cdef uint64_t mask = top, value
    if top == 0:
        return 0
    mask |= mask >> 1
    mask |= mask >> 2
    mask |= mask >> 4
    mask |= mask >> 8
    mask |= mask >> 16
    mask |= mask >> 32
    if top <= 0xffffffffULL:
        value = bg.next_uint32(bg.state) & mask
        while value > top:
            value = bg.next_uint32(bg.state) & mask
    else:
        value = bg.next_uint64(bg.state) & mask
        while value > top:
            value = bg.next_uint64(bg.state) & mask
    return value


cdef void _legacy_shuffle(bitgen_t* bg, Py_ssize_t* a, Py_ssize_t n,
                          bint permute) noexcept nogil:
    """``RandomState.shuffle(a)`` of a 1-D array: the same swaps from the
    same draws (Fisher-Yates from the end), so ``a`` ends as scikit-learn's
    shuffle would leave it and the generator in the same state.
    ``permute=False`` only makes the draws."""
    cdef Py_ssize_t i, j, tmp
    for i in range(n - 1, 0, -1):
        j = <Py_ssize_t>_legacy_interval(bg, <uint64_t>i)
        if permute:
            tmp = a[i]
            a[i] = a[j]
            a[j] = tmp


def _py_legacy_shuffle(object capsule, Py_ssize_t[::1] a, bint permute=True):
    """Python door to :func:`_legacy_shuffle` for tests (``capsule``: a
    RandomState's ``_bit_generator.capsule``; hold its lock)."""
    cdef bitgen_t* bg = <bitgen_t*>PyCapsule_GetPointer(capsule, "BitGenerator")
    if a.shape[0] > 0:
        _legacy_shuffle(bg, &a[0], a.shape[0], permute)


# State of run_epoch's stopping rule (several epochs in one call): indices
# into its ``rule`` array, which _BaseMLP._fit_stochastic fills and reads
# (as RULE_FIELDS[name]).
cdef enum:
    RULE_TOL = 0            # tol
    RULE_PATIENCE = 1       # n_iter_no_change
    RULE_BEST_STOP = 2      # the lowest stopping loss so far
    RULE_BEST_LOSS = 3      # best_loss_
    RULE_COUNT = 4          # epochs without improvement (_no_improvement_count)
    RULE_SCALE = 5          # the stopping loss is (data / scale + penalty) / n
    RULE_SCHEDULE = 6       # one of SCHEDULES
    RULE_LR_INIT = 7        # learning_rate_init
    RULE_POWER_T = 8        # power_t
    RULE_T = 9              # samples seen (t_)
    RULE_STOPPED = 10       # 1 when the rule ended training
    RULE_SIZE = 11
    SCHEDULE_CONSTANT = 0   # and adam
    SCHEDULE_INVSCALING = 1
    SCHEDULE_ADAPTIVE = 2

RULE_FIELDS = {"tol": RULE_TOL, "patience": RULE_PATIENCE,
               "best_stop": RULE_BEST_STOP, "best_loss": RULE_BEST_LOSS,
               "count": RULE_COUNT, "scale": RULE_SCALE, "schedule": RULE_SCHEDULE,
               "lr_init": RULE_LR_INIT, "power_t": RULE_POWER_T, "t": RULE_T,
               "stopped": RULE_STOPPED, "size": RULE_SIZE}
SCHEDULES = {"constant": SCHEDULE_CONSTANT, "invscaling": SCHEDULE_INVSCALING,
             "adaptive": SCHEDULE_ADAPTIVE}


cdef bint _rule_epoch(double* rule, double data_sum, double pen_sum, Py_ssize_t n,
                      Optim* o, double* loss_out) noexcept nogil:
    """Account one finished epoch as _BaseMLP's per-epoch bookkeeping does
    (loss, no-improvement count, best losses, the learning-rate schedule);
    True when training stops."""
    cdef double loss = (data_sum + pen_sum) / n
    cdef double stop_loss = (data_sum / rule[RULE_SCALE] + pen_sum) / n
    loss_out[0] = loss
    rule[RULE_T] += n
    if stop_loss > rule[RULE_BEST_STOP] - rule[RULE_TOL]:
        rule[RULE_COUNT] += 1
    else:
        rule[RULE_COUNT] = 0
    if stop_loss < rule[RULE_BEST_STOP]:
        rule[RULE_BEST_STOP] = stop_loss
    if loss < rule[RULE_BEST_LOSS]:
        rule[RULE_BEST_LOSS] = loss
    if rule[RULE_SCHEDULE] == SCHEDULE_INVSCALING:
        o.lr = rule[RULE_LR_INIT] / pow(rule[RULE_T] + 1, rule[RULE_POWER_T])
    if rule[RULE_COUNT] > rule[RULE_PATIENCE]:
        if rule[RULE_SCHEDULE] == SCHEDULE_ADAPTIVE and o.lr > 1e-6:
            o.lr /= 5.0
            rule[RULE_COUNT] = 0
        else:
            rule[RULE_STOPPED] = 1
            return True
    return False


def run_epoch(object X, object indices, object indptr, Py_ssize_t n_features,
              const floating[:, ::1] Y, const floating[::1] sw,
              bint has_sw, Py_ssize_t[::1] order, dict spec,
              const Py_ssize_t[::1] gblocks, const Py_ssize_t[::1] ublocks,
              floating[::1] params, floating[::1] state1, floating[::1] state2,
              floating[::1] grad, floating[::1] acts, floating[::1] deltas,
              floating[::1] gates, floating[::1] xbuf, Py_ssize_t[::1] iwork,
              double[::1] dwork, Py_ssize_t[::1] spi, floating[::1] spv,
              Py_ssize_t nnz_cap, Py_ssize_t batch_size, int n_threads, dict opt,
              object lazy=None, long long step0=0, Py_ssize_t n_keep=0,
              double[::1] tuner=None, floating[::1] w0=None, floating[::1] wt=None,
              floating[::1] pgrad=None, Py_ssize_t n_epochs=1, object bitgen=None,
              object bitgen_lock=None, bint permute=True, double[::1] rule=None,
              double[::1] losses=None, floating[::1] snapshot=None,
              const Py_ssize_t[::1] hsplit=None, floating[::1] hscratch=None,
              int32_t[::1] cols=None, const uint64_t[:, ::1] rowmask=None,
              const int32_t[::1] ycls=None):
    """Run one epoch of mini-batch (or online) training over ``order``.

    Returns ``(status, data_loss_sum, penalty_sum, n_done, epochs_done)``:
    the batch losses weighted by batch size (scikit-learn's
    ``accumulated_loss``), split into the data term and the weight penalty,
    the rows run, and 1 when the epoch completed (see below for several
    epochs).  Adam's step counter ``opt["t"]`` is advanced in place.
    ``lazy`` is ``(powers, prefix)`` from :func:`lazy_tables` to defer the
    data-free steps of online SGD.
    ``step0`` numbers the first sample of the epoch for the dropout masks.
    ``n_keep`` > 0 (full batch over CSR X, ``order`` sorted): the by-feature
    copies of the passes' blocks are kept in ``spi`` / ``spv`` between calls.
    ``tuner`` (``TUNER_STATE_SIZE`` zeros before a fit's first epoch, then
    kept): lets multithreaded mini-batches fall back to one thread while
    that is faster (see ``_tuned_threads``).  ``w0`` (mini-batches only):
    room for the aligned first-layer copy of :func:`w0_copy_size`; ``wt``:
    for the transposed copies of :func:`wt_copy_size`; ``pgrad``
    (mini-batches of dense input): for the chunk-local gradients of
    :func:`chunk_grad_size`, used when given.  ``hsplit`` (bounds from
    :func:`split_bounds`) and ``hscratch`` (:func:`split_scratch_size`
    elements): run the batches of a one-hidden-layer network unit-split
    (see :func:`_split_batch`) when nothing rules it out (sparse input,
    dropout, maxout, clipping, a wide output layer, batches of several
    passes); that choice never depends on the thread count.  ``cols``
    (:func:`cols_size` elements, with ``pgrad``) and ``rowmask``
    (:func:`row_masks` of X): room for the chunks' lists of columns that
    are not all zero, and what they are made from (see _gather_cols).
    ``ycls``: each sample's class when every row of ``Y`` is one-hot (see
    cbp_onehot_loss_delta), used with softmax outputs and log loss.

    Several epochs in one call (mini-batches only): ``rule`` (``RULE_SIZE``
    values, see ``RULE_*``) holds the stopping rule's state; each epoch
    first shuffles ``order`` in place with ``bitgen`` (a RandomState's bit
    generator capsule, None: no shuffle; ``permute=False``: draw only, as a
    full pass does) holding ``bitgen_lock`` (its lock) for the shuffle
    only, as RandomState.shuffle does, copies the parameters to
    ``snapshot``, runs its batches, writes its loss to ``losses`` and
    applies the rule; at most ``n_epochs`` epochs.  The sums and ``n_done``
    returned are then the last epoch's, ``epochs_done`` the epochs completed
    (a failed or interrupted one is not; ``snapshot`` then holds the weights
    before it).
    """
    cdef Net net
    cdef Source src
    cdef Optim o
    cdef Lazy lz
    cdef SpBatch sb
    cdef Fuse fz
    cdef bint use_fuse = False
    cdef Py_ssize_t n = order.shape[0], start, nb, k, i, cap, every, n_batches = 0
    cdef Py_ssize_t n_ep = order.shape[0], epoch, epochs_done = 0
    cdef bitgen_t* bg = NULL
    cdef double* rp = NULL
    cdef double* lossp = NULL
    cdef floating* snap = NULL
    cdef Py_ssize_t n_gblocks = gblocks.shape[0] // GB_FIELDS
    cdef Py_ssize_t n_ublocks = ublocks.shape[0] // UB_FIELDS
    cdef double data_sum = 0.0, pen_sum = 0.0, loss_sum, sw_sum, pen, dl, ll
    cdef int status = STATUS_OK, threads, step_threads, use
    cdef double* tp = NULL
    cdef double t0 = 0.0
    cdef const floating* Yp = &Y[0, 0]
    cdef const floating* swp = &sw[0] if has_sw else NULL
    cdef floating one = 1
    cdef const double[:, ::1] powers
    cdef const double[:, ::1] prefix
    cdef floating[::1] nzv
    cdef floating[::1] xdense
    cdef Split sp
    cdef double split_work[2 * SPLIT_MAX_BLOCKS * LINE_DOUBLES]
    cdef bint split = False

    _make_net(&net, spec, params.shape[0], True, step0)
    _make_source(&src, X, n_features, indices, indptr, params)
    _make_optim(&o, opt)
    cap = acts.shape[0] // net.total_units
    _make_spbatch(&sb, spi, spv, cap, nnz_cap, n_features, n_keep, &src, Y.shape[0])

    if batch_size == 1 and (rule is not None or n_epochs != 1):
        raise ValueError("online training runs one epoch a call")
    if batch_size == 1:
        lz.on = lazy is not None
        lz.l2 = 0.0
        nzv = np.empty(n_features, dtype=np.asarray(params).dtype)
        xdense = np.zeros(n_features, dtype=np.asarray(params).dtype)
        if lz.on:
            powers = lazy[0]
            prefix = lazy[1]
            lz.powers = &powers[0, 0]
            lz.prefix = &prefix[0, 0]
            # iwork: the sample's column indices (32-bit) in its first half,
            # ``last`` in the second.
            lz.last = &iwork[n_features]
        with nogil:
            if lz.on:
                for i in range(n_features):
                    lz.last[i] = 0
            for k in range(n):
                if k + 4 < n:
                    _prefetch_row(&src, order[k + 4], order[k + 5] if k + 5 < n else -1,
                                  Yp + order[k + 4] * net.units[net.n_layers],
                                  net.units[net.n_layers])
                if swp != NULL and swp[order[k]] == 0:
                    continue
                status = _online_sample(&net, &o, &params[0], &state1[0], &state2[0],
                                        &src, order[k], k,
                                        Yp + order[k] * net.units[net.n_layers],
                                        swp[order[k]] if swp != NULL else one,
                                        &acts[0], &deltas[0], &gates[0],
                                        <cbp_idx*>&iwork[0],
                                        &nzv[0], &xdense[0], &lz, &dl, &ll)
                data_sum += dl
                pen_sum += ll
                if status == STATUS_OK and k % SIGNAL_EVERY == SIGNAL_EVERY - 1 \
                        and _interrupted():
                    status = STATUS_INTERRUPTED
                if status != STATUS_OK:
                    n = k + 1
                    break
            if lz.on:
                if floating is float:
                    lz.l2 += cbp_lazy_flush_f(n_features, lz.last, n, lz.powers,
                                              lz.prefix, &params[0],
                                              &state1[0], net.zw[1])
                else:
                    lz.l2 += cbp_lazy_flush_d(n_features, lz.last, n, lz.powers,
                                              lz.prefix, &params[0],
                                              &state1[0], net.zw[1])
                pen_sum += 0.5 * o.alpha * lz.l2
                if not isfinite(pen_sum):
                    status = STATUS_NONFINITE
        epochs_done = status == STATUS_OK
    else:
        threads = _threads_for(&net, &src, Y.shape[0], min(batch_size, n), n_threads)
        # The step of a small network is not worth waking threads for
        # (see STEP_MIN_PARALLEL).
        step_threads = threads if net.n_params >= STEP_MIN_PARALLEL else 1
        every = max(1, SIGNAL_EVERY * 64 // batch_size)
        if threads > 1 and tuner is not None:
            if tuner.shape[0] < TUNER_STATE_SIZE:
                raise ValueError("the tuner state needs TUNER_STATE_SIZE entries")
            tp = &tuner[0]
        _attach_w0(&net, &src, w0, &params[0])
        _attach_wt(&net, wt)
        _attach_pgrad(&net, cap, pgrad)
        _attach_cols(&net, &src, Y.shape[0], cap, cols, rowmask)
        if (ycls is not None and ycls.shape[0] == Y.shape[0] and Y.shape[0] > 0
                and net.loss == LOSS_LOG and net.out_act == OUT_SOFTMAX):
            if np.min(ycls) < 0 or np.max(ycls) >= net.units[net.n_layers]:
                raise ValueError("ycls holds a class outside the output layer")
            net.ycls = &ycls[0]
        # Clipping needs the whole gradient's norm before any step.
        fz.o = &o
        fz.params = &params[0]
        fz.s1 = &state1[0]
        fz.s2 = &state2[0]
        fz.pen = &dwork[2 * cap + 2 * n_ublocks]
        use_fuse = FUSE_STEP and o.clip <= 0 and \
            dwork.shape[0] >= 2 * cap + 2 * n_ublocks + n_gblocks + net.n_layers
        fz.ublocks = &ublocks[0] if LOCAL_STEP and step_threads > 1 else NULL
        fz.wt_fresh = False
        fz.n_ublocks = n_ublocks
        fz.bpen = &dwork[2 * cap + n_ublocks]
        # Every batch must fit one pass: the blocks hold the weights for
        # the whole call.
        if UNIT_SPLIT and hsplit is not None and hscratch is not None \
                and hsplit.shape[0] >= 3 and min(batch_size, n) <= cap \
                and hsplit.shape[0] <= SPLIT_MAX_BLOCKS + 1 \
                and _split_shape_ok(&net, src.csr) and o.clip <= 0 \
                and hsplit[0] == 0 and hsplit[hsplit.shape[0] - 1] == net.units[1] \
                and hscratch.shape[0] >= split_scratch_size(
                    hsplit, net.units[0], net.units[2], cap, sizeof(floating)):
            split = True
            _split_plan(&sp, &hsplit[0], hsplit.shape[0] - 1, net.units[0],
                        net.units[2], cap, sizeof(floating))
            k = <Py_ssize_t>(<size_t>&hscratch[0] % <size_t>SPLIT_ALIGN)
            sp.base = (<char*>&hscratch[0]) + (SPLIT_ALIGN - k) % SPLIT_ALIGN
            sp.closs = &split_work[0]
            sp.pen = &split_work[SPLIT_MAX_BLOCKS * LINE_DOUBLES]
        if rule is not None:
            if rule.shape[0] < RULE_SIZE or losses is None \
                    or losses.shape[0] < n_epochs or snapshot is None \
                    or snapshot.shape[0] != params.shape[0]:
                raise ValueError("several epochs need rule, losses and snapshot")
            rp = &rule[0]
            lossp = &losses[0]
            snap = &snapshot[0]
            if bitgen is not None:
                if bitgen_lock is None:
                    raise ValueError("a shared bit generator needs its lock")
                bg = <bitgen_t*>PyCapsule_GetPointer(bitgen, "BitGenerator")
        elif n_epochs != 1:
            raise ValueError("several epochs need the stopping rule's state")
        with nogil:
            if split:
                _split_move(&net, &sp, &params[0], &state1[0], &state2[0], True)
            for epoch in range(n_epochs):
                if rp != NULL:
                    if bg != NULL and n_ep > 0:
                        # The generator may be shared (random_state=None is
                        # numpy's global one): hold its lock for the draws
                        # only, not for the whole fit.
                        with gil:
                            with bitgen_lock:
                                _legacy_shuffle(bg, &order[0], n_ep, permute)
                    memcpy(snap, &params[0], params.shape[0] * sizeof(floating))
                    net.step0 = step0 + epoch * n_ep
                    if epoch > 0 and _interrupted():
                        status = STATUS_INTERRUPTED
                        break
                data_sum = 0.0
                pen_sum = 0.0
                n = n_ep
                start = 0
                while start < n:
                    nb = min(batch_size, n - start)
                    use = threads
                    if tp != NULL:
                        use = _tuned_threads(tp, threads)
                        t0 = omp_get_wtime()
                    if split:
                        _split_batch(&net, &sp, &o, &src, &order[start], nb, Yp, swp,
                                     &acts[0], &deltas[0], &xbuf[0], cap, use,
                                     &loss_sum, &sw_sum, &pen)
                    else:
                        fz.done = False
                        fz.pending = 0
                        status = _accumulate(&net, &params[0], &src, &sb, &order[start], nb,
                                             start, Yp, swp, &acts[0], &deltas[0], &gates[0],
                                             &xbuf[0], cap, &grad[0], &dwork[0], &dwork[cap],
                                             &gblocks[0], n_gblocks, True, use, &loss_sum,
                                             &sw_sum, True,
                                             &order[start + nb] if start + nb < n else NULL,
                                             min(batch_size, n - start - nb),
                                             &fz if use_fuse else NULL)
                        if status != STATUS_OK:
                            break
                        if fz.done:
                            # Stepped in the gradient pass.
                            pen = fz.pen_total
                        elif sw_sum > 0:
                            pen = _apply_step(&net, &o, &params[0], &state1[0], &state2[0],
                                              &grad[0], sw_sum, &ublocks[0], n_ublocks,
                                              &dwork[2 * cap], min(step_threads, use),
                                              fz.pending, use_fuse)
                            # Each stepping thread refreshed its blocks'
                            # transposed copies (see _accumulate).
                            fz.wt_fresh = use_fuse
                    if sw_sum > 0:
                        dl = loss_sum / sw_sum
                        ll = pen / sw_sum
                    else:
                        # A batch whose weights are all zero carries no information
                        # (nothing was stepped): skip it rather than divide by zero.
                        dl = 0.0
                        ll = 0.0
                    data_sum += dl * nb
                    pen_sum += ll * nb
                    if tp != NULL:
                        _tuner_record(tp, use, (omp_get_wtime() - t0) / nb)
                    start += nb
                    if not (isfinite(dl) and isfinite(ll)):
                        status = STATUS_NONFINITE
                        n = start
                        break
                    n_batches += 1
                    if n_batches % every == 0 and start < n and _interrupted():
                        status = STATUS_INTERRUPTED
                        break
                if split:
                    # The epoch's weights where the caller (and the next
                    # epoch's snapshot) reads them.
                    _split_move(&net, &sp, &params[0], &state1[0], &state2[0], False)
                if status != STATUS_OK:
                    break
                epochs_done = epoch + 1
                if rp != NULL and _rule_epoch(rp, data_sum, pen_sum, n_ep, &o,
                                              &lossp[epoch]):
                    break
    opt["t"] = o.t
    if rp != NULL:
        opt["lr"] = o.lr
    return status, data_sum, pen_sum, n, epochs_done


def loss_grad(object X, object indices, object indptr, Py_ssize_t n_features,
              const floating[:, ::1] Y, const floating[::1] sw,
              bint has_sw, dict spec, const Py_ssize_t[::1] gblocks,
              const floating[::1] params, floating[::1] grad, floating[::1] acts,
              floating[::1] deltas, floating[::1] gates, floating[::1] xbuf,
              double[::1] dwork, Py_ssize_t[::1] spi, floating[::1] spv,
              Py_ssize_t nnz_cap, double alpha, double l1, int n_threads,
              bint need_grad=True, object dropout_step=None, Py_ssize_t n_keep=0,
              floating[::1] w0=None, floating[::1] wt=None):
    """Full-batch objective and gradient at ``params`` (lbfgs, rprop, gradient
    checks, validation losses).

    Returns ``(data_loss, penalty)``; ``grad`` receives the gradient of their
    sum in the packed layout.  With ``dropout_step`` (an int) the hidden
    units are dropped with the masks the training epoch starting at that
    sample counter would draw; otherwise the network is used as in predict.
    ``n_keep``, ``w0``, ``wt``: see :func:`run_epoch`.
    """
    cdef Net net
    cdef Source src
    cdef SpBatch sb
    cdef Py_ssize_t n = Y.shape[0], k, cap
    cdef int status
    cdef double loss_sum = 0.0, sw_sum = 0.0, pen
    cdef const floating* swp = &sw[0] if has_sw else NULL
    cdef Py_ssize_t[::1] rows = np.arange(n, dtype=np.intp)
    cdef int threads = n_threads
    cdef floating w

    _make_net(&net, spec, params.shape[0], dropout_step is not None,
              dropout_step if dropout_step is not None else 0)
    _make_source(&src, X, n_features, indices, indptr, params)
    cap = acts.shape[0] // net.total_units
    _make_spbatch(&sb, spi, spv, cap, nnz_cap, n_features, n_keep, &src, n)
    threads = _threads_for(&net, &src, n, min(cap, n), n_threads)
    _attach_w0(&net, &src, w0, &params[0])
    _attach_wt(&net, wt)
    with nogil:
        status = _accumulate(&net, &params[0], &src, &sb, &rows[0], n, 0, &Y[0, 0],
                             swp, &acts[0], &deltas[0], &gates[0], &xbuf[0], cap,
                             &grad[0], &dwork[0], &dwork[cap], &gblocks[0],
                             gblocks.shape[0] // GB_FIELDS, need_grad, threads, &loss_sum,
                             &sw_sum, True)
    if status == STATUS_INTERRUPTED:
        raise KeyboardInterrupt
    with nogil:
        pen = _penalty(net.n_coef, &params[0], alpha, l1)
        if need_grad:
            for k in range(net.n_coef):
                w = params[k]
                grad[k] = (grad[k] + alpha * w
                           + l1 * ((w > 0) - (w < 0))) / sw_sum
            for k in range(net.n_coef, net.n_params):
                grad[k] = grad[k] / sw_sum
    return loss_sum / sw_sum, pen / sw_sum


def rprop_update(floating[::1] params, const floating[::1] grad,
                 floating[::1] prev, floating[::1] step, double eta_minus,
                 double eta_plus, double step_min, double step_max):
    """One iRprop- update of every parameter from the full-batch gradient.

    Each parameter keeps its own step: it grows by ``eta_plus`` while the
    gradient keeps its sign and shrinks by ``eta_minus`` when the sign flips,
    in which case (the "-" of iRprop-) that parameter does not move and its
    remembered gradient is zeroed so the next step cannot shrink it again.
    """
    cdef Py_ssize_t k, n = params.shape[0]
    cdef floating g, s
    with nogil:
        for k in range(n):
            g = grad[k]
            s = step[k]
            if g * prev[k] > 0:
                s = min(s * <floating>eta_plus, <floating>step_max)
            elif g * prev[k] < 0:
                s = max(s * <floating>eta_minus, <floating>step_min)
                g = 0
            step[k] = s
            if g > 0:
                params[k] -= s
            elif g < 0:
                params[k] += s
            prev[k] = g


def forward(object X, object indices, object indptr, Py_ssize_t n_samples,
            Py_ssize_t n_features, dict spec, const floating[::1] params,
            floating[:, ::1] out, floating[:, ::1] acts, Py_ssize_t[:, ::1] rsre,
            int n_threads, floating[::1] w0=None):
    """Output-layer activations of every row of X, written into ``out``.

    Rows are processed in chunks of ``rsre.shape[1] // 2`` rows, in parallel
    over ``acts.shape[0]`` thread-private buffers (``rsre`` holds each
    thread's CSR row bounds).  Dense X goes through BLAS.  Dropout is
    off: prediction uses the whole network.  ``w0``: as in :func:`run_epoch`.
    """
    cdef Net net
    cdef Source src
    cdef Py_ssize_t cap, n_chunks, c, r0, nr, tid
    cdef const floating* X0 = NULL
    cdef int threads = min(n_threads, acts.shape[0])
    _make_net(&net, spec, params.shape[0], False, 0)
    _make_source(&src, X, n_features, indices, indptr, params)
    if not src.csr:
        X0 = <const floating*>src.x
    # The rows a chunk holds come from the row-bounds buffer: ``acts`` may
    # be longer (its rows are padded to cache lines).
    cap = rsre.shape[1] // 2
    if cap < 1 or acts.shape[1] < cap * net.total_units:
        raise ValueError("forward: acts must hold rsre.shape[1] // 2 rows a thread")
    n_chunks = (n_samples + cap - 1) // cap
    if n_chunks < 2:
        threads = 1
    _attach_w0(&net, &src, w0, &params[0])
    with nogil:
        for c in prange(n_chunks, num_threads=threads, schedule="static"):
            tid = _thread_id()
            r0 = c * cap
            nr = min(cap, n_samples - r0)
            _predict_chunk(&net, &params[0], &src, r0, nr, X0, &acts[tid, 0],
                           &rsre[tid, 0], cap, &out[r0, 0])


cdef void _predict_chunk(const Net* net, const floating* params, const Source* src,
                         Py_ssize_t r0, Py_ssize_t nr, const floating* X0,
                         floating* acts, Py_ssize_t* rsre, Py_ssize_t cap,
                         floating* out) noexcept nogil:
    cdef SpBatch sb
    cdef Py_ssize_t r, L = net.n_layers
    cdef const floating* xin = NULL
    if src.csr:
        for r in range(nr):
            rsre[r] = src.ptr[r0 + r]
            rsre[cap + r] = src.ptr[r0 + r + 1]
        sb.rs = rsre
        sb.re = rsre + cap
        sb.idx = src.ind
        sb.val = src.x
    else:
        xin = X0 + r0 * src.n_features
    # Without dropout the gate buffer is never touched.
    _forward_rows(net, params, src, &sb, nr, xin, acts, acts, cap, 0, 0)
    memcpy(out, acts + _layer_base(net, cap, L), nr * net.units[L] * sizeof(floating))


cdef inline Py_ssize_t _thread_id() noexcept nogil:
    return omp_get_thread_num()


# ---------------------------------------------------------------------------
# Python twins of the C helpers, for the tests.
# ---------------------------------------------------------------------------

def _py_hidden(int code, double[::1] z, double param=0.0):
    """Apply hidden activation ``code`` in place (float64)."""
    if z.shape[0]:
        cbp_hidden_forward_d(code, param, &z[0], z.shape[0])


def _py_hidden_f(int code, float[::1] z, double param=0.0):
    """Apply hidden activation ``code`` in place (float32)."""
    if z.shape[0]:
        cbp_hidden_forward_f(code, param, &z[0], z.shape[0])


def _py_output(int code, double[:, ::1] z):
    """Apply output activation ``code`` in place (float64)."""
    cbp_output_forward_d(code, &z[0, 0], z.shape[0], z.shape[1])


def _py_output_f(int code, float[:, ::1] z):
    """Apply output activation ``code`` in place (float32)."""
    cbp_output_forward_f(code, &z[0, 0], z.shape[0], z.shape[1])


def _py_logsumexp(double[::1] z):
    """Stable log(sum(exp(z)))."""
    return cbp_logsumexp_d(&z[0], z.shape[0])


def _py_row_loss(int loss, const floating[::1] p, const floating[::1] y,
                 double param=1.0):
    """Unweighted loss of one output row ``p`` against targets ``y``."""
    if p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise ValueError("p and y need the same, non-zero length")
    if floating is float:
        return cbp_row_loss_f(loss, param, &p[0], &y[0], p.shape[0])
    else:
        return cbp_row_loss_d(loss, param, &p[0], &y[0], p.shape[0])


def _py_rng_uniform(unsigned long long seed, unsigned long long a,
                    unsigned long long b, unsigned long long c):
    """Counter-based uniform draw keyed by (seed, a, b, c)."""
    return cbp_rng_uniform(seed, a, b, c)


def _py_dot(floating[::1] x, floating[::1] y):
    """Fixed-order dot product of the loop header."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("vectors differ in length")
    if x.shape[0] == 0:
        return 0.0
    return _dot(x.shape[0], &x[0], &y[0])


def _py_sumsq(floating[::1] x):
    """Fixed-order sum of squares (in double) of the loop header."""
    if x.shape[0] == 0:
        return 0.0
    return _sumsq(x.shape[0], &x[0])
