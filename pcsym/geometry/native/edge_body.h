/* The per-block work of edge.c, included there once per instruction set (SUFFIX, TARGET): plain C
 * loops over BL edges held as structure of arrays (row c of a buffer = feature c of the block's edges),
 * which the compiler vectorises for the target it is compiled for. */

TARGET static inline float CAT(fexp, SUFFIX)(float x) {
  /* e^x, Cephes' expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial; relative error ~1e-7.
     Rounding by the 1.5 * 2^23 trick and the exponent by integer bits, so a loop of it vectorises. */
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float n = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* the embedding of the block's edges into x (d0 rows): 1, Y_1 .. Y_lmax, radial Gaussians, edge features */
TARGET static void CAT(embed, SUFFIX)(const net_t *N, const float *rel, const float *edge, int64_t e0, int64_t n,
                                      float *restrict x) {
  float r[3][BL], rad[BL];
  for (int q = 0; q < 3; q++)
    for (int b = 0; b < BL; b++) r[q][b] = b < n ? rel[(e0 + b) * 3 + q] : 0.0f;
  for (int b = 0; b < BL; b++) x[b] = 1.0f;
  int64_t off = 1;
  if (N->lmax >= 1) {
    const float *cob = N->cob;
    for (int p = 0; p < 3; p++) {
      float *restrict row = x + (1 + p) * BL;
      for (int b = 0; b < BL; b++) row[b] = cob[p * 3] * r[0][b] + cob[p * 3 + 1] * r[1][b] + cob[p * 3 + 2] * r[2][b];
    }
    cob += 9;
    int64_t prev = 1, size = 3;
    off = 4;
    for (int64_t l = 2; l <= N->lmax; l++) { /* Y_l = C_l (Y_{l-1} (x) Y_1) */
      const int64_t m = 2 * l + 1, s = size * 3;
      for (int64_t o = 0; o < m; o++) {
        float *restrict row = x + (off + o) * BL;
        for (int b = 0; b < BL; b++) row[b] = 0.0f;
        for (int64_t p = 0; p < size; p++)
          for (int q = 0; q < 3; q++) {
            const float c = cob[o * s + p * 3 + q];
            if (c == 0.0f) continue;
            const float *pp = x + (prev + p) * BL, *fq = x + (1 + q) * BL;
            for (int b = 0; b < BL; b++) row[b] += c * (pp[b] * fq[b]);
          }
      }
      cob += m * s;
      prev = off;
      size = m;
      off += m;
    }
  }
  for (int b = 0; b < BL; b++) rad[b] = sqrtf(r[0][b] * r[0][b] + r[1][b] * r[1][b] + r[2][b] * r[2][b]);
  for (int64_t c = 0; c < N->n_radial; c++) {
    float *restrict row = x + (off + c) * BL;
    const float centre = N->centres[c], w = N->inv_width;
    for (int b = 0; b < BL; b++) {
      const float t = (rad[b] - centre) * w;
      row[b] = CAT(fexp, SUFFIX)(-(t * t));
    }
  }
  off += N->n_radial;
  for (int64_t t = 0; t < N->n_edge; t++) {
    float *restrict row = x + (off + t) * BL;
    for (int b = 0; b < BL; b++) row[b] = b < n ? edge[(e0 + b) * N->n_edge + t] : 0.0f;
  }
}

/* one equivariant linear layer and its nonlinearity: z = W x + b, then ELU on scalar channels and
   z_c * sigmoid(gate) on gated ones (sig: the gates' sigmoids) */
TARGET static void CAT(layer, SUFFIX)(const net_t *N, int l, const float *restrict x, float *restrict z,
                                      float *restrict a, float *restrict sig) {
  const int64_t in = N->in[l], pre = N->pre[l], act = N->act[l];
  const float *W = N->W[l], *B = N->b[l];
  const int32_t *chan = N->chan[l];
  for (int64_t o = 0; o < pre; o++) {
    vf acc[NV];
    const float bias = B ? B[o] : 0.0f;
    for (int v = 0; v < NV; v++) acc[v] = bias - (vf){0};
    for (int64_t i = 0; i < in; i++) {
      const float w = W[o * in + i];
      const float *xi = x + i * BL;
      for (int v = 0; v < NV; v++) acc[v] += w * LD(xi + v * VW);
    }
    for (int v = 0; v < NV; v++) ST(z + o * BL + v * VW, acc[v]);
  }
  for (int64_t g = 0; g < pre - act; g++) {
    const float *zg = z + (act + g) * BL;
    float *restrict sg = sig + g * BL;
    for (int b = 0; b < BL; b++) sg[b] = 1.0f / (1.0f + CAT(fexp, SUFFIX)(-zg[b]));
  }
  for (int64_t c = 0; c < act; c++) {
    const float *zc = z + c * BL;
    float *restrict ac = a + c * BL;
    if (chan[c] < 0) {
      for (int b = 0; b < BL; b++) ac[b] = zc[b] > 0.0f ? zc[b] : CAT(fexp, SUFFIX)(zc[b]) - 1.0f;
    } else {
      const float *sg = sig + chan[c] * BL;
      for (int b = 0; b < BL; b++) ac[b] = zc[b] * sg[b];
    }
  }
}

/* edges [e0, e0 + n): forward into h, or (dh given) backward: parameter gradients added to lanes */
TARGET static void CAT(block, SUFFIX)(const net_t *N, const float *rel, const float *edge, int64_t e0, int64_t n,
                                      float *h, const float *dh, float *ws, float *lanes) {
  const int64_t L = N->n_layers, H = N->h_size;
  float *x[MAXL + 1], *z[MAXL], *sig[MAXL];
  float *p = ws;
  x[0] = p;
  p += N->in[0] * BL;
  for (int64_t l = 0; l < L; l++) {
    z[l] = p;
    p += N->pre[l] * BL;
    sig[l] = p;
    p += (N->pre[l] - N->act[l]) * BL;
    x[l + 1] = p;
    p += N->act[l] * BL;
  }
  CAT(embed, SUFFIX)(N, rel, edge, e0, n, x[0]);
  for (int64_t l = 0; l < L; l++) CAT(layer, SUFFIX)(N, (int)l, x[l], z[l], x[l + 1], sig[l]);
  const int64_t last = N->act[L - 1];
  if (dh == NULL) {
    for (int64_t b = 0; b < n; b++) {
      float *hb = h + (e0 + b) * H;
      for (int64_t c = 0; c < last; c++) hb[c] = x[L][c * BL + b];
      hb[last] = 1.0f;
    }
    return;
  }
  float *g = p, *g2 = p + N->maxw * BL, *dz = p + 2 * N->maxw * BL;
  for (int64_t c = 0; c < last; c++)
    for (int b = 0; b < BL; b++) g[c * BL + b] = b < n ? dh[(e0 + b) * H + c] : 0.0f;
  float *lane = lanes;
  for (int64_t l = 0; l < L; l++) lane += (N->pre[l] * N->in[l] + N->pre[l]) * 8;
  for (int64_t l = L - 1; l >= 0; l--) {
    const int64_t in = N->in[l], pre = N->pre[l], act = N->act[l];
    const int32_t *chan = N->chan[l];
    const float *zl = z[l], *sl = sig[l], *xl = x[l];
    lane -= (pre * in + pre) * 8;
    for (int64_t c = act; c < pre; c++)
      for (int b = 0; b < BL; b++) dz[c * BL + b] = 0.0f;
    for (int64_t c = 0; c < act; c++) {
      const float *gc = g + c * BL, *zc = zl + c * BL;
      float *restrict dc = dz + c * BL;
      if (chan[c] < 0) {
        for (int b = 0; b < BL; b++) dc[b] = zc[b] > 0.0f ? gc[b] : gc[b] * CAT(fexp, SUFFIX)(zc[b]);
      } else {
        const float *sg = sl + chan[c] * BL;
        float *restrict dg = dz + (act + chan[c]) * BL;
        for (int b = 0; b < BL; b++) {
          dc[b] = gc[b] * sg[b];
          dg[b] += gc[b] * zc[b];
        }
      }
    }
    for (int64_t c = act; c < pre; c++) {
      const float *sg = sl + (c - act) * BL;
      float *restrict dc = dz + c * BL;
      for (int b = 0; b < BL; b++) dc[b] *= sg[b] * (1.0f - sg[b]);
    }
    for (int64_t o = 0; o < pre; o++) { /* dW += dz x^T, db += dz: 8 partial sums per entry */
      const float *d = dz + o * BL;
      vf dv[NV], db[8 / VW] = {0};
      for (int v = 0; v < NV; v++) dv[v] = LD(d + v * VW);
      for (int64_t i = 0; i < in; i++) {
        const float *xi = xl + i * BL;
        float *acc = lane + (o * in + i) * 8;
        vf sum[8 / VW] = {0};
        for (int v = 0; v < NV; v++) sum[v % (8 / VW)] += dv[v] * LD(xi + v * VW);
        for (int u = 0; u < 8 / VW; u++) ST(acc + u * VW, LD(acc + u * VW) + sum[u]);
      }
      for (int v = 0; v < NV; v++) db[v % (8 / VW)] += dv[v];
      float *acc = lane + (pre * in + o) * 8;
      for (int u = 0; u < 8 / VW; u++) ST(acc + u * VW, LD(acc + u * VW) + db[u]);
    }
    if (l == 0) break;
    const float *W = N->W[l];
    for (int64_t i = 0; i < in; i++) { /* the gradient of this layer's input: W^T dz */
      vf acc[NV];
      for (int v = 0; v < NV; v++) acc[v] = (vf){0};
      for (int64_t o = 0; o < pre; o++) {
        const float w = W[o * in + i];
        const float *d = dz + o * BL;
        for (int v = 0; v < NV; v++) acc[v] += w * LD(d + v * VW);
      }
      for (int v = 0; v < NV; v++) ST(g2 + i * BL + v * VW, acc[v]);
    }
    float *t = g;
    g = g2;
    g2 = t;
  }
}
