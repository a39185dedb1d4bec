/* k nearest neighbours of 3-D points, brute force, for pcsym.geometry.native (built on first use; see its docstring);
 * and farthest-point sampling (pcsym_fps, at the end of the file).
 *
 * For each query: squared distances to every key (exact (q-k)^2, float32, keys copied to a
 * structure-of-arrays buffer once per cloud so the loop vectorises), then one pass that keeps the k
 * smallest in a sorted array. After the first k keys, keys are tested 8 at a time against the current
 * k-th distance with vector compares (SSE2 on x86-64, plain C elsewhere); only blocks holding a closer
 * key reach the scalar insertion. Output is sorted nearest first; among equal distances the lower key
 * index comes first. Work is split over `threads` POSIX threads by contiguous ranges of (cloud, query).
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "threads.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct {
  const float *q, *keys;
  int64_t b, m, n, k, start, stop;
  int64_t *out;
  int err;
} job_t;

static inline void insert(float *bd, int64_t *bi, int64_t *cnt, int64_t k, float v, int64_t j) {
  int64_t p = *cnt < k ? (*cnt)++ : k - 1;
  while (p > 0 && bd[p - 1] > v) {
    bd[p] = bd[p - 1];
    bi[p] = bi[p - 1];
    p--;
  }
  bd[p] = v;
  bi[p] = j;
}

static inline int block_has_closer(const float *d, float worst) {
#if defined(__SSE2__)
  __m128 w = _mm_set1_ps(worst);
  return _mm_movemask_ps(_mm_cmplt_ps(_mm_loadu_ps(d), w)) | _mm_movemask_ps(_mm_cmplt_ps(_mm_loadu_ps(d + 4), w));
#else
  int any = 0;
  for (int t = 0; t < 8; t++) any |= d[t] < worst;
  return any;
#endif
}

static inline uint32_t spread10(uint32_t v) { /* 10 bits -> every third bit of 30 */
  v &= 0x3ff;
  v = (v | (v << 16)) & 0x030000ff;
  v = (v | (v << 8)) & 0x0300f00f;
  v = (v | (v << 4)) & 0x030c30c3;
  v = (v | (v << 2)) & 0x09249249;
  return v;
}

typedef struct {
  float lo[3], scale[3];
} box_t;

static inline uint32_t morton(const box_t *B, float x, float y, float z) {
  const float p[3] = {x, y, z};
  uint32_t c[3];
  for (int a = 0; a < 3; a++) {
    float u = (p[a] - B->lo[a]) * B->scale[a];
    c[a] = u > 0.0f ? (u < 1023.0f ? (uint32_t)u : 1023u) : 0u; /* NaN -> 0 */
  }
  return spread10(c[0]) | (spread10(c[1]) << 1) | (spread10(c[2]) << 2);
}

static int cmp_u64(const void *a, const void *b) {
  const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static void *run(void *arg) {
  job_t *J = (job_t *)arg;
  const int64_t n = J->n, k = J->k;
  float *buf = (float *)malloc(sizeof(float) * (size_t)(4 * n + 8 + k));
  int64_t *bi = (int64_t *)malloc(sizeof(int64_t) * (size_t)k);
  uint64_t *order = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)n);
  if (!buf || !bi || !order) {
    J->err = 1;
    free(buf);
    free(bi);
    free(order);
    return NULL;
  }
  float *restrict kx = buf, *restrict ky = buf + n, *restrict kz = buf + 2 * n, *restrict d = buf + 3 * n;
  float *bd = buf + 4 * n + 8;
  box_t box;
  int64_t cloud = -1;
  for (int64_t r = J->start; r < J->stop; r++) {
    const int64_t c = r / J->m;
    if (c != cloud) { /* this cloud's keys in Morton (space-filling curve) order, as structure of arrays */
      const float *kc = J->keys + c * n * 3;
      for (int a = 0; a < 3; a++) {
        float lo = FLT_MAX, hi = -FLT_MAX;
        for (int64_t j = 0; j < n; j++) {
          const float v = kc[3 * j + a];
          lo = v < lo ? v : lo;
          hi = v > hi ? v : hi;
        }
        box.lo[a] = lo;
        box.scale[a] = hi > lo ? 1023.0f / (hi - lo) : 0.0f;
      }
      for (int64_t j = 0; j < n; j++)
        order[j] = ((uint64_t)morton(&box, kc[3 * j], kc[3 * j + 1], kc[3 * j + 2]) << 32) | (uint64_t)j;
      qsort(order, (size_t)n, sizeof(uint64_t), cmp_u64);
      for (int64_t s = 0; s < n; s++) {
        const int64_t j = (int64_t)(order[s] & 0xffffffffu);
        kx[s] = kc[3 * j];
        ky[s] = kc[3 * j + 1];
        kz[s] = kc[3 * j + 2];
      }
      cloud = c;
    }
    const float qx = J->q[3 * r], qy = J->q[3 * r + 1], qz = J->q[3 * r + 2];
    for (int64_t s = 0; s < n; s++) {
      const float a = kx[s] - qx, b = ky[s] - qy, e = kz[s] - qz;
      d[s] = a * a + b * b + e * e;
    }
    /* seed with the keys around the query on the curve (mostly close in space: a tight bound at once),
       then scan the rest 8 at a time against the current k-th distance */
    const uint64_t code = (uint64_t)morton(&box, qx, qy, qz) << 32;
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (order[mid] < code) lo = mid + 1; else hi = mid;
    }
    const int64_t w = 2 * k < n ? 2 * k : n;
    int64_t w0 = lo - k;
    w0 = w0 < 0 ? 0 : (w0 > n - w ? n - w : w0);
    const int64_t w1 = w0 + w;
    int64_t cnt = 0;
    for (int64_t s = w0; s < w1; s++)
      if (cnt < k || d[s] < bd[k - 1]) insert(bd, bi, &cnt, k, d[s], s);
    for (int pass = 0; pass < 2; pass++) {
      int64_t s = pass ? w1 : 0;
      const int64_t stop = pass ? n : w0;
      for (; s + 8 <= stop; s += 8) {
        if (!block_has_closer(d + s, bd[k - 1])) continue;
        for (int64_t t = s; t < s + 8; t++)
          if (d[t] < bd[k - 1]) insert(bd, bi, &cnt, k, d[t], t);
      }
      for (; s < stop; s++)
        if (d[s] < bd[k - 1]) insert(bd, bi, &cnt, k, d[s], s);
    }
    int64_t *o = J->out + r * k;
    for (int64_t t = 0; t < k; t++) o[t] = (int64_t)(order[bi[t]] & 0xffffffffu);
  }
  free(buf);
  free(bi);
  free(order);
  return NULL;
}

/* q (b, m, 3), keys (b, n, 3): float32, C-contiguous; out (b, m, k) int64. 1 <= k <= n.
 * Returns 0 on success, non-zero when memory or threads ran out (out is then incomplete). */
int pcsym_knn(const float *q, const float *keys, int64_t b, int64_t m, int64_t n, int64_t k, int64_t *out,
              int threads) {
  if (k < 1 || k > n || m < 0 || b < 0) return 2;
  const int64_t rows = b * m;
  if (rows == 0) return 0;
  threads = clamp_threads(threads, rows);
  job_t jobs[64];
  int err = 0;
  for (int t = 0; t < threads; t++) {
    jobs[t] = (job_t){q, keys, b, m, n, k, rows * t / threads, rows * (t + 1) / threads, out, 0};
  }
  run_jobs(run, jobs, sizeof(job_t), threads);
  for (int t = 0; t < threads; t++) err |= jobs[t].err;
  return err;
}

/* Farthest-point sampling (pcsym.geometry.graph.fps_order / pcsym.geometry.numpy_graph.fps_order, whose loop this is): per cloud, m
 * picks from start[c]; a point's distance to the picked set is the running minimum of its squared distances,
 * each spelled as in those functions, (dx*dx + dy*dy) + dz*dz in float32 (this file is built without FMA
 * contraction, -std=c99), so the same points are picked; a picked point's distance is set to -1 (never picked
 * twice, even among duplicates) and the next pick is the first point of largest distance. Non-finite input is
 * the caller's to refuse (their NaN rules are not copied here). */
typedef struct {
  const float *pos;
  const int64_t *start;
  int64_t n, m, c0, c1;
  int64_t *out;
  int err;
} fps_job_t;

static void *fps_run(void *arg) {
  fps_job_t *J = (fps_job_t *)arg;
  const int64_t n = J->n, m = J->m;
  float *buf = (float *)malloc(sizeof(float) * (size_t)(4 * n));
  if (!buf) {
    J->err = 1;
    return NULL;
  }
  float *restrict x = buf, *restrict y = buf + n, *restrict z = buf + 2 * n, *restrict dist = buf + 3 * n;
  for (int64_t c = J->c0; c < J->c1; c++) {
    const float *p = J->pos + c * n * 3;
    for (int64_t j = 0; j < n; j++) {
      x[j] = p[3 * j];
      y[j] = p[3 * j + 1];
      z[j] = p[3 * j + 2];
      dist[j] = INFINITY;
    }
    int64_t cur = J->start[c], *o = J->out + c * m;
    for (int64_t i = 0; i < m; i++) {
      o[i] = cur;
      const float cx = x[cur], cy = y[cur], cz = z[cur];
      for (int64_t j = 0; j < n; j++) {
        const float a = x[j] - cx, b = y[j] - cy, e = z[j] - cz;
        float d = a * a + b * b;
        d += e * e;
        dist[j] = d < dist[j] ? d : dist[j];
      }
      dist[cur] = -1.0f;
      float best = dist[0];
      int64_t arg = 0;
      for (int64_t j = 1; j < n; j++)
        if (dist[j] > best) {
          best = dist[j];
          arg = j;
        }
      cur = arg;
    }
  }
  free(buf);
  return NULL;
}

/* pos (b, n, 3) float32, start (b) int64 in [0, n), out (b, m) int64, 0 <= m <= n. Returns 0, 1 when out of
 * memory, 2 on bad sizes or a start out of range. Threads: contiguous ranges of clouds. */
int pcsym_fps(const float *pos, const int64_t *start, int64_t b, int64_t n, int64_t m, int64_t *out, int threads) {
  if (b < 0 || n < 1 || m < 0 || m > n) return 2;
  for (int64_t c = 0; c < b; c++)
    if (start[c] < 0 || start[c] >= n) return 2;
  if (b == 0 || m == 0) return 0;
  threads = clamp_threads(threads, b);
  fps_job_t jobs[64];
  int err = 0;
  for (int t = 0; t < threads; t++) jobs[t] = (fps_job_t){pos, start, n, m, b * t / threads, b * (t + 1) / threads, out, 0};
  run_jobs(fps_run, jobs, sizeof(fps_job_t), threads);
  for (int t = 0; t < threads; t++) err |= jobs[t].err;
  return err;
}
