/*
 * cbp_rng.h -- counter-based random numbers.
 *
 * A value is a pure function of (seed, a, b, c): no state is carried from one
 * draw to the next, so any thread may draw any value in any order and the
 * result does not depend on how work is split.  The mixer is a SplitMix64-style
 * finaliser applied to the key folded with the counters; it passes the usual
 * avalanche tests for this purpose (dropout masks), not for cryptography.
 */
#ifndef CBP_RNG_H
#define CBP_RNG_H

#include <stdint.h>

static inline uint64_t cbp_mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* 64 random bits keyed by a seed and three counters. */
static inline uint64_t cbp_rng_bits(uint64_t seed, uint64_t a, uint64_t b,
                                    uint64_t c)
{
    uint64_t h = cbp_mix64(seed);
    h = cbp_mix64(h ^ a);
    h = cbp_mix64(h ^ b);
    return cbp_mix64(h ^ c);
}

/* The draws of one (seed, a, b) share the first three mixing rounds:
 * cbp_rng_unit(cbp_rng_prefix(seed, a, b), c) == cbp_rng_uniform(seed, a, b, c). */
static inline uint64_t cbp_rng_prefix(uint64_t seed, uint64_t a, uint64_t b)
{
    return cbp_mix64(cbp_mix64(cbp_mix64(seed) ^ a) ^ b);
}

static inline double cbp_rng_unit(uint64_t prefix, uint64_t c)
{
    return (double)(cbp_mix64(prefix ^ c) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform double in [0, 1) with 53 random bits. */
static inline double cbp_rng_uniform(uint64_t seed, uint64_t a, uint64_t b,
                                     uint64_t c)
{
    return (double)(cbp_rng_bits(seed, a, b, c) >> 11) * (1.0 / 9007199254740992.0);
}

#endif /* CBP_RNG_H */
