/* Kafka's murmur2 (org.apache.kafka.common.utils.Utils#murmur2), the hash of its default partitioner.
 *
 * Why C: the join asks for the partition of every prediction and outcome it reads, and the promoter of
 * every joined row; in Python the hash took ~1.8 µs for an entity id, so a cache in front of it did the
 * work, and missed for every entity beyond its size. Here it takes as long as a call.
 *
 * murmur2(data) -> int: the signed 32-bit hash of a bytes-like object, as the Java client computes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int32_t kafka_murmur2(const unsigned char *data, Py_ssize_t length) {
    const uint32_t m = 0x5bd1e995u;
    const uint32_t seed = 0x9747b28cu;
    uint32_t h = seed ^ (uint32_t)length;
    Py_ssize_t whole = length - length % 4;
    for (Py_ssize_t i = 0; i < whole; i += 4) {
        uint32_t k = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                     (uint32_t)data[i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length % 4) {
    case 3:
        h ^= (uint32_t)data[whole + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)data[whole + 1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)data[whole];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

static PyObject *murmur2(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    int32_t hash = kafka_murmur2((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(hash);
}

static PyMethodDef methods[] = {
    {"murmur2", murmur2, METH_O, "murmur2(data) -> the signed 32-bit hash Kafka's Java client computes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "rig.wire._murmur2",
    .m_doc = "Kafka's murmur2 hash, the default partitioner's.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__murmur2(void) { return PyModule_Create(&module_def); }
