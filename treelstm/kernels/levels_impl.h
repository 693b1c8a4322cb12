/* The fused Tree-LSTM level loops, forward and backward, for one real type.
 *
 * Included twice by levels.c, with T = float / double, SUF = f32 / f64, SIGM and TANH the
 * activations and BLAS_GEMM the Fortran-interface gemm of that type. Each exported function
 * runs a whole loop over the levels: per level, the matmuls through U (the BLAS torch itself
 * uses, or a direct loop for the few-row levels near the roots) and one pass over the level's
 * rows for everything else -- activations, cell state, the gates' local derivatives, the
 * forget gates, and moving rows between parents and children.
 *
 * Layouts (row-major, rows of the level are contiguous, `lda` is a row's stride):
 *   act  [n, lda]  pre-activations [i, (o), u] (Child-Sum; lda = m*H) or
 *                  [i, (o), u, f_1..f_K] (N-ary; lda = m*H + K*H), overwritten in place:
 *                  the i and o blocks become dc -> d i-pre and dh -> d o-pre factors (the u
 *                  block is left as it was), the f blocks become the forget gates.
 *   ku, kc [n, H]  d u-pre / dc = i (1 - u^2) and dh -> dc = o (1 - tanh^2 c).
 * Index arrays are int64; row `none` (N, or M*K for child slots) is a dummy row.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUF)

/* One row: activations -> c, h and the factors (ku, kc NULL: states only). fc may be NULL (no
 * children). */
static inline void FN(row_fwd)(T *restrict a, const T *restrict fc, T *restrict c,
                               T *restrict h, T *restrict ku, T *restrict kc, int64_t H, int og)
{
    const int64_t nm = og ? 3 * H : 2 * H;
    T *restrict ai = a;
    T *restrict ao = a + H;
    T *restrict au = a + nm - H;
    if (!ku) { /* no gradient wanted: states only */
        for (int64_t t = 0; t < H; t++) {
            T cc = SIGM(ai[t]) * TANH(au[t]) + (fc ? fc[t] : (T)0);
            T tc = TANH(cc);
            c[t] = cc;
            h[t] = og ? SIGM(ao[t]) * tc : tc;
        }
        return;
    }
    if (og) {
        for (int64_t t = 0; t < H; t++) {
            T i = SIGM(ai[t]), o = SIGM(ao[t]), u = TANH(au[t]);
            T cc = i * u + (fc ? fc[t] : (T)0);
            T tc = TANH(cc);
            c[t] = cc;
            h[t] = o * tc;
            kc[t] = o * ((T)1 - tc * tc);
            ao[t] = o * ((T)1 - o) * tc;
            ku[t] = i * ((T)1 - u * u);
            ai[t] = i * ((T)1 - i) * u;
        }
    } else {
        for (int64_t t = 0; t < H; t++) {
            T i = SIGM(ai[t]), u = TANH(au[t]);
            T cc = i * u + (fc ? fc[t] : (T)0);
            T tc = TANH(cc);
            c[t] = cc;
            h[t] = tc;
            kc[t] = (T)1 - tc * tc;
            ku[t] = i * ((T)1 - u * u);
            ai[t] = i * ((T)1 - i) * u;
        }
    }
}

/* One row of the gate backward: dct = dc + dh kc, d pre-activations [i, (o), u]. */
static inline void FN(row_bwd)(const T *restrict k, const T *restrict ku, const T *restrict kc,
                               const T *restrict dh, const T *restrict dc, T *restrict da,
                               T *restrict dct, int64_t H, int og)
{
    const int64_t nm = og ? 3 * H : 2 * H;
    for (int64_t t = 0; t < H; t++) {
        T d = dc[t] + dh[t] * kc[t];
        dct[t] = d;
        da[t] = d * k[t];
        da[nm - H + t] = d * ku[t];
    }
    if (og)
        for (int64_t t = 0; t < H; t++)
            da[H + t] = dh[t] * k[H + t];
}

/* ---------------------------------------------------------------------------- Child-Sum */

/* Forward gates of n nodes. act [n, m*H]; fc [n, H] or NULL; c, h, ku, kc [n, H] (ku, kc
 * NULL: states only). */
static void FN(cs_gates_fwd)(T *restrict act, const T *restrict fc, T *restrict c,
                             T *restrict h, T *restrict ku, T *restrict kc, int64_t n,
                             int64_t H, int og)
{
    const int64_t nm = og ? 3 * H : 2 * H;
    PARALLEL_ROWS
    for (int64_t j = 0; j < n; j++)
        FN(row_fwd)(act + j * nm, fc ? fc + j * H : NULL, c + j * H, h + j * H,
                    ku ? ku + j * H : NULL, kc ? kc + j * H : NULL, H, og);
}

/* Forget gates of n edges node -> parent, and the push into the parents' sums.
 * F [n, H] holds W_f x_parent + b_f + U_f h on entry (or U_f h, with bf [H] = b_f to add)
 * and f on exit; KF = c f (1 - f) (KF
 * NULL: not wanted); S0[parent] += h, S1[parent] += f c. */
static void FN(cs_push)(T *restrict F, const T *restrict bf, const T *restrict c,
                        const T *restrict h, T *restrict KF, T *restrict S0, T *restrict S1,
                        const int64_t *restrict parent, int64_t n, int64_t H)
{
    for (int64_t j = 0; j < n; j++) {
        T *restrict f = F + j * H;
        const T *restrict cj = c + j * H;
        const T *restrict hj = h + j * H;
        T *restrict kf = KF ? KF + j * H : NULL;
        T *restrict s0 = S0 + parent[j] * H;
        T *restrict s1 = S1 + parent[j] * H;
        for (int64_t t = 0; t < H; t++) {
            T g = SIGM(bf ? f[t] + bf[t] : f[t]);
            T fc = g * cj[t];
            f[t] = g;
            if (KF)
                kf[t] = fc - fc * g;
            s0[t] += hj[t];
            s1[t] += fc;
        }
    }
}

/* What n nodes get from their parents: G0 [., H] is the parents' total dc, G1 the parents'
 * d(sum of children's h). dc = dc_out + G0[p] f; DF = G0[p] KF (the edge's forget-gate
 * gradient); dh = dh_out + G1[p] (the caller adds DF U_f). */
static void FN(cs_bwd_pull)(const T *restrict G0, const T *restrict G1,
                            const int64_t *restrict parent, const T *restrict F,
                            const T *restrict KF, const T *restrict dc_out,
                            const T *restrict dh_out, T *restrict dc, T *restrict DF,
                            T *restrict dh, int64_t n, int64_t H)
{
    PARALLEL_ROWS
    for (int64_t j = 0; j < n; j++) {
        const T *restrict g0 = G0 + parent[j] * H;
        const T *restrict g1 = G1 + parent[j] * H;
        const int64_t o = j * H;
        for (int64_t t = 0; t < H; t++) {
            dc[o + t] = dc_out[o + t] + g0[t] * F[o + t];
            DF[o + t] = g0[t] * KF[o + t];
            dh[o + t] = dh_out[o + t] + g1[t];
        }
    }
}

/* Gate backward of n nodes: DA [n, m*H] d pre-activations, dct [n, H] total dc. */
static void FN(cs_gates_bwd)(const T *restrict k, const T *restrict ku, const T *restrict kc,
                             const T *restrict dh, const T *restrict dc, T *restrict DA,
                             T *restrict dct, int64_t n, int64_t H, int og)
{
    const int64_t nm = og ? 3 * H : 2 * H;
    PARALLEL_ROWS
    for (int64_t j = 0; j < n; j++)
        FN(row_bwd)(k + j * nm, ku + j * H, kc + j * H, dh + j * H, dc + j * H, DA + j * nm,
                    dct + j * H, H, og);
}

/* ---------------------------------------------------------------------------- N-ary */

/* One child slot of one row: f = sigmoid(f-pre) in place, kf = c f (1 - f), s += f c. */
static inline void FN(forget_row)(T *restrict f, const T *restrict c, T *restrict kf,
                                  T *restrict s, int64_t H)
{
    for (int64_t t = 0; t < H; t++) {
        T g = SIGM(f[t]);
        T p = g * c[t];
        f[t] = g;
        if (kf)
            kf[t] = p - p * g;
        s[t] += p;
    }
}

/* Forward of n nodes with K ordered child slots. act [n, m*H + K*H]; cc [n, K*H] the
 * children's c (gathered by the children themselves, see `pos`); writes KF [n, K*H] =
 * c_k f_k (1 - f_k), fc [n, H] scratch, c, h, ku, kc [n, H] (KF, ku, kc NULL: states
 * only). With pos != NULL, each node also copies its h and c into its parent's child slot:
 * rows pos[j] of hcat / ccat ([., H], one row per parent slot; roots point at a dummy row).
 * K = 0: leaves. */
static void FN(nary_fwd)(T *restrict act, const T *restrict cc, T *restrict KF,
                         T *restrict fc, T *restrict c, T *restrict h, T *restrict ku,
                         T *restrict kc, const int64_t *restrict pos, T *restrict hcat,
                         T *restrict ccat, int64_t n, int64_t K, int64_t H, int og)
{
    const int64_t nm = og ? 3 * H : 2 * H;
    const int64_t lda = nm + K * H;
    PARALLEL_ROWS
    for (int64_t j = 0; j < n; j++) {
        T *a = act + j * lda;
        T *restrict s = fc + j * H;
        if (K)
            memset(s, 0, (size_t)H * sizeof(T));
        for (int64_t k = 0; k < K; k++)
            FN(forget_row)(a + nm + k * H, cc + (j * K + k) * H, KF ? KF + (j * K + k) * H : NULL,
                           s, H);
        FN(row_fwd)(a, K ? s : NULL, c + j * H, h + j * H, ku ? ku + j * H : NULL,
                    kc ? kc + j * H : NULL, H, og);
        if (pos) {
            memcpy(hcat + pos[j] * H, h + j * H, (size_t)H * sizeof(T));
            memcpy(ccat + pos[j] * H, c + j * H, (size_t)H * sizeof(T));
        }
    }
}

/* Backward of n nodes. Each node pulls what its parent left in its slot (rows pos[j] of
 * DHC = d h and DCC = d c; dummy row for roots; pos NULL: none) and adds its own dh_out,
 * dc_out; writes DA [n, m*H + K*H] (the f blocks: dct KF) and, for its K children, their d c
 * into DCC_out [n, K*H] (dct f_k). The caller then runs DA U into DHC for the children. */
static void FN(nary_bwd)(const T *restrict act, const T *restrict ku, const T *restrict kc,
                         const T *restrict KF, const T *restrict dh_out,
                         const T *restrict dc_out, const T *restrict DHC,
                         const T *restrict DCC, const int64_t *restrict pos, T *restrict DA,
                         T *restrict DCC_out, T *restrict dh, T *restrict dc,
                         T *restrict dct, int64_t n, int64_t K, int64_t H, int og)
{
    const int64_t nm = og ? 3 * H : 2 * H;
    const int64_t lda = nm + K * H;
    PARALLEL_ROWS
    for (int64_t j = 0; j < n; j++) {
        const int64_t o = j * H;
        if (pos) {
            const T *restrict ph = DHC + pos[j] * H;
            const T *restrict pc = DCC + pos[j] * H;
            for (int64_t t = 0; t < H; t++) {
                dh[o + t] = dh_out[o + t] + ph[t];
                dc[o + t] = dc_out[o + t] + pc[t];
            }
        } else {
            memcpy(dh + o, dh_out + o, (size_t)H * sizeof(T));
            memcpy(dc + o, dc_out + o, (size_t)H * sizeof(T));
        }
        const T *a = act + j * lda;
        T *d = DA + j * lda;
        FN(row_bwd)(a, ku + o, kc + o, dh + o, dc + o, d, dct + o, H, og);
        for (int64_t k = 0; k < K; k++) {
            const T *restrict f = a + nm + k * H;
            const T *restrict kf = KF + (j * K + k) * H;
            T *restrict df = d + nm + k * H;
            T *restrict dck = DCC_out + (j * K + k) * H;
            const T *restrict g = dct + o;
            for (int64_t t = 0; t < H; t++) {
                df[t] = g[t] * kf[t];
                dck[t] = g[t] * f[t];
            }
        }
    }
}


/* ---------------------------------------------------------------------------- matmul */

/* C[:, j0 : j0 + 64] of M <= 4 rows, accumulated in registers over all of K: B is read once
 * and each element of C loaded and stored once (the plain loop is bound by those). */
static inline __attribute__((always_inline)) void FN(gemm_block)(const int M, int64_t K,
                                                                 const T *restrict A,
                                                                 int64_t lda,
                                                                 const T *restrict B,
                                                                 int64_t ldb, T beta,
                                                                 T *restrict C, int64_t ldc)
{
    T acc[4][64];
    for (int m = 0; m < M; m++)
        for (int j = 0; j < 64; j++)
            acc[m][j] = beta == (T)0 ? (T)0 : C[m * ldc + j];
    for (int64_t k = 0; k < K; k++) {
        const T *restrict b = B + k * ldb;
        for (int m = 0; m < M; m++) {
            const T a = A[m * lda + k];
            for (int j = 0; j < 64; j++)
                acc[m][j] += a * b[j];
        }
    }
    for (int m = 0; m < M; m++)
        for (int j = 0; j < 64; j++)
            C[m * ldc + j] = acc[m][j];
}

/* The same product for M <= 4 rows without BLAS: 64-column blocks, then the last columns. */
static void FN(gemm_few)(int64_t M, int64_t N, int64_t K, const T *restrict A, int64_t lda,
                         const T *restrict B, int64_t ldb, T beta, T *restrict C, int64_t ldc)
{
    int64_t j0 = 0;
    for (; j0 + 64 <= N; j0 += 64) {
        switch (M) {
        case 1: FN(gemm_block)(1, K, A, lda, B + j0, ldb, beta, C + j0, ldc); break;
        case 2: FN(gemm_block)(2, K, A, lda, B + j0, ldb, beta, C + j0, ldc); break;
        case 3: FN(gemm_block)(3, K, A, lda, B + j0, ldb, beta, C + j0, ldc); break;
        default: FN(gemm_block)(4, K, A, lda, B + j0, ldb, beta, C + j0, ldc); break;
        }
    }
    if (j0 == N)
        return;
    if (beta == (T)0)
        for (int64_t m = 0; m < M; m++)
            memset(C + m * ldc + j0, 0, (size_t)(N - j0) * sizeof(T));
    for (int64_t k = 0; k < K; k++) {
        const T *restrict b = B + k * ldb;
        for (int64_t m = 0; m < M; m++) {
            const T a = A[m * lda + k];
            T *restrict c = C + m * ldc;
            for (int64_t j = j0; j < N; j++)
                c[j] += a * b[j];
        }
    }
}

/* Row-major C [M, N] = A [M, K] B [K, N] + beta C, all contiguous in their rows (leading
 * dimensions lda, ldb, ldc). Levels near the roots have a handful of rows: there a direct
 * loop that streams B once beats a BLAS call, which packs B first. */
static void FN(gemm)(int64_t M, int64_t N, int64_t K, const T *restrict A, int64_t lda,
                     const T *restrict B, int64_t ldb, T beta, T *restrict C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    TIC;
    if (M <= SMALL_M || K == 0) {
        for (int64_t m = 0; m < M; m += 4)
            FN(gemm_few)(M - m < 4 ? M - m : 4, N, K, A + m * lda, lda, B, ldb, beta,
                         C + m * ldc, ldc);
        TOC(1);
        return;
    }
    /* column-major view: C^T = B^T A^T */
    const char no = 'N';
    const int m = (int)N, n = (int)M, k = (int)K;
    const int lb = (int)ldb, la = (int)lda, lc = (int)ldc;
    const T one = (T)1;
    BLAS_GEMM(&no, &no, &m, &n, &k, &one, B, &lb, A, &la, &beta, C, &lc);
    TOC(0);
}

/* ---------------------------------------------------------------------------- loops */

/* Child-Sum forward over L levels (bounds [L+1]). P [N, m*H] pre-activations (in: x part and
 * biases; out: gate factors); S0, S1 [N+1, H] zeros (sums of the children's h and f c; row N
 * is the roots' dummy parent); c, h, F (forget gate of the edge to the parent) [N, H]; ku,
 * kc, KF [N, H] the factors (NULL: no gradient wanted); xf [N, H] each node's parent's W_f x
 * + b_f, or NULL with bf [H] (b_f for every edge); UmT [H, m*H] and UfT [H, H]: U_iou^T, U_f^T.
 */
void FN(cs_forward)(T *P, T *S0, T *S1, T *c, T *h, T *F, T *ku, T *kc, T *KF, const T *xf,
                    const T *bf, const T *UmT, const T *UfT, const int64_t *parent,
                    const int64_t *bounds, int64_t L, int64_t H, int og)
{
    TIC;
    const int64_t nm = og ? 3 * H : 2 * H;
    for (int64_t lv = 0; lv < L; lv++) {
        const int64_t s = bounds[lv], n = bounds[lv + 1] - s;
        if (lv)
            FN(gemm)(n, nm, H, S0 + s * H, H, UmT, nm, (T)1, P + s * nm, nm);
        FN(cs_gates_fwd)(P + s * nm, lv ? S1 + s * H : NULL, c + s * H, h + s * H,
                         ku ? ku + s * H : NULL, kc ? kc + s * H : NULL, n, H, og);
        /* every level pushes, the top one too (its roots into the dummy row) */
        if (xf)
            memcpy(F + s * H, xf + s * H, (size_t)(n * H) * sizeof(T));
        FN(gemm)(n, H, H, h + s * H, H, UfT, H, xf ? (T)1 : (T)0, F + s * H, H);
        FN(cs_push)(F + s * H, xf ? NULL : bf, c + s * H, h + s * H, KF ? KF + s * H : NULL,
                    S0, S1, parent + s, n, H);
    }
    TOC(2);
}

/* Child-Sum backward, levels from the top. dh_out, dc_out [N, H] the incoming gradients;
 * G0, G1 [N+1, H] (row N zero) what each node leaves its children; DA [N, m*H] and DF [N, H]
 * the gradients of the pre-activations and of each edge's forget pre-activation; dh, dc
 * [widest level, H] scratch; Um [m*H, H] and Uf [H, H]: U_iou and U_f. */
void FN(cs_backward)(const T *P, const T *ku, const T *kc, const T *F, const T *KF,
                     const T *dh_out, const T *dc_out, T *G0, T *G1, T *DA, T *DF, T *dh, T *dc,
                     const T *Um, const T *Uf, const int64_t *parent, const int64_t *bounds,
                     int64_t L, int64_t H, int og)
{
    TIC;
    const int64_t nm = og ? 3 * H : 2 * H;
    for (int64_t lv = L - 1; lv >= 0; lv--) {
        const int64_t s = bounds[lv], n = bounds[lv + 1] - s;
        FN(cs_bwd_pull)(G0, G1, parent + s, F + s * H, KF + s * H, dc_out + s * H,
                        dh_out + s * H, dc, DF + s * H, dh, n, H);
        FN(gemm)(n, H, H, DF + s * H, H, Uf, H, (T)1, dh, H);
        FN(cs_gates_bwd)(P + s * nm, ku + s * H, kc + s * H, dh, dc, DA + s * nm, G0 + s * H,
                         n, H, og);
        if (lv)
            FN(gemm)(n, H, nm, DA + s * nm, nm, Um, H, (T)0, G1 + s * H, H);
    }
    TOC(2);
}

/* N-ary forward. act0 [n0, m*H] the leaves' pre-activations; A [M, m*H + K*H] the internal
 * nodes' (in: x part and biases, or anything when b_all [m*H + K*H] is given, which is then
 * copied in level by level); hcat, ccat [M*K + 1, H] zeros: the children's states per parent
 * slot (+ the roots' dummy row); KF [M, K*H], ku, kc [N, H] the factors (NULL: no gradient
 * wanted); fc [M, H] scratch; c, h [N, H]; UT [K*H, m*H + K*H] = U^T; pos [N] each node's
 * parent slot. */
void FN(nary_forward)(T *act0, T *A, const T *b_all, T *hcat, T *ccat, T *KF, T *fc, T *c,
                      T *h, T *ku, T *kc, const T *UT, const int64_t *pos,
                      const int64_t *bounds, int64_t L, int64_t K, int64_t H, int og)
{
    TIC;
    const int64_t nm = og ? 3 * H : 2 * H, KH = K * H, lda = nm + KH, n0 = bounds[1];
    FN(nary_fwd)(act0, NULL, NULL, NULL, c, h, ku, kc, pos, hcat, ccat, n0, 0, H, og);
    for (int64_t lv = 1; lv < L; lv++) {
        const int64_t s = bounds[lv], n = bounds[lv + 1] - s, r = s - n0;
        if (b_all)
            for (int64_t j = 0; j < n; j++)
                memcpy(A + (r + j) * lda, b_all, (size_t)lda * sizeof(T));
        FN(gemm)(n, lda, KH, hcat + r * KH, KH, UT, lda, (T)1, A + r * lda, lda);
        FN(nary_fwd)(A + r * lda, ccat + r * KH, KF ? KF + r * KH : NULL, fc + r * H,
                     c + s * H, h + s * H, ku ? ku + s * H : NULL, kc ? kc + s * H : NULL,
                     pos + s, hcat, ccat, n, K, H, og);
    }
    TOC(2);
}

/* N-ary backward, levels from the top. DHC, DCC [M*K + 1, H] (row M*K zero) the gradients
 * each parent leaves in its child slots; DA [M, m*H + K*H], DA0 [n0, m*H] the gradients of
 * the pre-activations; dh, dc, dct [widest level, H] scratch; U [m*H + K*H, K*H]. */
void FN(nary_backward)(const T *act0, const T *A, const T *ku, const T *kc, const T *KF,
                       const T *dh_out, const T *dc_out, T *DHC, T *DCC, T *DA, T *DA0, T *dh,
                       T *dc, T *dct, const T *U, const int64_t *pos, const int64_t *bounds,
                       int64_t L, int64_t K, int64_t H, int og)
{
    TIC;
    const int64_t nm = og ? 3 * H : 2 * H, KH = K * H, lda = nm + KH, n0 = bounds[1];
    for (int64_t lv = L - 1; lv >= 1; lv--) {
        const int64_t s = bounds[lv], n = bounds[lv + 1] - s, r = s - n0;
        FN(nary_bwd)(A + r * lda, ku + s * H, kc + s * H, KF + r * KH, dh_out + s * H,
                     dc_out + s * H, DHC, DCC, pos + s, DA + r * lda, DCC + r * KH, dh, dc,
                     dct, n, K, H, og);
        FN(gemm)(n, KH, lda, DA + r * lda, lda, U, KH, (T)0, DHC + r * KH, KH);
    }
    FN(nary_bwd)(act0, ku, kc, NULL, dh_out, dc_out, DHC, DCC, pos, DA0, NULL, dh, dc, dct, n0,
                 0, H, og);
    TOC(2);
}

/* ---------------------------------------------------------------------------- top-down */

/* The one child slot of n rows is their parent: HP, CP [n, H] = h, c of rows parent[j]. */
static void FN(down_gather)(const T *restrict h, const T *restrict c,
                            const int64_t *restrict parent, T *restrict HP, T *restrict CP,
                            int64_t n, int64_t H)
{
    PARALLEL_ROWS
    for (int64_t j = 0; j < n; j++) {
        memcpy(HP + j * H, h + parent[j] * H, (size_t)H * sizeof(T));
        memcpy(CP + j * H, c + parent[j] * H, (size_t)H * sizeof(T));
    }
}

/* Top-down forward over L depths (rows depth-major, depth 0 = the n0 roots): the N-ary loop
 * with K = 1, the slot gathered from the parent instead of pushed by a child. act0 [n0, m*H]
 * the roots' pre-activations; A [M, m*H + H] the other rows' [i, (o), u, f] (in: x part and
 * biases; out: the factors and f); HP, CP [M, H] filled with the parents' h and c (HP is
 * kept for dU); KF [M, H], ku, kc [N, H] the factors (NULL: no gradient wanted); fc [M, H]
 * scratch; c, h [N, H]; UT [H, m*H + H] = U^T; parent [N] positions (roots: unused). */
void FN(down_forward)(T *act0, T *A, T *HP, T *CP, T *KF, T *fc, T *c, T *h, T *ku, T *kc,
                      const T *UT, const int64_t *parent, const int64_t *bounds, int64_t L,
                      int64_t H, int og)
{
    TIC;
    const int64_t nm = og ? 3 * H : 2 * H, lda = nm + H, n0 = bounds[1];
    FN(nary_fwd)(act0, NULL, NULL, NULL, c, h, ku, kc, NULL, NULL, NULL, n0, 0, H, og);
    for (int64_t d = 1; d < L; d++) {
        const int64_t s = bounds[d], n = bounds[d + 1] - s, r = s - n0;
        FN(down_gather)(h, c, parent + s, HP + r * H, CP + r * H, n, H);
        FN(gemm)(n, lda, H, HP + r * H, H, UT, lda, (T)1, A + r * lda, lda);
        FN(nary_fwd)(A + r * lda, CP + r * H, KF ? KF + r * H : NULL, fc + r * H, c + s * H,
                     h + s * H, ku ? ku + s * H : NULL, kc ? kc + s * H : NULL, NULL, NULL,
                     NULL, n, 1, H, og);
    }
    TOC(2);
}

/* Top-down backward, deepest first. dH, dC [N, H]: in, the incoming gradients; each depth
 * adds its rows' shares into their parents' rows (serially: siblings add into one row), so
 * a depth's rows are complete when it comes. DA [M, m*H + H], DA0 [n0, m*H] the gradients of
 * the pre-activations; DHP, DCP, dh, dc, dct [widest depth, H] scratch; U [m*H + H, H]. */
void FN(down_backward)(const T *act0, const T *A, const T *ku, const T *kc, const T *KF,
                       T *dH, T *dC, T *DA, T *DA0, T *DHP, T *DCP, T *dh, T *dc, T *dct,
                       const T *U, const int64_t *parent, const int64_t *bounds, int64_t L,
                       int64_t H, int og)
{
    TIC;
    const int64_t nm = og ? 3 * H : 2 * H, lda = nm + H, n0 = bounds[1];
    for (int64_t d = L - 1; d >= 1; d--) {
        const int64_t s = bounds[d], n = bounds[d + 1] - s, r = s - n0;
        FN(nary_bwd)(A + r * lda, ku + s * H, kc + s * H, KF + r * H, dH + s * H, dC + s * H,
                     NULL, NULL, NULL, DA + r * lda, DCP, dh, dc, dct, n, 1, H, og);
        FN(gemm)(n, H, lda, DA + r * lda, lda, U, H, (T)0, DHP, H);
        for (int64_t j = 0; j < n; j++) {
            T *restrict ph = dH + parent[s + j] * H;
            T *restrict pc = dC + parent[s + j] * H;
            const T *restrict gh = DHP + j * H;
            const T *restrict gc = DCP + j * H;
            for (int64_t t = 0; t < H; t++) {
                ph[t] += gh[t];
                pc[t] += gc[t];
            }
        }
    }
    FN(nary_bwd)(act0, ku, kc, NULL, dH, dC, NULL, NULL, NULL, DA0, NULL, dh, dc, dct, n0, 0, H,
                 og);
    TOC(2);
}

#undef FN
#undef CAT
#undef CAT_
