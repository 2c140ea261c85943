/* yolodet._fp32_avx2: Python binding of the fp32 inference path's AVX2 kernels (winograd_f32.h).
 *
 * winograd_input(x, v, N, H, W, C, threads) -> None
 *   x: float32 [N, H, W, C]; v: float32 [N * ceil(H/4) * ceil(W/4), 36, C], written.
 * winograd_output(m, y, N, H, W, O, slope, threads) -> None
 *   m: float32 [T, 36, O] (T as above); y: float32 [N, H, W, O], written; slope: leaky's (0: relu, 1: none).
 * Every array is a C-contiguous buffer (numpy, or torch through .numpy()); sizes are checked against the shape.
 * The GIL is released while it runs. Only call it on a CPU with AVX2 and FMA (the module is built for them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "buffer_check.h"

#include "winograd_f32.h"

static Py_ssize_t tiles(int N, int H, int W) { return (Py_ssize_t)N * ((H + 3) / 4) * ((W + 3) / 4); }

static PyObject *winograd_input(PyObject *self, PyObject *args) {
    Py_buffer x, v;
    int N, H, W, C, threads, ran = 0;
    if (!PyArg_ParseTuple(args, "y*w*iiiii", &x, &v, &N, &H, &W, &C, &threads)) return NULL;
    if (N < 1 || H < 1 || W < 1 || C < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "N, H, W, C and threads must be positive");
    } else if (check(&x, (Py_ssize_t)N * H * W * C * 4, "x") && check(&v, tiles(N, H, W) * 36 * C * 4, "v")) {
        Py_BEGIN_ALLOW_THREADS
        winograd_f32_input(x.buf, N, H, W, C, v.buf, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&v);
    return ran ? Py_NewRef(Py_None) : NULL;
}

static PyObject *winograd_output(PyObject *self, PyObject *args) {
    Py_buffer m, y;
    int N, H, W, O, threads, ran = 0;
    float slope;
    if (!PyArg_ParseTuple(args, "y*w*iiiifi", &m, &y, &N, &H, &W, &O, &slope, &threads)) return NULL;
    if (N < 1 || H < 1 || W < 1 || O < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "N, H, W, O and threads must be positive");
    } else if (check(&m, tiles(N, H, W) * 36 * O * 4, "m") && check(&y, (Py_ssize_t)N * H * W * O * 4, "y")) {
        Py_BEGIN_ALLOW_THREADS
        winograd_f32_output(m.buf, N, H, W, O, slope, y.buf, threads);
        Py_END_ALLOW_THREADS
        ran = 1;
    }
    PyBuffer_Release(&m);
    PyBuffer_Release(&y);
    return ran ? Py_NewRef(Py_None) : NULL;
}

static PyMethodDef methods[] = {
    {"winograd_input", winograd_input, METH_VARARGS,
     "winograd_input(x, v, N, H, W, C, threads): F(4x4, 3x3) input transform, NHWC float32 -> [T, 36, C]"},
    {"winograd_output", winograd_output, METH_VARARGS,
     "winograd_output(m, y, N, H, W, O, slope, threads): F(4x4, 3x3) output transform and leaky, [T, 36, O] -> "
     "NHWC float32"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fp32_avx2",
                                    "fp32 Winograd F(4x4, 3x3) transforms for AVX2 CPUs", -1, methods};

PyMODINIT_FUNC PyInit__fp32_avx2(void) { return PyModule_Create(&module); }
