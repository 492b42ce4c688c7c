/* The two hot loops of near-dedup in C: token hashing and MinHash signatures.
 *
 * They compute exactly what the NumPy code in minhash.py computes (same token definition, same
 * stable 64-bit hash, same multiply-shift permutations), so results do not depend on whether this
 * module was built; tests compare the two. NumPy needs ~10 passes over the data for each; here it is
 * one pass, which is what the dedup speed target needs on 2 cores.
 *
 * Buffers come in through the buffer protocol (bytes, NumPy arrays), so no NumPy C API is needed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const uint64_t M1 = 0xBF58476D1CE4E5B9ULL; /* splitmix64 finaliser (Steele et al. 2014) */
static const uint64_t M2 = 0x94D049BB133111EBULL;
static const uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL;

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= M1;
    x ^= x >> 27;
    x *= M2;
    x ^= x >> 31;
    return x;
}

static unsigned char TOKEN[256];

/* Little-endian value of the first n (<= 8) bytes at p. */
static inline uint64_t load_le(const unsigned char *p, Py_ssize_t n) {
    uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&v, p, (size_t)n);
#else
    for (Py_ssize_t i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
#endif
    return v;
}

static const uint64_t KEEP[9] = {0, 0xFFULL, 0xFFFFULL, 0xFFFFFFULL, 0xFFFFFFFFULL, 0xFFFFFFFFFFULL,
                                 0xFFFFFFFFFFFFULL, 0xFFFFFFFFFFFFFFULL, 0xFFFFFFFFFFFFFFFFULL};

/* With `padded`, 8 bytes past the run are readable: whole-word loads, masked to the run. */
static inline uint64_t load_word(const unsigned char *p, Py_ssize_t n, int padded) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (padded) {
        uint64_t v;
        memcpy(&v, p, 8);
        return v & KEEP[n];
    }
#endif
    return load_le(p, n);
}

static inline uint64_t hash_run(const unsigned char *p, Py_ssize_t len, int padded) {
    uint64_t h = load_word(p, len < 8 ? len : 8, padded);
    for (Py_ssize_t off = 8; off < len; off += 8) {
        Py_ssize_t rest = len - off;
        h = mix64(h) ^ load_word(p + off, rest < 8 ? rest : 8, padded);
    }
    return mix64(h ^ ((uint64_t)len * GOLDEN));
}

/* token_hashes(text, doc_starts, doc_ends, out_hashes, out_docs) -> n
 * Every run of [A-Za-z0-9_] bytes inside each document's byte range, hashed; its document index.
 * Pad `text` with 8 bytes after the last document for the fast path. */
static PyObject *token_hashes(PyObject *self, PyObject *args) {
    Py_buffer text, starts, ends, out_h, out_d;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &text, &starts, &ends, &out_h, &out_d)) return NULL;
    const unsigned char *buf = text.buf;
    const int64_t *ds = starts.buf, *de = ends.buf;
    Py_ssize_t n_docs = starts.len / 8, cap = out_h.len / 8;
    uint64_t *oh = out_h.buf;
    int64_t *od = out_d.buf;
    Py_ssize_t n = 0;
    int overflow = 0;
    /* whole-word loads are safe when the buffer holds 8 bytes past the last document */
    int padded = n_docs == 0 || text.len >= de[n_docs - 1] + 8;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t d = 0; d < n_docs && !overflow; d++) {
        Py_ssize_t i = ds[d], end = de[d];
        while (i < end) {
            while (i < end && !TOKEN[buf[i]]) i++;
            Py_ssize_t s = i;
            while (i < end && TOKEN[buf[i]]) i++;
            if (i > s) {
                if (n >= cap) { overflow = 1; break; }
                oh[n] = hash_run(buf + s, i - s, padded);
                od[n] = d;
                n++;
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&text); PyBuffer_Release(&starts); PyBuffer_Release(&ends);
    PyBuffer_Release(&out_h); PyBuffer_Release(&out_d);
    if (overflow) { PyErr_SetString(PyExc_ValueError, "output buffers too small"); return NULL; }
    return PyLong_FromSsize_t(n);
}

/* The signature kernel. x < 2^32, so a * x mod 2^64 = a_lo * x + (a_hi * x << 32): two 32x32->64
 * multiplies, which SSE2/AVX2 have (a 64-bit multiply they do not), so the loop over permutations
 * vectorises. Built for AVX2 and baseline x86-64, picked at run time. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void sign_docs(const uint64_t *h, const int64_t *off, const int64_t *docs, Py_ssize_t n,
                      const uint32_t *alo, const uint32_t *ahi, const uint64_t *b, Py_ssize_t p,
                      uint32_t *out) {
    uint64_t mins[4096];
    for (Py_ssize_t k = 0; k < n; k++) {
        for (Py_ssize_t j = 0; j < p; j++) mins[j] = UINT64_MAX;
        for (int64_t t = off[docs[k]]; t < off[docs[k] + 1]; t++) {
            uint64_t x = h[t] & 0xFFFFFFFFULL;
            for (Py_ssize_t j = 0; j < p; j++) {
                uint64_t v = ((uint64_t)alo[j] * x + b[j] + (((uint64_t)ahi[j] * x) << 32)) >> 32;
                mins[j] = v < mins[j] ? v : mins[j];
            }
        }
        for (Py_ssize_t j = 0; j < p; j++) out[k * p + j] = (uint32_t)mins[j];
    }
}

/* minhash(hashes, offsets, docs, a, b, out) -> None
 * out[k, j] = min over the set of document docs[k] of ((a[j] * (h & 0xFFFFFFFF) + b[j]) mod 2^64) >> 32. */
static PyObject *minhash(PyObject *self, PyObject *args) {
    Py_buffer hb, ob, db, ab, bb, outb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*", &hb, &ob, &db, &ab, &bb, &outb)) return NULL;
    const uint64_t *h = hb.buf, *a = ab.buf, *b = bb.buf;
    const int64_t *off = ob.buf, *docs = db.buf;
    Py_ssize_t n = db.len / 8, p = ab.len / 8;
    uint32_t *out = outb.buf;
    int bad = outb.len < n * p * 4 || p > 4096;
    if (!bad) {
        uint32_t alo[4096], ahi[4096];
        for (Py_ssize_t j = 0; j < p; j++) {
            alo[j] = (uint32_t)a[j];
            ahi[j] = (uint32_t)(a[j] >> 32);
        }
        Py_BEGIN_ALLOW_THREADS
        sign_docs(h, off, docs, n, alo, ahi, b, p, out);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&hb); PyBuffer_Release(&ob); PyBuffer_Release(&db);
    PyBuffer_Release(&ab); PyBuffer_Release(&bb); PyBuffer_Release(&outb);
    if (bad) { PyErr_SetString(PyExc_ValueError, "output buffer too small or too many permutations"); return NULL; }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"token_hashes", token_hashes, METH_VARARGS, "Hash every token run of each document."},
    {"minhash", minhash, METH_VARARGS, "MinHash signatures of selected documents."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    const char *chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
    memset(TOKEN, 0, sizeof TOKEN);
    for (const char *c = chars; *c; c++) TOKEN[(unsigned char)*c] = 1;
    return PyModule_Create(&module);
}
