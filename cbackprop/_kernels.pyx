# cython: language_level=3
"""Typed ``nogil`` kernels: forward pass, deltas, gradient accumulation and the
optimiser updates, for whole epochs at a time.

Layout
------
All parameters live in one flat vector ``params`` in scikit-learn's packing
order: every coefficient matrix (row-major, ``fan_in x fan_out``) one after the
other, then every intercept vector.  ``coef_off[li]`` and ``icpt_off[li]`` give
where layer ``l`` starts.  The optimiser state (velocities, or Adam's first and
second moments) and the gradient accumulator use the same layout, so one loop
over the vector applies an update.

Per-block work buffers hold, for layers ``1..L``, the activations and deltas of
up to ``chunk`` samples: layer ``l`` (``1 <= l <= L``) starts at
``chunk * (units[1] + ... + units[l-1])``.

Every entry point returns an integer status; Python turns it into an exception.
"""
from cython cimport floating
from libc.math cimport sqrt, pow, isfinite
from libc.string cimport memset, memcpy

from cbackprop._blas cimport mm_rowmajor, NoTrans, Trans

import numpy as np

cdef extern from "cbp_math.h" nogil:
    void cbp_hidden_forward_d(int code, double* z, Py_ssize_t n)
    void cbp_hidden_forward_f(int code, float* z, Py_ssize_t n)
    void cbp_hidden_backward_d(int code, const double* a, double* d, Py_ssize_t n)
    void cbp_hidden_backward_f(int code, const float* a, float* d, Py_ssize_t n)
    void cbp_output_forward_d(int code, double* z, Py_ssize_t r, Py_ssize_t c)
    void cbp_output_forward_f(int code, float* z, Py_ssize_t r, Py_ssize_t c)
    double cbp_row_loss_d(int loss, const double* p, const double* y, Py_ssize_t c)
    double cbp_row_loss_f(int loss, const float* p, const float* y, Py_ssize_t c)
    double cbp_sigmoid_d(double x)
    double cbp_logsumexp_d(const double* z, Py_ssize_t n)

cdef extern from "cbp_rng.h" nogil:
    double cbp_rng_uniform(unsigned long long seed, unsigned long long a,
                           unsigned long long b, unsigned long long c)

# Status codes shared with cbackprop/_codes.py.
cdef enum:
    STATUS_OK = 0
    STATUS_NONFINITE = 1

cdef enum:
    OPT_SGD = 0
    OPT_ADAM = 1


cdef struct Net:
    Py_ssize_t n_layers        # weight layers L
    const Py_ssize_t* units    # L + 1 layer widths, input first
    const Py_ssize_t* coef_off
    const Py_ssize_t* icpt_off
    Py_ssize_t n_coef          # number of coefficients (intercepts follow)
    Py_ssize_t n_params
    Py_ssize_t chunk           # rows per block in the work buffers
    int hidden_act
    int out_act
    int loss


cdef struct Optim:
    int kind
    double lr           # SGD: current rate; Adam: learning_rate_init
    double momentum
    bint nesterov
    double beta1
    double beta2
    double eps
    double alpha        # L2 strength
    long long t         # Adam step counter, carried across calls


cdef struct Source:
    # Where block rows come from: a dense row-major X, or CSR arrays.
    bint sparse
    Py_ssize_t n_features
    const void* x           # dense X (floating*), or CSR data
    const Py_ssize_t* ind   # CSR column indices
    const Py_ssize_t* ptr   # CSR row pointers


# ---------------------------------------------------------------------------
# Small helpers, written once over ``floating``.
# ---------------------------------------------------------------------------

cdef inline void _hidden_forward(int code, floating* z, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cbp_hidden_forward_f(code, z, n)
    else:
        cbp_hidden_forward_d(code, z, n)


cdef inline void _hidden_backward(int code, const floating* a, floating* d,
                                  Py_ssize_t n) noexcept nogil:
    if floating is float:
        cbp_hidden_backward_f(code, a, d, n)
    else:
        cbp_hidden_backward_d(code, a, d, n)


cdef inline void _output_forward(int code, floating* z, Py_ssize_t r,
                                 Py_ssize_t c) noexcept nogil:
    if floating is float:
        cbp_output_forward_f(code, z, r, c)
    else:
        cbp_output_forward_d(code, z, r, c)


cdef inline double _row_loss(int loss, const floating* p, const floating* y,
                             Py_ssize_t c) noexcept nogil:
    if floating is float:
        return cbp_row_loss_f(loss, p, y, c)
    else:
        return cbp_row_loss_d(loss, p, y, c)


cdef inline Py_ssize_t _layer_off(const Net* net, Py_ssize_t layer) noexcept nogil:
    """Offset of layer ``layer`` (1..L) in a block buffer."""
    cdef Py_ssize_t k, off = 0
    for k in range(1, layer):
        off += net.units[k]
    return off * net.chunk


cdef inline void _opt_update(const Optim* o, floating* w, floating* s1,
                             floating* s2, double g, double lr_t) noexcept nogil:
    """Apply one optimiser step to a single parameter with gradient ``g``.

    The arithmetic follows scikit-learn's optimisers operation by operation so
    float64 trajectories agree to rounding.
    """
    cdef double upd, m, v
    if o.kind == OPT_SGD:
        upd = o.momentum * s1[0] - o.lr * g
        s1[0] = <floating>upd
        if o.nesterov:
            upd = o.momentum * <double>s1[0] - o.lr * g
        w[0] = <floating>(w[0] + upd)
    else:
        m = o.beta1 * s1[0] + (1.0 - o.beta1) * g
        v = o.beta2 * s2[0] + (1.0 - o.beta2) * (g * g)
        s1[0] = <floating>m
        s2[0] = <floating>v
        w[0] = <floating>(w[0] + (-lr_t * <double>s1[0]) / (sqrt(<double>s2[0]) + o.eps))


cdef inline double _adam_rate(Optim* o) noexcept nogil:
    """Advance Adam's step counter and return the bias-corrected rate."""
    o.t += 1
    return o.lr * sqrt(1.0 - pow(o.beta2, <double>o.t)) / (1.0 - pow(o.beta1, <double>o.t))


# ---------------------------------------------------------------------------
# Block forward / backward over up to ``chunk`` rows.
# ---------------------------------------------------------------------------

cdef void _forward_block(const Net* net, const floating* params, const Source* src,
                         const floating* xin, const Py_ssize_t* rows, Py_ssize_t nr,
                         floating* acts) noexcept nogil:
    """Activations of layers 1..L for ``nr`` rows.

    Dense input comes as ``xin`` (``nr x n_features``, already gathered or a
    direct slice of X); sparse input is read through ``rows`` from the CSR
    arrays of ``src``.
    """
    cdef Py_ssize_t L = net.n_layers, li, r, j, p, u_in, u_out
    cdef const floating* a_in
    cdef floating* z
    cdef const floating* W
    cdef const floating* b
    cdef const floating* data
    cdef const floating* wrow
    cdef floating xv
    for li in range(L):
        u_in = net.units[li]
        u_out = net.units[li + 1]
        W = params + net.coef_off[li]
        b = params + net.icpt_off[li]
        z = acts + _layer_off(net, li + 1)
        if li == 0 and src.sparse:
            data = <const floating*>src.x
            memset(z, 0, nr * u_out * sizeof(floating))
            for r in range(nr):
                for p in range(src.ptr[rows[r]], src.ptr[rows[r] + 1]):
                    xv = data[p]
                    wrow = W + src.ind[p] * u_out
                    for j in range(u_out):
                        z[r * u_out + j] += xv * wrow[j]
        else:
            a_in = xin if li == 0 else acts + _layer_off(net, li)
            mm_rowmajor(NoTrans, NoTrans, <int>nr, <int>u_out, <int>u_in,
                        <floating>1, a_in, <int>u_in, W, <int>u_out,
                        <floating>0, z, <int>u_out)
        for r in range(nr):
            for j in range(u_out):
                z[r * u_out + j] += b[j]
        if li < L - 1:
            _hidden_forward(net.hidden_act, z, nr * u_out)
        else:
            _output_forward(net.out_act, z, nr, u_out)


cdef void _backward_block(const Net* net, const floating* params, const Source* src,
                          const floating* xin, const Py_ssize_t* rows, Py_ssize_t nr,
                          const floating* Y, const floating* sw,
                          floating* acts, floating* deltas, floating* grad,
                          double* loss_sum, double* sw_sum, bint need_grad) noexcept nogil:
    """Loss of ``nr`` rows, and when ``need_grad`` their gradient, added to
    ``grad`` (unnormalised: ``A^T delta`` and column sums of ``delta``)."""
    cdef Py_ssize_t L = net.n_layers, li, r, j, p, u_in, u_out, i
    cdef Py_ssize_t n_out = net.units[L]
    cdef const floating* out
    cdef const floating* yrow
    cdef floating* d
    cdef floating* dprev
    cdef floating* G
    cdef floating* gb
    cdef const floating* data
    cdef floating w, xv
    cdef double wl

    _forward_block(net, params, src, xin, rows, nr, acts)
    out = acts + _layer_off(net, L)
    d = deltas + _layer_off(net, L)
    for r in range(nr):
        yrow = Y + rows[r] * n_out
        w = sw[rows[r]] if sw != NULL else <floating>1
        wl = _row_loss(net.loss, out + r * n_out, yrow, n_out)
        loss_sum[0] += (<double>w) * wl
        sw_sum[0] += <double>w
        if need_grad:
            # Every supported loss is paired with its canonical link, so the
            # output delta is prediction minus target.
            for j in range(n_out):
                d[r * n_out + j] = out[r * n_out + j] - yrow[j]
                if sw != NULL:
                    d[r * n_out + j] *= w
    if not need_grad:
        return

    for li in range(L - 1, -1, -1):
        u_in = net.units[li]
        u_out = net.units[li + 1]
        d = deltas + _layer_off(net, li + 1)
        G = grad + net.coef_off[li]
        gb = grad + net.icpt_off[li]
        # Delta of the layer below first: it needs this layer's weights.
        if li > 0:
            dprev = deltas + _layer_off(net, li)
            mm_rowmajor(NoTrans, Trans, <int>nr, <int>u_in, <int>u_out,
                        <floating>1, d, <int>u_out, params + net.coef_off[li],
                        <int>u_out, <floating>0, dprev, <int>u_in)
            _hidden_backward(net.hidden_act, acts + _layer_off(net, li), dprev,
                             nr * u_in)
        if li == 0 and src.sparse:
            data = <const floating*>src.x
            for r in range(nr):
                for p in range(src.ptr[rows[r]], src.ptr[rows[r] + 1]):
                    xv = data[p]
                    i = src.ind[p]
                    for j in range(u_out):
                        G[i * u_out + j] += xv * d[r * u_out + j]
        else:
            mm_rowmajor(Trans, NoTrans, <int>u_in, <int>u_out, <int>nr,
                        <floating>1, xin if li == 0 else acts + _layer_off(net, li),
                        <int>u_in, d, <int>u_out, <floating>1, G, <int>u_out)
        for r in range(nr):
            for j in range(u_out):
                gb[j] += d[r * u_out + j]


cdef const floating* _block_input(const Net* net, const Source* src,
                                  const Py_ssize_t* rows, Py_ssize_t nr,
                                  floating* xbuf) noexcept nogil:
    """Dense rows of a block: a direct pointer into X when the rows are
    consecutive, otherwise gathered into ``xbuf``."""
    cdef Py_ssize_t r, nf = src.n_features
    cdef const floating* X = <const floating*>src.x
    cdef bint consecutive = True
    if src.sparse:
        return NULL
    for r in range(1, nr):
        if rows[r] != rows[0] + r:
            consecutive = False
            break
    if consecutive:
        return X + rows[0] * nf
    for r in range(nr):
        memcpy(xbuf + r * nf, X + rows[r] * nf, nf * sizeof(floating))
    return xbuf


cdef void _accumulate(const Net* net, const floating* params, const Source* src,
                      const Py_ssize_t* rows, Py_ssize_t n, const floating* Y,
                      const floating* sw, floating* acts, floating* deltas,
                      floating* xbuf, floating* grad, double* loss_sum,
                      double* sw_sum, bint need_grad) noexcept nogil:
    """Loss and unnormalised gradient of ``n`` rows, ``chunk`` rows at a time."""
    cdef Py_ssize_t start, nr
    cdef const floating* xin
    if need_grad:
        memset(grad, 0, net.n_params * sizeof(floating))
    loss_sum[0] = 0.0
    sw_sum[0] = 0.0
    start = 0
    while start < n:
        nr = min(net.chunk, n - start)
        xin = _block_input(net, src, rows + start, nr, xbuf)
        _backward_block(net, params, src, xin, rows + start, nr, Y, sw, acts,
                        deltas, grad, loss_sum, sw_sum, need_grad)
        start += nr


cdef double _sum_sq_coefs(const Net* net, const floating* params) noexcept nogil:
    cdef Py_ssize_t k
    cdef double s = 0.0
    for k in range(net.n_coef):
        s += (<double>params[k]) * params[k]
    return s


cdef double _apply_step(const Net* net, Optim* o, floating* params, floating* s1,
                        floating* s2, const floating* grad, double sw_sum) noexcept nogil:
    """Normalise an accumulated gradient, add the L2 term and update the
    parameters in place.  Returns the sum of squared coefficients *before* the
    update, which the batch loss needs."""
    cdef Py_ssize_t k
    cdef double g, ssq = 0.0, lr_t = 0.0
    cdef floating wk
    if o.kind == OPT_ADAM:
        lr_t = _adam_rate(o)
    for k in range(net.n_coef):
        wk = params[k]
        ssq += (<double>wk) * wk
        g = (grad[k] + o.alpha * wk) / sw_sum
        _opt_update(o, params + k, s1 + k, s2 + k, g, lr_t)
    for k in range(net.n_coef, net.n_params):
        g = grad[k] / sw_sum
        _opt_update(o, params + k, s1 + k, s2 + k, g, lr_t)
    return ssq


# ---------------------------------------------------------------------------
# Online mode: one sample, updated in place with no gradient accumulator.
# ---------------------------------------------------------------------------

cdef int _online_sample(const Net* net, Optim* o, floating* params, floating* s1,
                        floating* s2, const floating* x, const floating* y,
                        floating w, floating* acts, floating* deltas,
                        double* data_loss, double* l2_loss) noexcept nogil:
    """Forward, deltas and in-place update for one dense sample.

    Layers are processed from the output down; each layer's weights are
    updated right after the delta of the layer below has been computed from
    them, which equals computing every gradient first and updating after.
    """
    cdef Py_ssize_t L = net.n_layers, li, i, j, u_in, u_out
    cdef Py_ssize_t n_out = net.units[L]
    cdef floating* z
    cdef const floating* a_in
    cdef const floating* W
    cdef floating* Wm
    cdef floating* d
    cdef floating* dprev
    cdef floating ai, acc
    cdef double g, ssq = 0.0, lr_t = 0.0, sw_sum = <double>w, loss
    cdef Py_ssize_t base

    # Forward pass.  Rows of W are added for each non-zero input, which skips
    # the zero pixels of image data and blank one-hot columns for free.
    for li in range(L):
        u_in = net.units[li]
        u_out = net.units[li + 1]
        W = params + net.coef_off[li]
        z = acts + _layer_off(net, li + 1)
        a_in = x if li == 0 else acts + _layer_off(net, li)
        memset(z, 0, u_out * sizeof(floating))
        for i in range(u_in):
            ai = a_in[i]
            if ai != 0:
                for j in range(u_out):
                    z[j] += ai * W[i * u_out + j]
        for j in range(u_out):
            z[j] += params[net.icpt_off[li] + j]
        if li < L - 1:
            _hidden_forward(net.hidden_act, z, u_out)
        else:
            _output_forward(net.out_act, z, 1, u_out)

    z = acts + _layer_off(net, L)
    loss = _row_loss(net.loss, z, y, n_out)
    d = deltas + _layer_off(net, L)
    for j in range(n_out):
        d[j] = z[j] - y[j]
        d[j] *= w

    if o.kind == OPT_ADAM:
        lr_t = _adam_rate(o)
    for li in range(L - 1, -1, -1):
        u_in = net.units[li]
        u_out = net.units[li + 1]
        Wm = params + net.coef_off[li]
        d = deltas + _layer_off(net, li + 1)
        a_in = x if li == 0 else acts + _layer_off(net, li)
        if li > 0:
            dprev = deltas + _layer_off(net, li)
            for i in range(u_in):
                acc = 0
                for j in range(u_out):
                    acc += Wm[i * u_out + j] * d[j]
                dprev[i] = acc
            _hidden_backward(net.hidden_act, a_in, dprev, u_in)
        for i in range(u_in):
            ai = a_in[i]
            base = net.coef_off[li] + i * u_out
            for j in range(u_out):
                ssq += (<double>params[base + j]) * params[base + j]
                g = ((<double>(ai * d[j])) + o.alpha * params[base + j]) / sw_sum
                _opt_update(o, params + base + j, s1 + base + j, s2 + base + j,
                            g, lr_t)
        base = net.icpt_off[li]
        for j in range(u_out):
            g = (<double>d[j]) / sw_sum
            _opt_update(o, params + base + j, s1 + base + j, s2 + base + j, g, lr_t)

    data_loss[0] = loss
    l2_loss[0] = 0.5 * o.alpha * ssq / sw_sum
    if not (isfinite(loss) and isfinite(l2_loss[0])):
        return STATUS_NONFINITE
    return STATUS_OK


# ---------------------------------------------------------------------------
# Python entry points.  Each validates nothing: the estimators hand them
# checked, contiguous arrays of one dtype.
# ---------------------------------------------------------------------------

cdef void _make_net(Net* net, const Py_ssize_t[::1] units,
                    const Py_ssize_t[::1] coef_off, const Py_ssize_t[::1] icpt_off,
                    Py_ssize_t n_params, Py_ssize_t buf_len, int hidden_act,
                    int out_act, int loss) noexcept:
    net.n_layers = units.shape[0] - 1
    net.units = &units[0]
    net.coef_off = &coef_off[0]
    net.icpt_off = &icpt_off[0]
    net.n_coef = icpt_off[0]
    net.n_params = n_params
    # The work buffers hold ``chunk`` rows of every layer.
    net.chunk = buf_len // _total_units(units)
    net.hidden_act = hidden_act
    net.out_act = out_act
    net.loss = loss


cdef void _make_source(Source* src, object X, Py_ssize_t n_features,
                       object indices, object indptr,
                       const floating[::1] dtype_witness) except *:
    cdef const floating[::1] data
    cdef const floating[:, ::1] dense
    cdef const Py_ssize_t[::1] ind
    cdef const Py_ssize_t[::1] ptr
    src.n_features = n_features
    src.sparse = indices is not None
    if src.sparse:
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


def run_epoch(object X, object indices, object indptr, Py_ssize_t n_features,
              const floating[:, ::1] Y, const floating[::1] sw, bint has_sw,
              const Py_ssize_t[::1] order, const Py_ssize_t[::1] units,
              const Py_ssize_t[::1] coef_off, const Py_ssize_t[::1] icpt_off,
              int hidden_act, int out_act, int loss,
              floating[::1] params, floating[::1] state1, floating[::1] state2,
              floating[::1] grad, floating[::1] acts, floating[::1] deltas,
              floating[::1] xbuf, Py_ssize_t batch_size, dict opt):
    """Run one epoch of mini-batch (or online) training over ``order``.

    Returns ``(status, data_loss_sum, l2_loss_sum, n_done)`` where the loss
    sums are batch losses weighted by batch size (scikit-learn's
    ``accumulated_loss``), split into the data term and the L2 term, and the
    optimiser dict's ``t`` is advanced in place.
    """
    cdef Net net
    cdef Source src
    cdef Optim o
    cdef Py_ssize_t n = order.shape[0], start, nb, k
    cdef double data_sum = 0.0, l2_sum = 0.0, loss_sum, sw_sum, ssq, dl, ll
    cdef int status = STATUS_OK
    cdef const floating* Yp = &Y[0, 0]
    cdef const floating* swp = &sw[0] if has_sw else NULL
    cdef const floating* xrow
    cdef const floating* Xd
    cdef floating one = 1

    _make_net(&net, units, coef_off, icpt_off, params.shape[0],
              acts.shape[0], hidden_act, out_act, loss)
    _make_source(&src, X, n_features, indices, indptr, params)
    o.kind = OPT_ADAM if opt["kind"] == "adam" else OPT_SGD
    o.lr = opt["lr"]
    o.momentum = opt.get("momentum", 0.0)
    o.nesterov = opt.get("nesterov", False)
    o.beta1 = opt.get("beta1", 0.9)
    o.beta2 = opt.get("beta2", 0.999)
    o.eps = opt.get("eps", 1e-8)
    o.alpha = opt["alpha"]
    o.t = opt.get("t", 0)

    with nogil:
        if batch_size == 1 and not src.sparse:
            Xd = <const floating*>src.x
            for k in range(n):
                if swp != NULL and swp[order[k]] == 0:
                    continue
                xrow = Xd + order[k] * n_features
                status = _online_sample(&net, &o, &params[0], &state1[0], &state2[0],
                                        xrow, Yp + order[k] * net.units[net.n_layers],
                                        swp[order[k]] if swp != NULL else one,
                                        &acts[0], &deltas[0], &dl, &ll)
                data_sum += dl
                l2_sum += ll
                if status != STATUS_OK:
                    n = k + 1
                    break
        else:
            start = 0
            while start < n:
                nb = min(batch_size, n - start)
                _accumulate(&net, &params[0], &src, &order[start], nb, Yp, swp,
                            &acts[0], &deltas[0], &xbuf[0], &grad[0],
                            &loss_sum, &sw_sum, True)
                if sw_sum > 0:
                    ssq = _apply_step(&net, &o, &params[0], &state1[0], &state2[0],
                                      &grad[0], sw_sum)
                    dl = loss_sum / sw_sum
                    ll = 0.5 * o.alpha * ssq / sw_sum
                else:
                    # A batch whose weights are all zero carries no information:
                    # skip it rather than divide by zero.
                    dl = 0.0
                    ll = 0.0
                data_sum += dl * nb
                l2_sum += ll * nb
                start += nb
                if not (isfinite(dl) and isfinite(ll)):
                    status = STATUS_NONFINITE
                    n = start
                    break
    opt["t"] = o.t
    return status, data_sum, l2_sum, n


cdef Py_ssize_t _total_units(const Py_ssize_t[::1] units) noexcept:
    cdef Py_ssize_t k, s = 0
    for k in range(1, units.shape[0]):
        s += units[k]
    return s


def loss_grad(object X, object indices, object indptr, Py_ssize_t n_features,
              const floating[:, ::1] Y, const floating[::1] sw, bint has_sw,
              const Py_ssize_t[::1] units, const Py_ssize_t[::1] coef_off,
              const Py_ssize_t[::1] icpt_off, int hidden_act, int out_act,
              int loss, const floating[::1] params, floating[::1] grad,
              floating[::1] acts, floating[::1] deltas, floating[::1] xbuf,
              double alpha, bint need_grad=True):
    """Full-batch objective and gradient at ``params`` (lbfgs, gradient checks).

    Returns ``(data_loss, l2_loss)``; ``grad`` receives the gradient of their
    sum in the packed layout.
    """
    cdef Net net
    cdef Source src
    cdef Py_ssize_t n = Y.shape[0], k
    cdef double loss_sum = 0.0, sw_sum = 0.0, ssq
    cdef const floating* swp = &sw[0] if has_sw else NULL
    cdef Py_ssize_t[::1] rows = np.arange(n, dtype=np.intp)

    _make_net(&net, units, coef_off, icpt_off, params.shape[0], acts.shape[0],
              hidden_act, out_act, loss)
    _make_source(&src, X, n_features, indices, indptr, params)
    with nogil:
        _accumulate(&net, &params[0], &src, &rows[0], n, &Y[0, 0], swp,
                    &acts[0], &deltas[0], &xbuf[0], &grad[0], &loss_sum, &sw_sum,
                    need_grad)
        ssq = _sum_sq_coefs(&net, &params[0])
        if need_grad:
            for k in range(net.n_coef):
                grad[k] = (grad[k] + alpha * params[k]) / sw_sum
            for k in range(net.n_coef, net.n_params):
                grad[k] = grad[k] / sw_sum
    return loss_sum / sw_sum, 0.5 * alpha * ssq / sw_sum


def forward(object X, object indices, object indptr, Py_ssize_t n_samples,
            Py_ssize_t n_features, const Py_ssize_t[::1] units,
            const Py_ssize_t[::1] coef_off, const Py_ssize_t[::1] icpt_off,
            int hidden_act, int out_act, const floating[::1] params,
            floating[:, ::1] out, floating[::1] acts, floating[::1] xbuf):
    """Output-layer activations of every row of X, written into ``out``."""
    cdef Net net
    cdef Source src
    cdef Py_ssize_t start, nr, L, n_out
    cdef Py_ssize_t[::1] rows = np.arange(n_samples, dtype=np.intp)
    cdef const floating* xin
    _make_net(&net, units, coef_off, icpt_off, params.shape[0], acts.shape[0],
              hidden_act, out_act, 0)
    _make_source(&src, X, n_features, indices, indptr, params)
    L = net.n_layers
    n_out = units[L]
    with nogil:
        start = 0
        while start < n_samples:
            nr = min(net.chunk, n_samples - start)
            xin = _block_input(&net, &src, &rows[start], nr, &xbuf[0])
            _forward_block(&net, &params[0], &src, xin, &rows[start], nr, &acts[0])
            memcpy(&out[start, 0], &acts[0] + _layer_off(&net, L),
                   nr * n_out * sizeof(floating))
            start += nr


# ---------------------------------------------------------------------------
# Python twins of the C helpers, for the tests.
# ---------------------------------------------------------------------------

def _py_hidden(int code, double[::1] z):
    """Apply hidden activation ``code`` in place (float64)."""
    cbp_hidden_forward_d(code, &z[0], z.shape[0])


def _py_hidden_f(int code, float[::1] z):
    """Apply hidden activation ``code`` in place (float32)."""
    cbp_hidden_forward_f(code, &z[0], z.shape[0])


def _py_output(int code, double[:, ::1] z):
    """Apply output activation ``code`` in place (float64)."""
    cbp_output_forward_d(code, &z[0, 0], z.shape[0], z.shape[1])


def _py_output_f(int code, float[:, ::1] z):
    """Apply output activation ``code`` in place (float32)."""
    cbp_output_forward_f(code, &z[0, 0], z.shape[0], z.shape[1])


def _py_logsumexp(double[::1] z):
    """Stable log(sum(exp(z)))."""
    return cbp_logsumexp_d(&z[0], z.shape[0])


def _py_rng_uniform(unsigned long long seed, unsigned long long a,
                    unsigned long long b, unsigned long long c):
    """Counter-based uniform draw keyed by (seed, a, b, c)."""
    return cbp_rng_uniform(seed, a, b, c)
