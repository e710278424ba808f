# cython: language_level=3
from cython cimport floating

cdef enum BlasTrans:
    NoTrans = 110  # 'n'
    Trans = 116    # 't'

cdef void mm_rowmajor(BlasTrans ta, BlasTrans tb, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil

cdef bint own_gemm_on() noexcept nogil

cdef void mm_own(int m, int n, int k, const floating* a, int lda, const floating* b,
                 int ldb, const floating* bias, bint relu, const floating* gate,
                 int ldg, floating* c, int ldc, bint ta=*, const int* bidx=*,
                 const int* cidx=*, floating* csum=*) noexcept nogil
