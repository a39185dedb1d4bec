/* The per-node loops of agg.c, included there once per instruction set (SUFFIX, TARGET, vf = VW floats).
 * Each node's sums are three small matrix products, computed like a GEMM micro-kernel (4 rows x 3 vectors
 * of accumulators in registers, no horizontal sums):
 *   forward   out^T (C x Hp)  = sum_j f_j^T h_j        (f_j: the j-th neighbour's row)
 *   backward  dh (k x Hp)     = F (k x C) G^T (C x Hp)
 *             df rows (k x Cp) = h (k x H) G (H x Cp), added into df[idx_j]
 * Hp, Cp: H and C rounded up to 8 (a multiple of either vector width), zero-padded. */

/* the node's neighbour rows, and h_j padded to Hp (k x Hp) */
TARGET static void CAT(rows_and_h, SUFFIX)(const agg_t *A, int64_t n, int64_t Hp, const float **rows, float *hp) {
  const int64_t H = A->H, C = A->C, k = A->k;
  const float *f = A->f + (n / A->M) * A->N * C;
  const float *h = A->h + n * k * H;
  for (int64_t j = 0; j < k; j++) {
    rows[j] = f + A->idx[n * k + j] * C;
    memcpy(hp + j * Hp, h + j * H, sizeof(float) * (size_t)H);
    for (int64_t a = H; a < Hp; a++) hp[j * Hp + a] = 0.0f;
  }
}

/* out (R x W) row i = sum_{t < T} coef(i, t) X[t] for X (T x W), W a multiple of 8: coef(i, t) = rows[t][i]
 * (forward: t = neighbour, i = channel) or, transposed, rows[i][t]. Blocks of 4 rows x 3 vectors of
 * accumulators in registers; the rows and vectors left over one at a time. */
TARGET static void CAT(panel_product, SUFFIX)(int64_t R, int64_t T, int64_t W, const float *X,
                                              const float **rows, int transposed, float *restrict out) {
  for (int64_t a0 = 0; a0 < W; a0 += 3 * VW) {
    const int64_t nv = (W - a0) / VW < 3 ? (W - a0) / VW : 3;
    int64_t i = 0;
    if (nv == 3) {
      for (; i + 4 <= R; i += 4) {
        vf acc[4][3];
        for (int r = 0; r < 4; r++)
          for (int v = 0; v < 3; v++) acc[r][v] = (vf){0};
        if (transposed) {
          const float *p0 = rows[i], *p1 = rows[i + 1], *p2 = rows[i + 2], *p3 = rows[i + 3];
          for (int64_t t = 0; t < T; t++) {
            const float *x = X + t * W + a0;
            const vf x0 = LD(x), x1 = LD(x + VW), x2 = LD(x + 2 * VW);
            const float s[4] = {p0[t], p1[t], p2[t], p3[t]};
            for (int r = 0; r < 4; r++) {
              acc[r][0] += s[r] * x0;
              acc[r][1] += s[r] * x1;
              acc[r][2] += s[r] * x2;
            }
          }
        } else {
          for (int64_t t = 0; t < T; t++) {
            const float *x = X + t * W + a0, *q = rows[t] + i;
            const vf x0 = LD(x), x1 = LD(x + VW), x2 = LD(x + 2 * VW);
            for (int r = 0; r < 4; r++) {
              acc[r][0] += q[r] * x0;
              acc[r][1] += q[r] * x1;
              acc[r][2] += q[r] * x2;
            }
          }
        }
        for (int r = 0; r < 4; r++)
          for (int v = 0; v < 3; v++) ST(out + (i + r) * W + a0 + v * VW, acc[r][v]);
      }
    }
    for (; i < R; i++)
      for (int64_t v = 0; v < nv; v++) {
        vf acc = {0};
        if (transposed)
          for (int64_t t = 0; t < T; t++) acc += rows[i][t] * LD(X + t * W + a0 + v * VW);
        else
          for (int64_t t = 0; t < T; t++) acc += rows[t][i] * LD(X + t * W + a0 + v * VW);
        ST(out + i * W + a0 + v * VW, acc);
      }
  }
}

TARGET static void CAT(fwd, SUFFIX)(const agg_t *A, int64_t n0, int64_t n1, float *scratch) {
  const int64_t H = A->H, C = A->C, k = A->k, Hp = (H + 7) / 8 * 8;
  float *hp = scratch, *outT = hp + k * Hp;
  const float **rows = (const float **)(outT + C * Hp + 8);
  for (int64_t n = n0; n < n1; n++) {
    CAT(rows_and_h, SUFFIX)(A, n, Hp, rows, hp);
    CAT(panel_product, SUFFIX)(C, k, Hp, hp, rows, 0, outT);
    if (A->cols) { /* the packed layout: agg[n, p] = sum[cols[p]] (a column may appear in several groups) */
      float *restrict agg = A->agg + n * A->P;
      for (int64_t p = 0; p < A->P; p++) agg[p] = outT[A->cols[p]];
    } else {
      float *restrict agg = A->agg + n * H * C;
      for (int64_t a = 0; a < H; a++)
        for (int64_t c = 0; c < C; c++) agg[a * C + c] = outT[c * Hp + a];
    }
  }
}

/* dh and/or df; the nodes of one cloud in order (its rows of df are written by this job alone) */
TARGET static void CAT(bwd, SUFFIX)(const agg_t *A, int64_t n0, int64_t n1, float *scratch) {
  const int64_t H = A->H, C = A->C, k = A->k, Hp = (H + 7) / 8 * 8, Cp = (C + 7) / 8 * 8;
  float *hp = scratch, *gT = hp + k * Hp, *g = gT + C * Hp, *out = g + H * Cp;
  const float **rows = (const float **)(out + k * (Hp > Cp ? Hp : Cp) + 8), **hrows = rows + k;
  for (int64_t n = n0; n < n1; n++) {
    CAT(rows_and_h, SUFFIX)(A, n, Hp, rows, hp);
    memset(gT, 0, sizeof(float) * (size_t)(C * Hp));
    if (A->cols) { /* columns that appear in several groups sum their gradients */
      const float *G = A->G + n * A->P;
      for (int64_t p = 0; p < A->P; p++) gT[A->cols[p]] += G[p];
    } else {
      const float *G = A->G + n * H * C;
      for (int64_t a = 0; a < H; a++)
        for (int64_t c = 0; c < C; c++) gT[c * Hp + a] = G[a * C + c];
    }
    if (A->dh) {
      CAT(panel_product, SUFFIX)(k, C, Hp, gT, rows, 1, out);
      float *dh = A->dh + n * k * H;
      for (int64_t j = 0; j < k; j++) memcpy(dh + j * H, out + j * Hp, sizeof(float) * (size_t)H);
    }
    if (A->df) {
      for (int64_t a = 0; a < H; a++) { /* G (H x Cp), zero-padded */
        for (int64_t c = 0; c < C; c++) g[a * Cp + c] = gT[c * Hp + a];
        for (int64_t c = C; c < Cp; c++) g[a * Cp + c] = 0.0f;
      }
      for (int64_t j = 0; j < k; j++) hrows[j] = hp + j * Hp;
      CAT(panel_product, SUFFIX)(k, H, Cp, g, hrows, 1, out);
      float *df = A->df + (n / A->M) * A->N * C;
      for (int64_t j = 0; j < k; j++) {
        float *restrict d = df + A->idx[n * k + j] * C;
        const float *s = out + j * Cp;
        for (int64_t c = 0; c < C; c++) d[c] += s[c];
      }
    }
  }
}
