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
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void update(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] += 1.0f;
}

int main(int argc, char **argv)
{
    const size_t n = (2u << 20) / sizeof(float);
    const int reps = argc > 1 ? atoi(argv[1]) : 200;
    float *a = aligned_alloc(64, n * sizeof(float));
    double local0 = 0, local1 = 0, to1 = 0, to0 = 0;
    if (a == NULL) return 1;
    memset(a, 0, n * sizeof(float));
#pragma omp parallel num_threads(2)
    {
        const int id = omp_get_thread_num();
        for (int r = 0; r < reps; r++) {
            double t[5];
            /* Each phase is timed between barriers: one thread updates the
             * buffer, after itself (local) or after the other (a hand-over). */
#pragma omp barrier
            if (id == 0) update(a, n);
#pragma omp barrier
            t[0] = omp_get_wtime();
            if (id == 0) update(a, n);
#pragma omp barrier
            t[1] = omp_get_wtime();
            if (id == 1) update(a, n);
#pragma omp barrier
            t[2] = omp_get_wtime();
            if (id == 1) update(a, n);
#pragma omp barrier
            t[3] = omp_get_wtime();
            if (id == 0) update(a, n);
#pragma omp barrier
            t[4] = omp_get_wtime();
            if (id == 0) {
                local0 += t[1] - t[0];
                to1 += t[2] - t[1];
                local1 += t[3] - t[2];
                to0 += t[4] - t[3];
            }
        }
    }
    if (omp_get_max_threads() < 2)
        printf("only one thread: the hand-over figures mean nothing\n");
    printf("update of 2 MB (us, mean of %d): local0 %.0f local1 %.0f "
           "0->1 %.0f 1->0 %.0f (hand-over / local: %.1fx)\n",
           reps, 1e6 * local0 / reps, 1e6 * local1 / reps, 1e6 * to1 / reps,
           1e6 * to0 / reps, (to1 + to0) / (local0 + local1));
    free(a);
    return 0;
}
