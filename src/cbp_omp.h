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

/* Progress flags between the threads of one parallel region.  A thread
 * that has written some data raises a flag with cbp_flag_raise (release: the
 * data is visible before the flag); another thread that needs the data
 * waits with cbp_flags_wait (acquire) until the flag reaches a level.  Flags
 * only rise.  Waiting spins: the threads of a region run at the same time,
 * and the producer is inside a few milliseconds of work at most. */
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif
#if defined(_WIN32)
__declspec(dllimport) int __stdcall SwitchToThread(void);
#else
#include <sched.h>
#endif

static inline void cbp_flag_raise(volatile int *flag, int level)
{
#if defined(__GNUC__) || defined(__clang__)
    __atomic_store_n(flag, level, __ATOMIC_RELEASE);
#else
#ifdef _OPENMP
#pragma omp flush
#endif
    *flag = level;
#ifdef _OPENMP
#pragma omp flush
#endif
#endif
}

static inline int cbp_flag_read(const volatile int *flag)
{
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_load_n(flag, __ATOMIC_ACQUIRE);
#else
    int level = *flag;
#ifdef _OPENMP
#pragma omp flush
#endif
    return level;
#endif
}

static inline void cbp_spin_pause(void)
{
#if (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
    __asm__ __volatile__("yield");
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    _mm_pause();
#endif
}

/* Give the core to another thread: a waiting thread that has spun for a
 * while may be sharing its core with the thread it waits for (more threads
 * than cores). */
static inline void cbp_yield(void)
{
#if defined(_WIN32)
    SwitchToThread();
#else
    sched_yield();
#endif
}

/* Wait until each of the n flags flags[0], flags[stride], ... is at least
 * `level`: spin (a few tens of microseconds), then yield between looks. */
static inline void cbp_flags_wait(const volatile int *flags, int n, int stride,
                                  int level)
{
    long spins = 0;
    for (int i = 0; i < n; i++)
        while (cbp_flag_read(flags + (long)i * stride) < level) {
            if (++spins < 4096)
                cbp_spin_pause();
            else
                cbp_yield();
        }
}

/* Whether each of the n flags is at least `level` now. */
static inline int cbp_flags_reached(const volatile int *flags, int n, int stride,
                                    int level)
{
    for (int i = 0; i < n; i++)
        if (cbp_flag_read(flags + (long)i * stride) < level)
            return 0;
    return 1;
}

#endif /* CBP_OMP_H */
