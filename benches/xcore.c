/* Cost of handing data from one core to another on this machine.
 *
 * A data-parallel mini-batch step moves a few MB between cores per batch:
 * parameters written by one thread's optimiser step are read by every
 * thread's forward chunk, gradient blocks made by one thread are stepped by
 * another.  How much that costs depends on where the hypervisor has placed
 * the vCPUs (sharing a last-level cache or not), which on a shared cloud VM
 * changes over time.  This measures it: the time to update (read + write)
 * a 2 MB float32 buffer that the same core last wrote ("local") and that
 * the other core last wrote ("0->1", "1->0").  Run it next to
 * benches/compare.py's thread-scaling row to see which placement a run had.
 *
 *   gcc -O3 -march=native -fopenmp benches/xcore.c -o /tmp/xcore && /tmp/xcore
 *
 * Arguments: the rounds (default 200) and the buffer's size in KB (default
 * 2048).  benches/compare.py runs it with 64 KB, about what a two-thread
 * load_digits batch hands over (half the weights and half a gradient).
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void update(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] += 1.0f;
}

/* Called by both threads: thread `who` updates the buffer between two
 * barriers; returns the time between them. */
static double phase(int who, float *a, size_t n)
{
#pragma omp barrier
    const double t0 = omp_get_wtime();
    if (omp_get_thread_num() == who) update(a, n);
#pragma omp barrier
    return omp_get_wtime() - t0;
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 200;
    const size_t kb = argc > 2 ? (size_t)atoi(argv[2]) : 2048;
    const size_t n = (kb << 10) / sizeof(float);
    float *a = aligned_alloc(64, n * sizeof(float));
    double local0 = 0, local1 = 0, to1 = 0, to0 = 0;
    int team = 1;
    if (a == NULL) return 1;
    memset(a, 0, n * sizeof(float));
#pragma omp parallel num_threads(2)
    {
        double l0 = 0, l1 = 0, x1 = 0, x0 = 0;
        for (int r = 0; r < reps; r++) {
            phase(0, a, n);          /* thread 0 wrote it last */
            l0 += phase(0, a, n);    /* ... and updates it again */
            x1 += phase(1, a, n);    /* handed to thread 1 */
            l1 += phase(1, a, n);
            x0 += phase(0, a, n);    /* handed back */
        }
        if (omp_get_thread_num() == 0) {
            team = omp_get_num_threads();
            local0 = l0;
            local1 = l1;
            to1 = x1;
            to0 = x0;
        }
    }
    if (team < 2)
        printf("only one thread: the hand-over figures mean nothing\n");
    printf("update of %zu KB (us, mean of %d): local0 %.1f local1 %.1f "
           "0->1 %.1f 1->0 %.1f (hand-over / local: %.1fx)\n",
           kb, reps, 1e6 * local0 / reps, 1e6 * local1 / reps, 1e6 * to1 / reps,
           1e6 * to0 / reps, (to1 + to0) / (local0 + local1));
    free(a);
    return 0;
}
