/* yolodet._stb_image: decode an image with stb_image, the decoder Darknet's C builds use without OpenCV.
 *
 * decode(data: bytes) -> (pixels: bytes, height: int, width: int), pixels RGB uint8 row-major [H, W, 3].
 * Raises ValueError with stb's failure reason when the data cannot be decoded.
 *
 * stb_image.h (v2.27, public domain / MIT, https://github.com/nothings/stb) is vendored unchanged beside this file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define STBI_NO_STDIO /* bytes come from Python: no FILE*, unicode paths handled by the caller */
#define STB_IMAGE_IMPLEMENTATION
#include "stb_image.h"

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int w = 0, h = 0, c = 0;
    unsigned char *pixels;
    PyObject *out;
    if (!PyArg_ParseTuple(args, "y*", &buf)) return NULL;
    if (buf.len > INT_MAX) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "image data larger than 2 GiB");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pixels = stbi_load_from_memory((const stbi_uc *)buf.buf, (int)buf.len, &w, &h, &c, 3);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (pixels == NULL) {
        PyErr_Format(PyExc_ValueError, "stb_image cannot decode it: %s", stbi_failure_reason());
        return NULL;
    }
    out = Py_BuildValue("(y#ii)", (const char *)pixels, (Py_ssize_t)w * h * 3, h, w);
    stbi_image_free(pixels);
    return out;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "decode(data: bytes) -> (rgb: bytes, height, width) with stb_image"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stb_image", "stb_image decoder (Darknet's)", -1,
                                    methods};

PyMODINIT_FUNC PyInit__stb_image(void) { return PyModule_Create(&module); }
