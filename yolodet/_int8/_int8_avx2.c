/* yolodet._int8_avx2: Python binding of the int8 fast mode's AVX2 kernels: Winograd F(2x2, 3x3) in 8 bits
 * (winograd_int8.h), F(4x4, 3x3) with 16-bit transformed operands (winograd_f4.h), 1x1 (pointwise_int8.h) and direct
 * 3x3 with a stride (direct_int8.h).
 *
 * conv(x, z, packed, corr, scale, bias, slope, out, H, W, C, O, threads) -> None: F(2x2)
 *   x: uint8 [H, W, C] codes (zero point z); packed: int8 [16, ceil(O/16), ceil(C/4), 16, 4];
 *   corr: int32 [16, O]; scale: float32 [16, O]; bias: float32 [O]; out: float32 [H, W, O], written.
 * conv4(x, z, packed, scale, bias, slope, out, H, W, C, O, threads) -> None: F(4x4)
 *   packed: int16 [36, ceil(O/16), ceil(C/2), 16, 2]; scale: float32 [36, O]; the others as conv's.
 * pointwise(x, packed, corr, scale, bias, slope, out, P, C, O, threads) -> None: 1x1 (pointwise_int8.h)
 *   x: uint8 [P, C] codes (C a multiple of 4); packed: int8 [ceil(O/16), C/4, 16, 4]; corr: int32 [O];
 *   scale, bias: float32 [O]; out: float32 [P, O], written.
 * direct(x, z, packed, corr, scale, bias, slope, out, H, W, C, O, stride, threads) -> None: 3x3, padding 1
 *   x: uint8 [H, W, C] codes (C a multiple of 4); packed: int8 [9, ceil(O/16), C/4, 16, 4]; corr: int32 [O];
 *   scale, bias: float32 [O]; out: float32 [Ho, Wo, O], Ho = (H - 1) // stride + 1 (Wo likewise), written.
 * Each takes, after threads, the optional epilogue arguments (epilogue.h) residual=None, codes=None, code_scale=1.0,
 * code_zero=0: residual, float32 [pixels, O], is added after the activation; codes, uint8 [pixels, O], receives the
 * output's codes (code_scale, code_zero: their quantisation). out may then be None (only the codes are written).
 * Every array is a C-contiguous buffer (numpy, or torch through .numpy()); sizes are checked against H, W, C, O.
 * The GIL is released while it runs. Only call it on a CPU with AVX2 and FMA (the module is built for them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "buffer_check.h"

#include <string.h>

#include "direct_int8.h"
#include "pointwise_int8.h"
#include "winograd_f4.h"
#include "winograd_int8.h"

/* Release a call's n buffers and give its result: NULL when an error is set (!ran), MemoryError when the kernel
 * returned -1, else None. */
static PyObject *finish(Py_buffer *const bufs[], int n, int ran, int rc) {
    for (int i = 0; i < n; i++) PyBuffer_Release(bufs[i]);
    if (!ran) return NULL;
    return rc != 0 ? PyErr_NoMemory() : Py_NewRef(Py_None);
}

/* The epilogue's buffers (out may be None when codes is not): out and codes writable, each None or n values. */
struct outputs {
    Py_buffer out, residual, codes;
    int n_held; /* how many of the three were taken (in that order; None ones count as taken, len 0) */
};

static int take(PyObject *obj, Py_buffer *b, int writable, Py_ssize_t bytes, const char *name) {
    if (obj == Py_None) {
        memset(b, 0, sizeof(*b));
        return 1;
    }
    if (PyObject_GetBuffer(obj, b, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) != 0) return 0;
    if (!check(b, bytes, name)) {
        PyBuffer_Release(b);
        memset(b, 0, sizeof(*b));
        return 0;
    }
    return 1;
}

/* Fills e from the Python arguments for n output values; 1, or 0 with an error set (then release_outputs). */
static int take_outputs(struct outputs *o, struct epilogue *e, PyObject *out, PyObject *residual, PyObject *codes,
                        double code_scale, int code_zero, float slope, Py_ssize_t n) {
    memset(o, 0, sizeof(*o));
    if (out == Py_None && codes == Py_None) {
        PyErr_SetString(PyExc_ValueError, "out and codes cannot both be None");
        return 0;
    }
    if (!(code_scale > 0) || code_zero < 0 || code_zero > 255) {
        PyErr_SetString(PyExc_ValueError, "code_scale must be positive and 0 <= code_zero <= 255");
        return 0;
    }
    if (!take(out, &o->out, 1, n * 4, "out")) return 0;
    o->n_held = 1;
    if (!take(residual, &o->residual, 0, n * 4, "residual")) return 0;
    o->n_held = 2;
    if (!take(codes, &o->codes, 1, n, "codes")) return 0;
    o->n_held = 3;
    *e = (struct epilogue){slope, o->residual.buf, o->out.buf, o->codes.buf, 1.0f / (float)code_scale,
                           (float)code_zero};
    return 1;
}

static void release_outputs(struct outputs *o) {
    Py_buffer *const held[] = {&o->out, &o->residual, &o->codes};
    for (int i = 0; i < o->n_held; i++)
        if (held[i]->obj != NULL) PyBuffer_Release(held[i]);
}

static char *conv_kw[] = {"x", "z", "packed", "corr", "scale", "bias", "slope", "out", "H", "W", "C", "O",
                          "threads", "residual", "codes", "code_scale", "code_zero", NULL};

static PyObject *conv(PyObject *self, PyObject *args, PyObject *kw) {
    Py_buffer x, packed, corr, scale, bias;
    PyObject *out, *residual = Py_None, *codes = Py_None;
    int z, H, W, C, O, threads, code_zero = 0, rc = 0, ran = 0;
    float slope;
    double code_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*iy*y*y*y*fOiiiii|OOdi", conv_kw, &x, &z, &packed, &corr, &scale,
                                     &bias, &slope, &out, &H, &W, &C, &O, &threads, &residual, &codes, &code_scale,
                                     &code_zero))
        return NULL;
    const Py_ssize_t cq = (C + 3) / 4, ob = (O + WINO_NR - 1) / WINO_NR;
    struct outputs o = {0};
    struct epilogue e;
    if (H < 1 || W < 1 || C < 1 || O < 1 || threads < 1 || z < 0 || z > 255) {
        PyErr_SetString(PyExc_ValueError, "H, W, C, O and threads must be positive and 0 <= z <= 255");
    } else if (check(&x, (Py_ssize_t)H * W * C, "x") && check(&packed, 16 * ob * cq * WINO_NR * 4, "packed") &&
               check(&corr, 16 * (Py_ssize_t)O * 4, "corr") && check(&scale, 16 * (Py_ssize_t)O * 4, "scale") &&
               check(&bias, (Py_ssize_t)O * 4, "bias") &&
               take_outputs(&o, &e, out, residual, codes, code_scale, code_zero, slope, (Py_ssize_t)H * W * O)) {
        Py_BEGIN_ALLOW_THREADS
        rc = winograd_int8_conv(x.buf, H, W, C, z, packed.buf, O, corr.buf, scale.buf, bias.buf, &e, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    release_outputs(&o);
    return finish((Py_buffer *const[]){&x, &packed, &corr, &scale, &bias}, 5, ran, rc);
}

static char *conv4_kw[] = {"x", "z", "packed", "scale", "bias", "slope", "out", "H", "W", "C", "O", "threads",
                           "residual", "codes", "code_scale", "code_zero", NULL};

static PyObject *conv4(PyObject *self, PyObject *args, PyObject *kw) {
    Py_buffer x, packed, scale, bias;
    PyObject *out, *residual = Py_None, *codes = Py_None;
    int z, H, W, C, O, threads, code_zero = 0, rc = 0, ran = 0;
    float slope;
    double code_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*iy*y*y*fOiiiii|OOdi", conv4_kw, &x, &z, &packed, &scale, &bias,
                                     &slope, &out, &H, &W, &C, &O, &threads, &residual, &codes, &code_scale,
                                     &code_zero))
        return NULL;
    const Py_ssize_t cp = (C + 1) / 2, ob = (O + WINO4_NR - 1) / WINO4_NR;
    struct outputs o = {0};
    struct epilogue e;
    if (H < 1 || W < 1 || C < 1 || O < 1 || threads < 1 || z < 0 || z > 255) {
        PyErr_SetString(PyExc_ValueError, "H, W, C, O and threads must be positive and 0 <= z <= 255");
    } else if (check(&x, (Py_ssize_t)H * W * C, "x") && check(&packed, 36 * ob * cp * WINO4_NR * 2 * 2, "packed") &&
               check(&scale, 36 * (Py_ssize_t)O * 4, "scale") && check(&bias, (Py_ssize_t)O * 4, "bias") &&
               take_outputs(&o, &e, out, residual, codes, code_scale, code_zero, slope, (Py_ssize_t)H * W * O)) {
        Py_BEGIN_ALLOW_THREADS
        rc = winograd_f4_conv(x.buf, H, W, C, z, packed.buf, O, scale.buf, bias.buf, &e, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    release_outputs(&o);
    return finish((Py_buffer *const[]){&x, &packed, &scale, &bias}, 4, ran, rc);
}

static char *pointwise_kw[] = {"x", "packed", "corr", "scale", "bias", "slope", "out", "P", "C", "O", "threads",
                               "residual", "codes", "code_scale", "code_zero", NULL};

static PyObject *pointwise(PyObject *self, PyObject *args, PyObject *kw) {
    Py_buffer x, packed, corr, scale, bias;
    PyObject *out, *residual = Py_None, *codes = Py_None;
    int P, C, O, threads, code_zero = 0, ran = 0;
    float slope;
    double code_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*y*y*fOiiii|OOdi", pointwise_kw, &x, &packed, &corr, &scale,
                                     &bias, &slope, &out, &P, &C, &O, &threads, &residual, &codes, &code_scale,
                                     &code_zero))
        return NULL;
    const Py_ssize_t ob = (O + POINTWISE_NR - 1) / POINTWISE_NR;
    struct outputs o = {0};
    struct epilogue e;
    if (P < 1 || C < 4 || C % 4 || O < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "P, O and threads must be positive and C a positive multiple of 4");
    } else if (check(&x, (Py_ssize_t)P * C, "x") && check(&packed, ob * POINTWISE_NR * C, "packed") &&
               check(&corr, (Py_ssize_t)O * 4, "corr") && check(&scale, (Py_ssize_t)O * 4, "scale") &&
               check(&bias, (Py_ssize_t)O * 4, "bias") &&
               take_outputs(&o, &e, out, residual, codes, code_scale, code_zero, slope, (Py_ssize_t)P * O)) {
        Py_BEGIN_ALLOW_THREADS
        pointwise_int8_conv(x.buf, P, C, packed.buf, O, corr.buf, scale.buf, bias.buf, &e, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    release_outputs(&o);
    return finish((Py_buffer *const[]){&x, &packed, &corr, &scale, &bias}, 5, ran, 0);
}

static char *direct_kw[] = {"x", "z", "packed", "corr", "scale", "bias", "slope", "out", "H", "W", "C", "O",
                            "stride", "threads", "residual", "codes", "code_scale", "code_zero", NULL};

static PyObject *direct(PyObject *self, PyObject *args, PyObject *kw) {
    Py_buffer x, packed, corr, scale, bias;
    PyObject *out, *residual = Py_None, *codes = Py_None;
    int z, H, W, C, O, stride, threads, code_zero = 0, rc = 0, ran = 0;
    float slope;
    double code_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*iy*y*y*y*fOiiiiii|OOdi", direct_kw, &x, &z, &packed, &corr, &scale,
                                     &bias, &slope, &out, &H, &W, &C, &O, &stride, &threads, &residual, &codes,
                                     &code_scale, &code_zero))
        return NULL;
    const Py_ssize_t ob = (O + DIRECT_NR - 1) / DIRECT_NR;
    struct outputs o = {0};
    struct epilogue e;
    if (H < 1 || W < 1 || C < 4 || C % 4 || O < 1 || stride < 1 || threads < 1 || z < 0 || z > 255) {
        PyErr_SetString(PyExc_ValueError, "H, W, O, stride and threads must be positive, C a positive multiple of 4 "
                                          "and 0 <= z <= 255");
    } else if (check(&x, (Py_ssize_t)H * W * C, "x") && check(&packed, 9 * ob * DIRECT_NR * C, "packed") &&
               check(&corr, (Py_ssize_t)O * 4, "corr") && check(&scale, (Py_ssize_t)O * 4, "scale") &&
               check(&bias, (Py_ssize_t)O * 4, "bias") &&
               take_outputs(&o, &e, out, residual, codes, code_scale, code_zero, slope,
                            (Py_ssize_t)((H - 1) / stride + 1) * ((W - 1) / stride + 1) * O)) {
        Py_BEGIN_ALLOW_THREADS
        rc = direct3x3_int8_conv(x.buf, H, W, C, z, stride, packed.buf, O, corr.buf, scale.buf, bias.buf, &e,
                                 threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    release_outputs(&o);
    return finish((Py_buffer *const[]){&x, &packed, &corr, &scale, &bias}, 5, ran, rc);
}

static PyMethodDef methods[] = {
    {"conv", (PyCFunction)(void (*)(void))conv, METH_VARARGS | METH_KEYWORDS,
     "conv(x, z, packed, corr, scale, bias, slope, out, H, W, C, O, threads, residual=None, codes=None, "
     "code_scale=1.0, code_zero=0): int8 Winograd F(2x2, 3x3), AVX2"},
    {"conv4", (PyCFunction)(void (*)(void))conv4, METH_VARARGS | METH_KEYWORDS,
     "conv4(x, z, packed, scale, bias, slope, out, H, W, C, O, threads, residual=None, codes=None, "
     "code_scale=1.0, code_zero=0): Winograd F(4x4, 3x3) on uint8 codes, 16-bit transformed operands, AVX2"},
    {"pointwise", (PyCFunction)(void (*)(void))pointwise, METH_VARARGS | METH_KEYWORDS,
     "pointwise(x, packed, corr, scale, bias, slope, out, P, C, O, threads, residual=None, codes=None, "
     "code_scale=1.0, code_zero=0): 1x1 convolution on uint8 codes, AVX2"},
    {"direct", (PyCFunction)(void (*)(void))direct, METH_VARARGS | METH_KEYWORDS,
     "direct(x, z, packed, corr, scale, bias, slope, out, H, W, C, O, stride, threads, residual=None, codes=None, "
     "code_scale=1.0, code_zero=0): direct 3x3 convolution (padding 1) on uint8 codes, AVX2"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_int8_avx2",
                                    "int8 convolutions for AVX2 CPUs: Winograd F(2x2), F(4x4); 1x1; strided 3x3",
                                    -1, methods};

PyMODINIT_FUNC PyInit__int8_avx2(void) { return PyModule_Create(&module); }
