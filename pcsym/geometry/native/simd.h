/* Shared by edge.c and agg.c: GCC/clang vector types, and one copy of a file's loops per instruction set.
 *
 * A kernel file defines BODY (its loop header, e.g. "agg_body.h") and includes "twice.h", which includes BODY
 * once as the baseline copy (SUFFIX _base, vf = v4: SSE2 / NEON width) and, on x86 with GCC or clang, once as
 * an AVX2+FMA copy (SUFFIX _avx2, vf = v8, TARGET = the target attribute); HAVE_AVX2 says whether the second
 * copy exists, and cpu_avx2_fma() whether this CPU may run it. No -march flag: the library runs anywhere. */
#ifndef PCSYM_SIMD_H
#define PCSYM_SIMD_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

/* VW floats as one value: 4 = one SSE/NEON register, 8 = one AVX register */
typedef float v4 __attribute__((vector_size(16), aligned(4), may_alias));
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));
#define LD(p) (*(const vf *)(p))
#define ST(p, v) (*(vf *)(p) = (v))

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2 1
#endif

/* 1 when this CPU runs the AVX2+FMA copies */
static inline int cpu_avx2_fma(void) {
#ifdef HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return 0;
#endif
}

#endif
