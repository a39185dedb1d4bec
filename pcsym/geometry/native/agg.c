/* The implicit kernel's neighbour aggregation (pcsym.models.fused.aggregate), forward and backward:
 *
 *   agg[n] = sum_j h[n, j]^T f[b(n), idx[n, j]]          (H x C per node n = (b, i); j over k neighbours)
 *
 * i.e. torch's gather of the neighbours' features followed by a batched (H x k) (k x C) matmul, without
 * materialising the gathered (B, M, k, C) tensor. Backward: dh = G f_j^T per edge and the scatter-add
 * df[idx] += h_j G, done one cloud per job in node order, so results do not depend on the thread count.
 * Float32, C-contiguous: h (B*M, k, H), f (B, N, C), idx (B, M, k) int64 in [0, N), agg and G (B*M, H, C),
 * dh like h, df like f (zeroed by the caller). With `cols` (P indices into the flattened H x C sum), agg and G
 * are (B*M, P): column p of agg is that entry of the sum (columns may repeat), and G's repeats add up.
 * Compiled twice (baseline and AVX2+FMA), picked at run time. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "threads.h"

typedef struct {
  const float *h, *f, *G;
  const int64_t *idx;
  float *agg, *dh, *df;
  int64_t M, N, k, H, C;
  const int64_t *cols; /* packed layout: P columns, as indices into the transposed (C x Hp) panel; or NULL */
  int64_t P;
} agg_t;

#define BODY "agg_body.h"
#include "twice.h"

typedef void (*range_fn)(const agg_t *, int64_t, int64_t, float *);

typedef struct {
  const agg_t *A;
  range_fn fn;
  int64_t b0, b1;  /* clouds of this job */
  int err;
} agg_job_t;

static void *agg_run(void *arg) {
  agg_job_t *J = (agg_job_t *)arg;
  const agg_t *A = J->A;
  const int64_t Hp = (A->H + 7) / 8 * 8, Cp = (A->C + 7) / 8 * 8; /* multiples of either vector width */
  /* h panel, G^T, G, out (floats; + 8 so the pointers after them are aligned), then 2 k row pointers */
  const size_t floats = (size_t)(A->k * Hp + A->C * Hp + A->H * Cp + A->k * (Hp > Cp ? Hp : Cp)) + 8;
  float *scratch = (float *)malloc(sizeof(float) * floats + 2 * sizeof(float *) * (size_t)A->k);
  if (!scratch) {
    J->err = 1;
    return NULL;
  }
  J->fn(A, J->b0 * A->M, J->b1 * A->M, scratch);
  free(scratch);
  return NULL;
}

/* backward when G is given (dh and/or df non-NULL), else forward into agg. isa 0: baseline loops.
 * Returns 0, 1 when out of memory, or 2 on bad sizes or an index out of range (checked before anything
 * is written). */
int pcsym_aggregate(const float *h, const float *f, const int64_t *idx, int64_t B, int64_t M, int64_t N, int64_t k,
                    int64_t H, int64_t C, const int64_t *cols, int64_t P, float *agg, const float *G, float *dh,
                    float *df, int threads, int isa) {
  if (B < 0 || M < 0 || N < 1 || k < 0 || H < 1 || C < 1 || (cols && P < 0)) return 2;
  for (int64_t e = 0; e < B * M * k; e++)
    if (idx[e] < 0 || idx[e] >= N) return 2;
  int64_t *padded = NULL;
  if (cols) { /* flat (a, c) -> the transposed panel's index c * Hp + a (Hp: H padded to 8) */
    const int64_t Hp = (H + 7) / 8 * 8;
    padded = (int64_t *)malloc(sizeof(int64_t) * (size_t)(P ? P : 1));
    if (!padded) return 1;
    for (int64_t p = 0; p < P; p++) {
      if (cols[p] < 0 || cols[p] >= H * C) {
        free(padded);
        return 2;
      }
      padded[p] = cols[p] % C * Hp + cols[p] / C;
    }
  }
  agg_t A = {h, f, G, idx, agg, dh, df, M, N, k, H, C, padded, P};
  range_fn fn = G ? bwd_base : fwd_base;
#ifdef HAVE_AVX2
  if (isa && cpu_avx2_fma()) fn = G ? bwd_avx2 : fwd_avx2;
#endif
  if (B == 0 || M == 0) {
    free(padded);
    return 0;
  }
  threads = clamp_threads(threads, B);
  agg_job_t jobs[64];
  for (int t = 0; t < threads; t++) jobs[t] = (agg_job_t){&A, fn, B * t / threads, B * (t + 1) / threads, 0};
  run_jobs(agg_run, jobs, sizeof(agg_job_t), threads);
  int err = 0;
  for (int t = 0; t < threads; t++) err |= jobs[t].err;
  free(padded);
  return err;
}
