/* The size and layout check of the buffers the AVX2 extensions' bindings take (yolodet/_int8/_int8_avx2.c,
 * yolodet/_fp32/_fp32_avx2.c). Include after Python.h. */
#ifndef YOLODET_BUFFER_CHECK_H
#define YOLODET_BUFFER_CHECK_H

/* 1 when b is C-contiguous and exactly bytes long; else 0 with a ValueError that names the argument. */
static int check(Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len != bytes || !PyBuffer_IsContiguous(b, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous buffer of %zd bytes, got %zd", name, bytes,
                     b->len);
        return 0;
    }
    return 1;
}

#endif
