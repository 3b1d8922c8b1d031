/* Redis's replies to a pipeline of HMGETs, parsed as they arrive, feature values straight into doubles.
 *
 * Why C: through redis-py each reply became a list of bytes objects, one per field, and each value was
 * then looked at in Python: ~3 µs of CPU per entity, a sixth of the predict path's (py-spy of
 * bench_pipeline.py's bare loop). Here the values that are a Feast `Value` holding only a double (its
 * tag, then 8 little-endian bytes) are copied into the output as they are; no object is made for them.
 *
 * parse(data, offset, done, replies, fields, doubles, tag, values, slow, stamps) -> (done, offset)
 *   Reads whole replies from `data` at `offset` (reply number `done` of `replies`), each an array of
 *   `fields` bulk strings (a null bulk, RESP2 `$-1` or RESP3 `_`, for a field the hash does not hold),
 *   and stops before a reply that has not fully arrived: called again with more data, it goes on.
 *   Of each reply, the first `doubles` fields go to `values` (a writable buffer of replies x doubles
 *   float64, reply-major): a 9-byte value starting with `tag` as its double, a null or empty one as
 *   NaN, any other as NaN with (reply, field, bytes) appended to `slow` (decoded by the caller; `tag`
 *   -1: every non-empty value). The other fields (the timestamps) are appended to `stamps`, as bytes
 *   or None. Raises ReplyError with Redis's message for an error reply, ValueError for anything else
 *   that is not such an array.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *ReplyError;

enum { INCOMPLETE = 0, COMPLETE = 1, FAILED = -1 };

/* The integer of a line "<digits>\r\n" (a leading '-' allowed) starting at `p`; its end in `*next`. */
static int read_line_int(const char *p, const char *end, long long *value, const char **next) {
    const char *cr = memchr(p, '\r', end - p);
    if (cr == NULL || cr + 1 >= end) return INCOMPLETE;
    if (cr[1] != '\n') goto bad;
    int negative = p < cr && *p == '-';
    const char *digit = p + negative;
    if (digit == cr || cr - digit > 18) goto bad;
    long long number = 0;
    for (; digit < cr; digit++) {
        if (*digit < '0' || *digit > '9') goto bad;
        number = number * 10 + (*digit - '0');
    }
    *value = negative ? -number : number;
    *next = cr + 2;
    return COMPLETE;
bad:
    PyErr_SetString(PyExc_ValueError, "a Redis reply with a malformed length");
    return FAILED;
}

/* One field at `p`: its bytes (`*length` -1 for a null) and where the next one starts. */
static int read_field(const char *p, const char *end, const char **bytes, long long *length, const char **next) {
    if (p >= end) return INCOMPLETE;
    if (*p == '_') { /* RESP3 null */
        if (end - p < 3) return INCOMPLETE;
        if (p[1] != '\r' || p[2] != '\n') goto bad;
        *length = -1;
        *next = p + 3;
        return COMPLETE;
    }
    if (*p != '$') goto bad;
    int status = read_line_int(p + 1, end, length, bytes);
    if (status != COMPLETE) return status;
    if (*length < -1) goto bad;
    if (*length == -1) {
        *next = *bytes;
        return COMPLETE;
    }
    if (end - *bytes < *length + 2) return INCOMPLETE;
    if ((*bytes)[*length] != '\r' || (*bytes)[*length + 1] != '\n') goto bad;
    *next = *bytes + *length + 2;
    return COMPLETE;
bad:
    PyErr_SetString(PyExc_ValueError, "a Redis reply that is not an array of bulk strings");
    return FAILED;
}

/* Whether a whole reply of `fields` fields is at `p` (its end in `*next`); raises ReplyError for an
 * error reply. */
static int scan_reply(const char *p, const char *end, long long fields, const char **next) {
    if (p >= end) return INCOMPLETE;
    if (*p == '-') {
        const char *cr = memchr(p, '\r', end - p);
        if (cr == NULL || cr + 1 >= end) return INCOMPLETE;
        PyObject *message = PyUnicode_DecodeUTF8(p + 1, cr - p - 1, "replace");
        if (message != NULL) {
            PyErr_SetObject(ReplyError, message);
            Py_DECREF(message);
        }
        return FAILED;
    }
    if (*p != '*') {
        PyErr_SetString(PyExc_ValueError, "a Redis reply that is not an array");
        return FAILED;
    }
    long long count;
    int status = read_line_int(p + 1, end, &count, &p);
    if (status != COMPLETE) return status;
    if (count != fields) {
        PyErr_Format(PyExc_ValueError, "a Redis reply of %lld fields, %lld asked for", count, fields);
        return FAILED;
    }
    for (long long i = 0; i < count; i++) {
        const char *bytes;
        long long length;
        status = read_field(p, end, &bytes, &length, &p);
        if (status != COMPLETE) return status;
    }
    *next = p;
    return COMPLETE;
}

static int append_bytes(PyObject *list, const char *bytes, long long length) {
    PyObject *item = length < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize(bytes, length);
    if (item == NULL) return -1;
    int appended = PyList_Append(list, item);
    Py_DECREF(item);
    return appended;
}

/* The fields of a reply `scan_reply` found whole. */
static int fill_reply(const char *p, const char *end, long long reply, long long fields, long long doubles, int tag,
                      double *values, PyObject *slow, PyObject *stamps) {
    long long count;
    read_line_int(p + 1, end, &count, &p);
    for (long long field = 0; field < fields; field++) {
        const char *bytes;
        long long length;
        read_field(p, end, &bytes, &length, &p);
        if (field >= doubles) {
            if (append_bytes(stamps, bytes, length) < 0) return -1;
            continue;
        }
        double *value = &values[reply * doubles + field];
        if (length == 9 && (unsigned char)bytes[0] == tag) {
            *value = PyFloat_Unpack8(bytes + 1, 1);
            continue;
        }
        *value = Py_NAN;
        if (length > 0) {
            PyObject *entry = Py_BuildValue("(LLy#)", reply, field, bytes, (Py_ssize_t)length);
            if (entry == NULL) return -1;
            int appended = PyList_Append(slow, entry);
            Py_DECREF(entry);
            if (appended < 0) return -1;
        }
    }
    return 0;
}

static PyObject *parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 || !PyList_Check(args[8]) || !PyList_Check(args[9])) {
        PyErr_SetString(PyExc_TypeError,
                        "parse(data, offset, done, replies, fields, doubles, tag, values, slow: list, stamps: list)");
        return NULL;
    }
    long long numbers[5];
    for (int i = 0; i < 5; i++) {
        numbers[i] = PyLong_AsLongLong(args[1 + i]);
        if (numbers[i] == -1 && PyErr_Occurred()) return NULL;
    }
    long long offset = numbers[0], done = numbers[1], replies = numbers[2], fields = numbers[3], doubles = numbers[4];
    long tag = PyLong_AsLong(args[6]);
    if (tag == -1 && PyErr_Occurred()) return NULL;
    if (doubles < 0 || doubles > fields || done < 0 || done > replies) {
        PyErr_SetString(PyExc_ValueError, "parse: counts out of range");
        return NULL;
    }
    Py_buffer data, values;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[7], &values, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *result = NULL;
    if (offset < 0 || offset > data.len || values.len < replies * doubles * (long long)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "parse: an offset outside the data, or values too small");
        goto out;
    }
    const char *start = data.buf, *end = start + data.len, *p = start + offset;
    while (done < replies) {
        const char *next = p;
        int status = scan_reply(p, end, fields, &next);
        if (status == FAILED) goto out;
        if (status == INCOMPLETE) break;
        if (fill_reply(p, end, done, fields, doubles, (int)tag, values.buf, args[8], args[9]) < 0) goto out;
        p = next;
        done++;
    }
    result = Py_BuildValue("(LL)", done, (long long)(p - start));
out:
    PyBuffer_Release(&values);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(data, offset, done, replies, fields, doubles, tag, values, slow, stamps) -> (done, offset)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "rig.features._replies",
    .m_doc = "Redis's replies to pipelined HMGETs, parsed as they arrive.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__replies(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    ReplyError = PyErr_NewExceptionWithDoc("rig.features._replies.ReplyError", "Redis answered with an error.",
                                           PyExc_Exception, NULL);
    if (ReplyError == NULL || PyModule_AddObjectRef(module, "ReplyError", ReplyError) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
