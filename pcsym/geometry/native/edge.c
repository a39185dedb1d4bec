/* The implicit kernel's per-edge MLP, fused, forward and backward, for pcsym.geometry.native (see its docstring).
 *
 * For every edge: the harmonic embedding of its relative position (1, Y_1 .. Y_lmax by the recursion
 * Y_l = C_l (Y_{l-1} (x) Y_1), Gaussian radial features, invariant edge features), then each layer's
 * z = W x + b with ELU on scalar channels and z * sigmoid(gate) on gated ones; h = (last activation, 1).
 * The same maths as pcsym.models.layers (HarmonicEmbedding, EquivLinear with expanded W, FieldNonlinearity)
 * without the dozens of (edges x width) temporaries torch writes and reads back. The backward pass
 * recomputes the forward per block of edges (nothing is stored between the passes) and returns only the
 * parameter gradients: positions and edge features never need one in training.
 * Edges go BL at a time in structure-of-arrays buffers; x86-64 gets an AVX2+FMA copy of the loops chosen
 * at run time when the CPU has them (the SSE2 copy otherwise). Threads: contiguous ranges of blocks; the
 * backward pass sums each thread's partial gradients in a fixed order.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"
#include "threads.h"

#define BL 32
#define MAXL 8
#define NV (BL / VW)

typedef struct {
  int64_t lmax, n_radial, n_edge, n_layers, h_size, maxw;
  int64_t in[MAXL], pre[MAXL], act[MAXL];
  const float *cob, *centres;
  float inv_width;
  const float *W[MAXL], *b[MAXL];
  const int32_t *chan[MAXL];
} net_t;

#define BODY "edge_body.h"
#include "twice.h"

typedef void (*block_fn)(const net_t *, const float *, const float *, int64_t, int64_t, float *, const float *,
                         float *, float *);

typedef struct {
  const net_t *N;
  const float *rel, *edge, *dh;
  float *h;
  int64_t e, start, stop; /* blocks [start, stop) */
  block_fn fn;
  float *lanes;
  int err;
} job_t;

static int64_t lane_count(const net_t *N) {
  int64_t s = 0;
  for (int64_t l = 0; l < N->n_layers; l++) s += (N->pre[l] * N->in[l] + N->pre[l]) * 8;
  return s;
}

static void *run(void *arg) {
  job_t *J = (job_t *)arg;
  const net_t *N = J->N;
  int64_t ws = N->in[0];
  for (int64_t l = 0; l < N->n_layers; l++) ws += 2 * N->pre[l];
  ws = (ws + 3 * N->maxw) * BL;
  float *buf = (float *)malloc(sizeof(float) * (size_t)ws);
  if (!buf) {
    J->err = 1;
    return NULL;
  }
  for (int64_t s = J->start; s < J->stop; s++) {
    const int64_t e0 = s * BL, n = J->e - e0 < BL ? J->e - e0 : BL;
    J->fn(N, J->rel, J->edge, e0, n, J->h, J->dh, buf, J->lanes);
  }
  free(buf);
  return NULL;
}

/* 1 when this CPU runs the AVX2+FMA copy of the loops */
int pcsym_edge_isa(void) { return cpu_avx2_fma(); }

static block_fn pick(void) {
#ifdef HAVE_AVX2
  if (pcsym_edge_isa()) return block_avx2;
#endif
  return block_base;
}

/* meta: lmax, n_radial, n_edge, n_layers, then (in, pre, act) per layer. cob: C_1 (3x3), C_2 (5x9), ...
 * row-major, concatenated; centres (n_radial); W[l] (pre x in) row-major, b[l] (pre) or NULL;
 * chan[l] (act): -1 for an ELU channel, else the index of its gate (column act + chan of z).
 * isa 0: the baseline loops even where AVX2 is available (tests); else the best this CPU runs.
 * rel (e, 3), edge (e, n_edge) or NULL. Forward (dh NULL): h (e, act_last + 1). Backward: grads =
 * per layer dW (pre x in) then db (pre), overwritten. Returns 0, or non-zero on bad sizes or no memory. */
int pcsym_edge_mlp(const int64_t *meta, const float *cob, const float *centres, float inv_width, const float **W,
                   const float **B, const int32_t **chan, const float *rel, const float *edge, int64_t e, float *h,
                   const float *dh, float *grads, int threads, int isa) {
  net_t N;
  memset(&N, 0, sizeof N);
  N.lmax = meta[0];
  N.n_radial = meta[1];
  N.n_edge = meta[2];
  N.n_layers = meta[3];
  if (N.n_layers < 1 || N.n_layers > MAXL || N.lmax < 0 || e < 0) return 2;
  N.cob = cob;
  N.centres = centres;
  N.inv_width = inv_width;
  int64_t d0 = 1 + N.n_radial + N.n_edge;
  for (int64_t l = 1; l <= N.lmax; l++) d0 += 2 * l + 1;
  for (int64_t l = 0; l < N.n_layers; l++) {
    N.in[l] = meta[4 + 3 * l];
    N.pre[l] = meta[5 + 3 * l];
    N.act[l] = meta[6 + 3 * l];
    if (N.in[l] != (l ? N.act[l - 1] : d0) || N.act[l] > N.pre[l] || N.act[l] < 1) return 2;
    N.W[l] = W[l];
    N.b[l] = B[l];
    N.chan[l] = chan[l];
    N.maxw = N.pre[l] > N.maxw ? N.pre[l] : N.maxw;
    N.maxw = N.in[l] > N.maxw ? N.in[l] : N.maxw;
  }
  N.h_size = N.act[N.n_layers - 1] + 1;
  block_fn fn = isa == 0 ? block_base : pick();
  const int64_t blocks = (e + BL - 1) / BL;
  if (blocks == 0) {
    if (dh) memset(grads, 0, sizeof(float) * (size_t)(lane_count(&N) / 8));
    return 0;
  }
  threads = clamp_threads(threads, blocks);
  const int64_t nl = dh ? lane_count(&N) : 0;
  float *lanes = dh ? (float *)calloc((size_t)(nl * threads), sizeof(float)) : NULL;
  if (dh && !lanes) return 1;
  job_t jobs[64];
  int err = 0;
  for (int t = 0; t < threads; t++)
    jobs[t] = (job_t){&N, rel, edge, dh, h, e, blocks * t / threads, blocks * (t + 1) / threads, fn,
                      dh ? lanes + nl * t : NULL, 0};
  run_jobs(run, jobs, sizeof(job_t), threads);
  for (int t = 0; t < threads; t++) err |= jobs[t].err;
  if (dh && !err) {
    for (int64_t j = 0; j < nl / 8; j++) {
      float s = 0.0f;
      for (int t = 0; t < threads; t++) {
        const float *v = lanes + nl * t + j * 8;
        s += ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
      }
      grads[j] = s;
    }
  }
  free(lanes);
  return err;
}
