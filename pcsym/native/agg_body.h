/* The per-node loops of agg.c, included there once per instruction set (SUFFIX, TARGET, vf = VW floats).
 * Each node's k neighbour rows are copied into a zero-padded (k x Cp) panel (Cp = C rounded up to 8),
 * so every product below is a small register-blocked matrix product over whole vectors. */

TARGET static inline float CAT(hsum, SUFFIX)(vf v) {
  float s = 0.0f;
  for (int i = 0; i < VW; i++) s += v[i];
  return s;
}

/* the node's neighbour rows f[idx_j] -> panel (k x Cp), zero-padded */
TARGET static void CAT(pack, SUFFIX)(const agg_t *A, int64_t n, int64_t Cp, float *restrict panel) {
  const int64_t C = A->C, k = A->k;
  const float *f = A->f + (n / A->M) * A->N * C;
  for (int64_t j = 0; j < k; j++) {
    memcpy(panel + j * Cp, f + A->idx[n * k + j] * C, sizeof(float) * (size_t)C);
    for (int64_t c = C; c < Cp; c++) panel[j * Cp + c] = 0.0f;
  }
}

/* agg[n] (H x C) = h_n^T (H x k) . panel (k x C), four rows of agg at a time */
TARGET static void CAT(fwd, SUFFIX)(const agg_t *A, int64_t n0, int64_t n1, float *scratch) {
  const int64_t H = A->H, C = A->C, k = A->k, Cp = (C + 7) / 8 * 8; /* a multiple of either vector width */
  float *panel = scratch, *out = scratch + k * Cp;
  for (int64_t n = n0; n < n1; n++) {
    CAT(pack, SUFFIX)(A, n, Cp, panel);
    const float *h = A->h + n * k * H;
    for (int64_t c = 0; c < Cp; c += VW) {
      int64_t a = 0;
      for (; a + 4 <= H; a += 4) {
        vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
        for (int64_t j = 0; j < k; j++) {
          const vf x = LD(panel + j * Cp + c);
          const float *hj = h + j * H + a;
          s0 += hj[0] * x;
          s1 += hj[1] * x;
          s2 += hj[2] * x;
          s3 += hj[3] * x;
        }
        ST(out + a * Cp + c, s0);
        ST(out + (a + 1) * Cp + c, s1);
        ST(out + (a + 2) * Cp + c, s2);
        ST(out + (a + 3) * Cp + c, s3);
      }
      for (; a < H; a++) {
        vf s = {0};
        for (int64_t j = 0; j < k; j++) s += h[j * H + a] * LD(panel + j * Cp + c);
        ST(out + a * Cp + c, s);
      }
    }
    if (A->cols) { /* the packed layout: agg[n, p] = sum[cols[p]] (a column may appear in several groups) */
      float *restrict agg = A->agg + n * A->P;
      for (int64_t p = 0; p < A->P; p++) agg[p] = out[A->cols[p]];
    } else {
      float *agg = A->agg + n * H * C;
      for (int64_t a = 0; a < H; a++) memcpy(agg + a * C, out + a * Cp, sizeof(float) * (size_t)C);
    }
  }
}

/* dh[n, j, a] = G_n[a] . f_j (dot over C); df[idx_j] += sum_a h[n, j, a] G_n[a]. The nodes of one cloud
 * in order: its rows of df are written by this job alone. */
TARGET static void CAT(bwd, SUFFIX)(const agg_t *A, int64_t n0, int64_t n1, float *scratch) {
  const int64_t H = A->H, C = A->C, k = A->k, Cp = (C + 7) / 8 * 8; /* a multiple of either vector width */
  float *panel = scratch, *g = scratch + k * Cp, *row = g + H * Cp;
  for (int64_t n = n0; n < n1; n++) {
    if (A->cols) { /* the packed layout: columns that appear in several groups sum their gradients */
      const float *G = A->G + n * A->P;
      memset(g, 0, sizeof(float) * (size_t)(H * Cp));
      for (int64_t p = 0; p < A->P; p++) g[A->cols[p]] += G[p];
    } else {
      const float *G = A->G + n * H * C;
      for (int64_t a = 0; a < H; a++) {
        memcpy(g + a * Cp, G + a * C, sizeof(float) * (size_t)C);
        for (int64_t c = C; c < Cp; c++) g[a * Cp + c] = 0.0f;
      }
    }
    const float *h = A->h + n * k * H;
    if (A->dh) {
      CAT(pack, SUFFIX)(A, n, Cp, panel);
      float *dh = A->dh + n * k * H;
      for (int64_t j = 0; j < k; j++) {
        const float *x = panel + j * Cp;
        int64_t a = 0;
        for (; a + 4 <= H; a += 4) {
          vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
          for (int64_t c = 0; c < Cp; c += VW) {
            const vf xv = LD(x + c);
            s0 += LD(g + a * Cp + c) * xv;
            s1 += LD(g + (a + 1) * Cp + c) * xv;
            s2 += LD(g + (a + 2) * Cp + c) * xv;
            s3 += LD(g + (a + 3) * Cp + c) * xv;
          }
          dh[j * H + a] = CAT(hsum, SUFFIX)(s0);
          dh[j * H + a + 1] = CAT(hsum, SUFFIX)(s1);
          dh[j * H + a + 2] = CAT(hsum, SUFFIX)(s2);
          dh[j * H + a + 3] = CAT(hsum, SUFFIX)(s3);
        }
        for (; a < H; a++) {
          vf s = {0};
          for (int64_t c = 0; c < Cp; c += VW) s += LD(g + a * Cp + c) * LD(x + c);
          dh[j * H + a] = CAT(hsum, SUFFIX)(s);
        }
      }
    }
    if (A->df) {
      float *df = A->df + (n / A->M) * A->N * C;
      for (int64_t j = 0; j < k; j++) {
        const float *hj = h + j * H;
        for (int64_t c = 0; c < Cp; c += VW) {
          vf s = {0};
          for (int64_t a = 0; a < H; a++) s += hj[a] * LD(g + a * Cp + c);
          ST(row + c, s);
        }
        float *restrict d = df + A->idx[n * k + j] * C;
        for (int64_t c = 0; c < C; c++) d[c] += row[c];
      }
    }
  }
}
