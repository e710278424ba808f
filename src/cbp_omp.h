/*
 * cbp_omp.h -- OpenMP fallback shim.
 *
 * Cython's prange compiles to OpenMP pragmas, which a compiler without OpenMP
 * simply ignores; the runtime calls below are the only thing that would fail
 * to link.  This header gives them single-thread definitions in that case so
 * the extension builds (serially) everywhere.
 */
#ifndef CBP_OMP_H
#define CBP_OMP_H

#ifdef _OPENMP
#include <omp.h>
#define CBP_HAVE_OPENMP 1
#else
#define CBP_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_num_procs(void) { return 1; }
/* Only read around multithreaded batches, which a serial build never runs. */
static inline double omp_get_wtime(void) { return 0.0; }
#endif

static inline int cbp_have_openmp(void) { return CBP_HAVE_OPENMP; }

/* A barrier of the team that runs the caller (an orphaned directive binds
 * to the innermost enclosing parallel region); a no-op outside one and
 * without OpenMP. */
static inline void cbp_barrier(void)
{
#ifdef _OPENMP
#pragma omp barrier
#endif
}

#endif /* CBP_OMP_H */
