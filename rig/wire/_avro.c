/* Avro binary bodies read into record classes and written from records, by a program compiled once
 * per schema (rig/wire/avro_compiler.py builds it from the schema's JSON form).
 *
 * Why C: the same work as Python code generated per schema cost ~25 % of the worker's GIL time (Avro
 * reads and writes of every request, prediction, outcome and joined row), most of it the interpreter
 * stepping through varints and attribute loads. Here a record is one call.
 *
 * The reader answers only for well-formed bodies: anything else (a short or corrupt body, a varint of
 * more than 10 bytes or out of its type's range, an enum or union index out of range, a boolean byte
 * other than 0 or 1, invalid UTF-8, more items than bytes left) raises, and the codec reads the
 * message with fastavro, which says what is wrong. The writer writes only what it is sure of (ints,
 * str, bytes, lists, tuples and dicts as such; anything float() takes for a double) and raises for
 * anything else, which fastavro then writes or refuses. Nothing here is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum Kind { K_NULL, K_BOOLEAN, K_INT, K_LONG, K_FLOAT, K_DOUBLE, K_STRING, K_BYTES, K_ENUM, K_RECORD,
            K_ARRAY, K_MAP, K_UNION };

static const char *KIND_NAMES[] = {"null", "boolean", "int", "long", "float", "double", "string", "bytes",
                                   "enum", "record", "array", "map", "union", NULL};

#define MAX_FIELDS 64

typedef struct Node {
    int kind;
    int null_index;         /* K_UNION: the branch index of null (0 or 1) */
    Py_ssize_t size;        /* K_RECORD: its fields; K_ENUM: its symbols */
    struct Node **children; /* K_RECORD: one per field; K_ARRAY, K_MAP, K_UNION: one */
    PyObject *cls;          /* K_RECORD: the class a read builds (None: write only) */
    PyObject *names;        /* K_RECORD: the field names, a tuple of str (keyword names of the call) */
    PyObject *symbols;      /* K_ENUM: a tuple of str */
    PyObject *indexes;      /* K_ENUM: symbol -> index (int) */
} Node;

static PyObject *Malformed;

/* -- programs ------------------------------------------------------------------------------------ */

static void node_free(Node *node) {
    if (node == NULL) return;
    if (node->children != NULL) {
        Py_ssize_t count = node->kind == K_RECORD ? node->size : 1;
        for (Py_ssize_t i = 0; i < count; i++) node_free(node->children[i]);
        PyMem_Free(node->children);
    }
    Py_XDECREF(node->cls);
    Py_XDECREF(node->names);
    Py_XDECREF(node->symbols);
    Py_XDECREF(node->indexes);
    PyMem_Free(node);
}

static Node *node_build(PyObject *program, int depth);

static int build_children(Node *node, PyObject *programs, Py_ssize_t count, int depth) {
    node->children = PyMem_Calloc(count > 0 ? count : 1, sizeof(Node *));
    if (node->children == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        node->children[i] = node_build(PyTuple_GET_ITEM(programs, i), depth + 1);
        if (node->children[i] == NULL) return -1;
    }
    return 0;
}

/* A program is a tuple: (kind,) for a primitive, ("enum", symbols), ("record", class or None, names,
 * programs), ("array", program), ("map", program), ("union", index of null, program). */
static Node *node_build(PyObject *program, int depth) {
    if (depth > 64) {
        PyErr_SetString(PyExc_ValueError, "program nested too deeply");
        return NULL;
    }
    if (!PyTuple_Check(program) || PyTuple_GET_SIZE(program) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(program, 0))) {
        PyErr_SetString(PyExc_TypeError, "a program is a tuple starting with its kind");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(program, 0));
    if (name == NULL) return NULL;
    int kind = -1;
    for (int k = 0; KIND_NAMES[k] != NULL; k++) {
        if (strcmp(name, KIND_NAMES[k]) == 0) kind = k;
    }
    Py_ssize_t arity = PyTuple_GET_SIZE(program);
    static const Py_ssize_t ARITY[] = {1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 2, 2, 3};
    if (kind < 0 || arity != ARITY[kind]) {
        PyErr_Format(PyExc_ValueError, "unknown program kind or arity: %R", program);
        return NULL;
    }
    Node *node = PyMem_Calloc(1, sizeof(Node));
    if (node == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    node->kind = kind;
    if (kind == K_ENUM) {
        PyObject *symbols = PyTuple_GET_ITEM(program, 1);
        if (!PyTuple_Check(symbols)) goto wrong;
        node->size = PyTuple_GET_SIZE(symbols);
        node->symbols = Py_NewRef(symbols);
        node->indexes = PyDict_New();
        if (node->indexes == NULL) goto fail;
        for (Py_ssize_t i = 0; i < node->size; i++) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyDict_SetItem(node->indexes, PyTuple_GET_ITEM(symbols, i), index) < 0) {
                Py_XDECREF(index);
                goto fail;
            }
            Py_DECREF(index);
        }
    } else if (kind == K_RECORD) {
        PyObject *names = PyTuple_GET_ITEM(program, 2), *programs = PyTuple_GET_ITEM(program, 3);
        if (!PyTuple_Check(names) || !PyTuple_Check(programs) || PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(programs)
            || PyTuple_GET_SIZE(names) > MAX_FIELDS)
            goto wrong;
        node->size = PyTuple_GET_SIZE(names);
        node->cls = Py_NewRef(PyTuple_GET_ITEM(program, 1));
        node->names = Py_NewRef(names);
        if (build_children(node, programs, node->size, depth) < 0) goto fail;
    } else if (kind == K_ARRAY || kind == K_MAP || kind == K_UNION) {
        PyObject *item = PyTuple_GET_ITEM(program, kind == K_UNION ? 2 : 1);
        if (kind == K_UNION) {
            long null_index = PyLong_AsLong(PyTuple_GET_ITEM(program, 1));
            if (null_index != 0 && null_index != 1) goto wrong;
            node->null_index = (int)null_index;
        }
        PyObject *one = PyTuple_Pack(1, item);
        if (one == NULL) goto fail;
        int built = build_children(node, one, 1, depth);
        Py_DECREF(one);
        if (built < 0) goto fail;
    }
    return node;
wrong:
    if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "malformed program: %R", program);
fail:
    node_free(node);
    return NULL;
}

static void capsule_free(PyObject *capsule) { node_free(PyCapsule_GetPointer(capsule, "rig.wire._avro.program")); }

static PyObject *compile_program(PyObject *module, PyObject *program) {
    Node *node = node_build(program, 0);
    if (node == NULL) return NULL;
    PyObject *capsule = PyCapsule_New(node, "rig.wire._avro.program", capsule_free);
    if (capsule == NULL) node_free(node);
    return capsule;
}

/* -- reading -------------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
    Py_ssize_t p;
} In;

static int malformed(const char *what) {
    PyErr_SetString(Malformed, what);
    return -1;
}

static PyObject *malformed_value(const char *what) {
    PyErr_SetString(Malformed, what);
    return NULL;
}

/* A zigzag varint of at most 10 bytes, in the range of a long (or of an int when `is_int`). */
static int read_varint(In *in, int64_t *value, int is_int) {
    uint64_t raw = 0;
    Py_ssize_t p = in->p;
    for (int i = 0;; i++) {
        if (i == 10) return malformed("a varint of more than 10 bytes");
        if (p >= in->size) return malformed("a varint past the end");
        unsigned char byte = in->data[p++];
        if (i == 9 && (byte & 0x7F) > 1) return malformed("a varint out of the range of a long");
        raw |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (!(byte & 0x80)) break;
    }
    int64_t decoded = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
    if (is_int && (decoded < INT32_MIN || decoded > INT32_MAX)) return malformed("a varint out of the range of an int");
    *value = decoded;
    in->p = p;
    return 0;
}

/* The length of a string or bytes, within the bytes left. */
static int read_length(In *in, Py_ssize_t *length) {
    int64_t value;
    if (read_varint(in, &value, 0) < 0) return -1;
    if (value < 0 || value > in->size - in->p) return malformed("a length beyond the bytes left");
    *length = (Py_ssize_t)value;
    return 0;
}

static PyObject *read_string(In *in) {
    Py_ssize_t length;
    if (read_length(in, &length) < 0) return NULL;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)in->data + in->p, length, NULL); /* strict */
    if (text != NULL) in->p += length;
    return text;
}

/* A block's item count (a negative one is followed by the block's size in bytes, skipped); refuses
 * more items than bytes left (every item takes a byte at least: avro_compiler.py checks). */
static int read_count(In *in, int64_t *count) {
    if (read_varint(in, count, 0) < 0) return -1;
    if (*count < 0) {
        if (*count == INT64_MIN) return malformed("a block count out of range");
        *count = -*count;
        int64_t size;
        if (read_varint(in, &size, 0) < 0) return -1;
    }
    if (*count > in->size - in->p) return malformed("more items than bytes left");
    return 0;
}

static PyObject *read_value(Node *node, In *in);

static PyObject *read_record(Node *node, In *in) {
    PyObject *values[MAX_FIELDS];
    Py_ssize_t i;
    for (i = 0; i < node->size; i++) {
        values[i] = read_value(node->children[i], in);
        if (values[i] == NULL) goto fail;
    }
    PyObject *record = PyObject_Vectorcall(node->cls, values, 0, node->size ? node->names : NULL);
    for (Py_ssize_t j = 0; j < node->size; j++) Py_DECREF(values[j]);
    return record;
fail:
    for (Py_ssize_t j = 0; j < i; j++) Py_DECREF(values[j]);
    return NULL;
}

static PyObject *read_block(Node *node, In *in) {
    int is_map = node->kind == K_MAP;
    PyObject *result = is_map ? PyDict_New() : PyList_New(0);
    if (result == NULL) return NULL;
    for (;;) {
        int64_t count;
        if (read_count(in, &count) < 0) goto fail;
        if (count == 0) return result;
        for (int64_t i = 0; i < count; i++) {
            PyObject *key = NULL;
            if (is_map && (key = read_string(in)) == NULL) goto fail;
            PyObject *item = read_value(node->children[0], in);
            int stored = item == NULL ? -1 : is_map ? PyDict_SetItem(result, key, item) : PyList_Append(result, item);
            Py_XDECREF(key);
            Py_XDECREF(item);
            if (stored < 0) goto fail;
        }
    }
fail:
    Py_DECREF(result);
    return NULL;
}

static PyObject *read_value(Node *node, In *in) {
    int64_t value;
    switch (node->kind) {
    case K_NULL:
        Py_RETURN_NONE;
    case K_BOOLEAN:
        if (in->p >= in->size) return malformed_value("a boolean past the end");
        if (in->data[in->p] > 1) return malformed_value("a boolean byte other than 0 or 1");
        return PyBool_FromLong(in->data[in->p++]);
    case K_INT:
    case K_LONG:
        if (read_varint(in, &value, node->kind == K_INT) < 0) return NULL;
        return PyLong_FromLongLong(value);
    case K_FLOAT:
    case K_DOUBLE: {
        Py_ssize_t width = node->kind == K_FLOAT ? 4 : 8;
        if (in->size - in->p < width) return malformed_value("a number past the end");
        const char *at = (const char *)in->data + in->p;
        double number = width == 4 ? PyFloat_Unpack4(at, 1) : PyFloat_Unpack8(at, 1);
        if (number == -1.0 && PyErr_Occurred()) return NULL;
        in->p += width;
        return PyFloat_FromDouble(number);
    }
    case K_STRING:
        return read_string(in);
    case K_BYTES: {
        Py_ssize_t length;
        if (read_length(in, &length) < 0) return NULL;
        PyObject *raw = PyBytes_FromStringAndSize((const char *)in->data + in->p, length);
        if (raw != NULL) in->p += length;
        return raw;
    }
    case K_ENUM:
        if (read_varint(in, &value, 0) < 0) return NULL;
        if (value < 0 || value >= node->size) return malformed_value("an enum index out of range");
        return Py_NewRef(PyTuple_GET_ITEM(node->symbols, value));
    case K_RECORD:
        return read_record(node, in);
    case K_ARRAY:
    case K_MAP:
        return read_block(node, in);
    case K_UNION:
        if (read_varint(in, &value, 0) < 0) return NULL;
        if (value == node->null_index) Py_RETURN_NONE;
        if (value == 1 - node->null_index) return read_value(node->children[0], in);
        return malformed_value("a union index out of range");
    }
    PyErr_SetString(PyExc_SystemError, "unknown node kind");
    return NULL;
}

static Node *program_of(PyObject *capsule) {
    return PyCapsule_GetPointer(capsule, "rig.wire._avro.program");
}

/* read(program, data, offset) -> (record, offset after it) */
static PyObject *avro_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read(program, data: bytes, offset: int)");
        return NULL;
    }
    Node *node = program_of(args[0]);
    if (node == NULL) return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    In in = {(const unsigned char *)PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]), offset};
    if (offset < 0 || offset > in.size) return malformed_value("an offset outside the data");
    PyObject *record = read_value(node, &in);
    if (record == NULL) return NULL;
    PyObject *end = PyLong_FromSsize_t(in.p);
    if (end == NULL) {
        Py_DECREF(record);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, record, end);
    Py_DECREF(record);
    Py_DECREF(end);
    return result;
}

/* -- writing -------------------------------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
    char inline_data[512]; /* most records fit: no allocation */
} Out;

static int reserve(Out *out, Py_ssize_t more) {
    if (out->size + more <= out->capacity) return 0;
    Py_ssize_t capacity = out->capacity;
    while (capacity < out->size + more) {
        if (capacity > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    char *data = out->data == out->inline_data ? PyMem_Malloc(capacity) : PyMem_Realloc(out->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (out->data == out->inline_data) memcpy(data, out->inline_data, out->size);
    out->data = data;
    out->capacity = capacity;
    return 0;
}

static int put(Out *out, const void *bytes, Py_ssize_t length) {
    if (reserve(out, length) < 0) return -1;
    memcpy(out->data + out->size, bytes, length);
    out->size += length;
    return 0;
}

static int put_varint(Out *out, int64_t value) {
    uint64_t zigzag = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    if (reserve(out, 10) < 0) return -1;
    while (zigzag > 0x7F) {
        out->data[out->size++] = (char)((zigzag & 0x7F) | 0x80);
        zigzag >>= 7;
    }
    out->data[out->size++] = (char)zigzag;
    return 0;
}

static int put_string(Out *out, PyObject *value) {
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%.100s is not an Avro string", Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_ssize_t length;
    const char *utf8 = PyUnicode_AsUTF8AndSize(value, &length); /* raises for lone surrogates */
    if (utf8 == NULL || put_varint(out, length) < 0) return -1;
    return put(out, utf8, length);
}

static int write_value(Node *node, PyObject *value, Out *out);

static int write_record(Node *node, PyObject *value, Out *out) {
    for (Py_ssize_t i = 0; i < node->size; i++) {
        PyObject *field = PyObject_GetAttr(value, PyTuple_GET_ITEM(node->names, i));
        if (field == NULL) return -1;
        int written = write_value(node->children[i], field, out);
        Py_DECREF(field);
        if (written < 0) return -1;
    }
    return 0;
}

/* One block of every item, then the empty block. Lists, tuples and dicts only (anything else goes to
 * fastavro); one that changes size while written (a value's __float__ could) is refused. */
static int write_block(Node *node, PyObject *value, Out *out) {
    int is_map = node->kind == K_MAP;
    if (is_map ? !PyDict_Check(value) : !(PyList_Check(value) || PyTuple_Check(value))) {
        PyErr_Format(PyExc_TypeError, "%.100s is not an Avro %s", Py_TYPE(value)->tp_name, is_map ? "map" : "array");
        return -1;
    }
    Py_ssize_t count = is_map ? PyDict_GET_SIZE(value) : PySequence_Fast_GET_SIZE(value);
    if (count > 0) {
        if (put_varint(out, count) < 0) return -1;
        Py_ssize_t position = 0;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *key = NULL, *item;
            if (is_map && !PyDict_Next(value, &position, &key, &item)) goto changed;
            if (!is_map) item = PySequence_Fast_GET_ITEM(value, i);
            Py_XINCREF(key);
            Py_INCREF(item);
            int written = (key == NULL || put_string(out, key) == 0) ? write_value(node->children[0], item, out) : -1;
            Py_XDECREF(key);
            Py_DECREF(item);
            if (written < 0) return -1;
            if ((is_map ? PyDict_GET_SIZE(value) : PySequence_Fast_GET_SIZE(value)) != count) goto changed;
        }
    }
    return put(out, "\0", 1);
changed:
    PyErr_SetString(PyExc_RuntimeError, "a map or array changed size while written");
    return -1;
}

static int write_value(Node *node, PyObject *value, Out *out) {
    switch (node->kind) {
    case K_NULL:
        return 0;
    case K_BOOLEAN: {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) return -1;
        return put(out, truth ? "\1" : "\0", 1);
    }
    case K_INT:
    case K_LONG: {
        if (!PyLong_Check(value)) { /* numpy and other ints: fastavro */
            PyErr_Format(PyExc_TypeError, "%.100s is not a plain int", Py_TYPE(value)->tp_name);
            return -1;
        }
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (number == -1 && PyErr_Occurred()) return -1;
        if (overflow || (node->kind == K_INT && (number < INT32_MIN || number > INT32_MAX))) {
            PyErr_SetString(PyExc_OverflowError, "out of the range of its Avro type");
            return -1;
        }
        return put_varint(out, number);
    }
    case K_FLOAT:
    case K_DOUBLE: {
        double number = PyFloat_AsDouble(value); /* what struct.pack and fastavro take */
        if (number == -1.0 && PyErr_Occurred()) return -1;
        Py_ssize_t width = node->kind == K_FLOAT ? 4 : 8;
        if (reserve(out, width) < 0) return -1;
        char *at = out->data + out->size;
        if ((width == 4 ? PyFloat_Pack4(number, at, 1) : PyFloat_Pack8(number, at, 1)) < 0) return -1;
        out->size += width;
        return 0;
    }
    case K_STRING:
        return put_string(out, value);
    case K_BYTES:
        if (!PyBytes_Check(value)) {
            PyErr_Format(PyExc_TypeError, "%.100s is not Avro bytes", Py_TYPE(value)->tp_name);
            return -1;
        }
        if (put_varint(out, PyBytes_GET_SIZE(value)) < 0) return -1;
        return put(out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    case K_ENUM: {
        PyObject *index = PyDict_GetItemWithError(node->indexes, value);
        if (index == NULL) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "%R is not a symbol of the enum", value);
            return -1;
        }
        return put_varint(out, PyLong_AsLongLong(index));
    }
    case K_RECORD:
        return write_record(node, value, out);
    case K_ARRAY:
    case K_MAP:
        return write_block(node, value, out);
    case K_UNION:
        if (value == Py_None) return put_varint(out, node->null_index);
        if (put_varint(out, 1 - node->null_index) < 0) return -1;
        return write_value(node->children[0], value, out);
    }
    PyErr_SetString(PyExc_SystemError, "unknown node kind");
    return -1;
}

/* write(program, record) -> bytes */
static PyObject *avro_write(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write(program, record)");
        return NULL;
    }
    Node *node = program_of(args[0]);
    if (node == NULL) return NULL;
    Out out;
    out.data = out.inline_data;
    out.size = 0;
    out.capacity = sizeof(out.inline_data);
    PyObject *result = NULL;
    if (write_value(node, args[1], &out) == 0) result = PyBytes_FromStringAndSize(out.data, out.size);
    if (out.data != out.inline_data) PyMem_Free(out.data);
    return result;
}

/* -- module --------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"compile_program", compile_program, METH_O, "compile_program(program) -> a compiled program (a capsule)"},
    {"read", (PyCFunction)(void (*)(void))avro_read, METH_FASTCALL,
     "read(program, data, offset) -> (record, offset after it); raises for anything but a well-formed body"},
    {"write", (PyCFunction)(void (*)(void))avro_write, METH_FASTCALL,
     "write(program, record) -> its Avro binary body; raises for a value it does not write"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "rig.wire._avro",
    .m_doc = "Avro binary bodies read and written by compiled programs.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__avro(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    Malformed = PyErr_NewExceptionWithDoc(
        "rig.wire._avro.Malformed", "The bytes are not a well-formed body of the schema (fastavro then says why).",
        PyExc_ValueError, NULL);
    if (Malformed == NULL || PyModule_AddObjectRef(module, "Malformed", Malformed) < 0
        || PyModule_AddIntConstant(module, "MAX_FIELDS", MAX_FIELDS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
