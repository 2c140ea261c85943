/* yolodet._int8_avx2: Python binding of the int8 fast mode's AVX2 kernels: Winograd F(2x2, 3x3) in 8 bits
 * (winograd_int8.h), F(4x4, 3x3) with 16-bit transformed operands (winograd_f4.h), and 1x1 (pointwise_int8.h).
 *
 * conv(x, z, packed, corr, scale, bias, slope, out, H, W, C, O, threads) -> None: F(2x2)
 *   x: uint8 [H, W, C] codes (zero point z); packed: int8 [16, ceil(O/16), ceil(C/4), 16, 4];
 *   corr: int32 [16, O]; scale: float32 [16, O]; bias: float32 [O]; out: float32 [H, W, O], written.
 * conv4(x, z, packed, scale, bias, slope, out, H, W, C, O, threads) -> None: F(4x4)
 *   packed: int16 [36, ceil(O/16), ceil(C/2), 16, 2]; scale: float32 [36, O]; the others as conv's.
 * pointwise(x, packed, corr, scale, bias, slope, out, P, C, O, threads) -> None: 1x1 (pointwise_int8.h)
 *   x: uint8 [P, C] codes (C a multiple of 4); packed: int8 [ceil(O/16), C/4, 16, 4]; corr: int32 [O];
 *   scale, bias: float32 [O]; out: float32 [P, O], written.
 * Every array is a C-contiguous buffer (numpy, or torch through .numpy()); sizes are checked against H, W, C, O.
 * The GIL is released while it runs. Only call it on a CPU with AVX2 and FMA (the module is built for them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "buffer_check.h"

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

static PyObject *conv(PyObject *self, PyObject *args) {
    Py_buffer x, packed, corr, scale, bias, out;
    int z, H, W, C, O, threads, rc = 0, ran = 0;
    float slope;
    if (!PyArg_ParseTuple(args, "y*iy*y*y*y*fw*iiiii", &x, &z, &packed, &corr, &scale, &bias, &slope, &out, &H, &W,
                          &C, &O, &threads))
        return NULL;
    const Py_ssize_t cq = (C + 3) / 4, ob = (O + WINO_NR - 1) / WINO_NR;
    if (H < 1 || W < 1 || C < 1 || O < 1 || threads < 1 || z < 0 || z > 255) {
        PyErr_SetString(PyExc_ValueError, "H, W, C, O and threads must be positive and 0 <= z <= 255");
    } else if (check(&x, (Py_ssize_t)H * W * C, "x") && check(&packed, 16 * ob * cq * WINO_NR * 4, "packed") &&
               check(&corr, 16 * (Py_ssize_t)O * 4, "corr") && check(&scale, 16 * (Py_ssize_t)O * 4, "scale") &&
               check(&bias, (Py_ssize_t)O * 4, "bias") && check(&out, (Py_ssize_t)H * W * O * 4, "out")) {
        Py_BEGIN_ALLOW_THREADS
        rc = winograd_int8_conv(x.buf, H, W, C, z, packed.buf, O, corr.buf, scale.buf, bias.buf, slope, out.buf,
                                threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    return finish((Py_buffer *const[]){&x, &packed, &corr, &scale, &bias, &out}, 6, ran, rc);
}

static PyObject *conv4(PyObject *self, PyObject *args) {
    Py_buffer x, packed, scale, bias, out;
    int z, H, W, C, O, threads, rc = 0, ran = 0;
    float slope;
    if (!PyArg_ParseTuple(args, "y*iy*y*y*fw*iiiii", &x, &z, &packed, &scale, &bias, &slope, &out, &H, &W, &C, &O,
                          &threads))
        return NULL;
    const Py_ssize_t cp = (C + 1) / 2, ob = (O + WINO4_NR - 1) / WINO4_NR;
    if (H < 1 || W < 1 || C < 1 || O < 1 || threads < 1 || z < 0 || z > 255) {
        PyErr_SetString(PyExc_ValueError, "H, W, C, O and threads must be positive and 0 <= z <= 255");
    } else if (check(&x, (Py_ssize_t)H * W * C, "x") && check(&packed, 36 * ob * cp * WINO4_NR * 2 * 2, "packed") &&
               check(&scale, 36 * (Py_ssize_t)O * 4, "scale") && check(&bias, (Py_ssize_t)O * 4, "bias") &&
               check(&out, (Py_ssize_t)H * W * O * 4, "out")) {
        Py_BEGIN_ALLOW_THREADS
        rc = winograd_f4_conv(x.buf, H, W, C, z, packed.buf, O, scale.buf, bias.buf, slope, out.buf, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    return finish((Py_buffer *const[]){&x, &packed, &scale, &bias, &out}, 5, ran, rc);
}

static PyObject *pointwise(PyObject *self, PyObject *args) {
    Py_buffer x, packed, corr, scale, bias, out;
    int P, C, O, threads, ran = 0;
    float slope;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*fw*iiii", &x, &packed, &corr, &scale, &bias, &slope, &out, &P, &C, &O,
                          &threads))
        return NULL;
    const Py_ssize_t ob = (O + POINTWISE_NR - 1) / POINTWISE_NR;
    if (P < 1 || C < 4 || C % 4 || O < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "P, O and threads must be positive and C a positive multiple of 4");
    } else if (check(&x, (Py_ssize_t)P * C, "x") && check(&packed, ob * POINTWISE_NR * C, "packed") &&
               check(&corr, (Py_ssize_t)O * 4, "corr") && check(&scale, (Py_ssize_t)O * 4, "scale") &&
               check(&bias, (Py_ssize_t)O * 4, "bias") && check(&out, (Py_ssize_t)P * O * 4, "out")) {
        Py_BEGIN_ALLOW_THREADS
        pointwise_int8_conv(x.buf, P, C, packed.buf, O, corr.buf, scale.buf, bias.buf, slope, out.buf, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    return finish((Py_buffer *const[]){&x, &packed, &corr, &scale, &bias, &out}, 6, ran, 0);
}

static PyMethodDef methods[] = {
    {"conv", conv, METH_VARARGS,
     "conv(x, z, packed, corr, scale, bias, slope, out, H, W, C, O, threads): int8 Winograd F(2x2, 3x3), AVX2"},
    {"conv4", conv4, METH_VARARGS,
     "conv4(x, z, packed, scale, bias, slope, out, H, W, C, O, threads): Winograd F(4x4, 3x3) on uint8 codes, "
     "16-bit transformed operands, AVX2"},
    {"pointwise", pointwise, METH_VARARGS,
     "pointwise(x, packed, corr, scale, bias, slope, out, P, C, O, threads): 1x1 convolution on uint8 codes, AVX2"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_int8_avx2",
                                    "int8 convolutions for AVX2 CPUs: Winograd F(2x2), F(4x4); 1x1", -1,
                                    methods};

PyMODINIT_FUNC PyInit__int8_avx2(void) { return PyModule_Create(&module); }
