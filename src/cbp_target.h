/*
 * cbp_target.h -- which instruction sets the hot loops are compiled for.
 *
 * On x86-64 Linux with GCC each loop marked CBP_CLONES is compiled for
 * AVX-512, AVX2+FMA and baseline x86-64 and picked at load time, so wheels
 * stay portable (no -march=native) but run wide vectors where the CPU has
 * them.  Elsewhere CBP_CLONES is empty.  CBP_NO_CLONES turns it off.
 */
#ifndef CBP_TARGET_H
#define CBP_TARGET_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && (__GNUC__ >= 11) && !defined(CBP_NO_CLONES)
#define CBP_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CBP_CLONES
#endif

#endif /* CBP_TARGET_H */
