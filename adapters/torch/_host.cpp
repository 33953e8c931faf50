// uniopt.torch's per-tensor host work of a flat CPU step, in C++: the loops over a step's
// parameters that cost about a microsecond per tensor in CPython (docs/torch.md, "Host work").
// Bookkeeping only: no update math (the rule runs in the C kernel of _native.py). Each function
// answers "not here" (None or False) for anything but the plain case, and the Python code it
// replaces (_host.py names it) then runs as before, so the two paths accept, refuse and compute the
// same. Built and loaded by _host.py against the running torch's headers.
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>

#include <c10/util/Exception.h>

#include <cstdint>
#include <exception>
#include <vector>

namespace {

// A C++ exception as a Python RuntimeError, torch's message without its C++ backtrace.
PyObject* raised(const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  PyErr_SetString(PyExc_RuntimeError, error ? error->what_without_backtrace() : e.what());
  return nullptr;
}

// A tensor passed as a Python object: exactly torch.Tensor or nn.Parameter (no subclass, whose
// attributes may be overridden in Python).
bool plain(PyObject* obj) { return THPVariable_CheckExact(obj); }

const at::Tensor& unpack(PyObject* obj) { return THPVariable_Unpack(obj); }

// dense_grads(params: list) -> list | None
// Each parameter's .grad, where every parameter is a plain tensor whose .grad is a plain, strided
// tensor of the parameter's dtype, shape and device, with neither the negative nor the conjugate
// bit set (its memory holds its values); else None.
PyObject* dense_grads(PyObject*, PyObject* params) {
  try {
    if (!PyList_CheckExact(params) && !PyTuple_CheckExact(params)) Py_RETURN_NONE;
    PyObject* fast = PySequence_Fast(params, "params");
    if (!fast) return nullptr;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject** items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!plain(items[i])) {
        Py_DECREF(fast);
        Py_RETURN_NONE;
      }
      const at::Tensor& p = unpack(items[i]);
      const at::Tensor& g = p.grad();
      if (!g.defined() || g.layout() != c10::kStrided || g.scalar_type() != p.scalar_type() ||
          g.device() != p.device() || g.sizes() != p.sizes() || g.is_neg() || g.is_conj()) {
        Py_DECREF(fast);
        Py_RETURN_NONE;
      }
    }
    PyObject* out = PyList_New(n);
    if (!out) {
      Py_DECREF(fast);
      return nullptr;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* g = THPVariable_Wrap(unpack(items[i]).grad());
      if (!g || !plain(g)) {
        Py_XDECREF(g);
        Py_DECREF(out);
        Py_DECREF(fast);
        if (PyErr_Occurred()) return nullptr;
        Py_RETURN_NONE;
      }
      PyList_SET_ITEM(out, i, g);
    }
    Py_DECREF(fast);
    return out;
  } catch (const std::exception& e) {
    return raised(e);
  }
}

// intact(states, keys, columns, params, ptrs, shapes, probe, counters, count) -> bool
// states: tuple of dicts; keys: tuple; columns: tuple (one per key) of tuples (one per state);
// params: tuple of plain tensors; ptrs: tuple of ints; shapes: tuple of tuples of ints;
// probe: a tensor of the bucket's dtype; counters: the bucket's int64 step counters (the tensor
// whose elements the states' "step" entries view); count: the step they all hold. True where
// states[i][keys[k]] is columns[k][i] for every i and k, every params[i] has data_ptr() ptrs[i]
// (Tensor.data_ptr(): copy-on-write storage is copied first, as in Python), shape shapes[i] (and
// so its element count), probe's dtype, and is contiguous, and every counter is count (a step entry
// edited in place, state["step"].fill_(0), is seen).
PyObject* intact(PyObject*, PyObject* args) {
  PyObject *states, *keys, *columns, *params, *ptrs, *shapes, *probe, *counters;
  long long count;
  if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!OOL", &PyTuple_Type, &states, &PyTuple_Type, &keys, &PyTuple_Type,
                        &columns, &PyTuple_Type, &params, &PyTuple_Type, &ptrs, &PyTuple_Type, &shapes, &probe,
                        &counters, &count))
    return nullptr;
  try {
    if (!THPVariable_Check(probe) || !THPVariable_Check(counters)) {
      PyErr_SetString(PyExc_TypeError, "intact: probe or counters is not a tensor");
      return nullptr;
    }
    const at::Tensor& steps = unpack(counters);
    if (steps.scalar_type() != c10::kLong || !steps.is_contiguous() || !steps.device().is_cpu()) {
      PyErr_SetString(PyExc_ValueError, "intact: counters is not a contiguous int64 CPU tensor");
      return nullptr;
    }
    const c10::ScalarType dtype = unpack(probe).scalar_type();
    Py_ssize_t n = PyTuple_GET_SIZE(states);
    Py_ssize_t k = PyTuple_GET_SIZE(keys);
    if (PyTuple_GET_SIZE(columns) != k || PyTuple_GET_SIZE(params) != n || PyTuple_GET_SIZE(ptrs) != n ||
        PyTuple_GET_SIZE(shapes) != n) {
      PyErr_SetString(PyExc_ValueError, "intact: mismatched lengths");
      return nullptr;
    }
    for (Py_ssize_t j = 0; j < k; ++j) {
      PyObject* key = PyTuple_GET_ITEM(keys, j);
      PyObject* column = PyTuple_GET_ITEM(columns, j);
      if (!PyTuple_Check(column) || PyTuple_GET_SIZE(column) != n) {
        PyErr_SetString(PyExc_ValueError, "intact: a column of the wrong length");
        return nullptr;
      }
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* state = PyTuple_GET_ITEM(states, i);
        if (!PyDict_Check(state)) Py_RETURN_FALSE;
        PyObject* value = PyDict_GetItemWithError(state, key);  // borrowed
        if (!value && PyErr_Occurred()) return nullptr;
        if (value != PyTuple_GET_ITEM(column, i)) Py_RETURN_FALSE;
      }
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* p = PyTuple_GET_ITEM(params, i);
      if (!plain(p)) Py_RETURN_FALSE;
      void* expected = PyLong_AsVoidPtr(PyTuple_GET_ITEM(ptrs, i));
      if (!expected && PyErr_Occurred()) return nullptr;
      const at::Tensor& t = unpack(p);
      if (t.scalar_type() != dtype || t.data_ptr() != expected) Py_RETURN_FALSE;
      // the shape, and so the element count (a smaller piece of the same storage keeps the address),
      // and the order: the same memory viewed in another shape or order (p.data = p.data.t(),
      // .view(...)) keeps both, and the buffers and the kernel's table were laid out for the old one
      PyObject* shape = PyTuple_GET_ITEM(shapes, i);
      if (!PyTuple_Check(shape)) {
        PyErr_SetString(PyExc_ValueError, "intact: a shape that is no tuple");
        return nullptr;
      }
      const auto sizes = t.sizes();
      if (static_cast<Py_ssize_t>(sizes.size()) != PyTuple_GET_SIZE(shape)) Py_RETURN_FALSE;
      for (size_t d = 0; d < sizes.size(); ++d) {
        long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, static_cast<Py_ssize_t>(d)));
        if (size == -1 && PyErr_Occurred()) return nullptr;
        if (size != sizes[d]) Py_RETURN_FALSE;
      }
      if (!t.is_contiguous()) Py_RETURN_FALSE;
    }
    const int64_t* held = steps.const_data_ptr<int64_t>();
    for (int64_t i = 0, m = steps.numel(); i < m; ++i) {
      if (held[i] != count) Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
  } catch (const std::exception& e) {
    return raised(e);
  }
}

// fill(grads, picks, tensor, offset, pointers, stride) -> bool
// grads: list or tuple of tensors; picks: address of n intp, the index in grads of each of the
// bucket's n tensors; tensor, offset: addresses of m intp and m uintp, each segment's tensor and
// byte offset; pointers: address of the m x stride uintp table whose column 1 receives each
// segment's gradient address. False, with nothing written, where a picked gradient is not a
// contiguous plain tensor whose memory holds its values (no negative or conjugate bit).
PyObject* fill(PyObject*, PyObject* args) {
  PyObject* grads;
  unsigned long long picks_at, n, tensor_at, offset_at, m, pointers_at, stride;
  if (!PyArg_ParseTuple(args, "OKKKKKKK", &grads, &picks_at, &n, &tensor_at, &offset_at, &m, &pointers_at,
                        &stride))
    return nullptr;
  try {
    PyObject* fast = PySequence_Fast(grads, "grads");
    if (!fast) return nullptr;
    Py_ssize_t size = PySequence_Fast_GET_SIZE(fast);
    PyObject** items = PySequence_Fast_ITEMS(fast);
    const intptr_t* picks = reinterpret_cast<const intptr_t*>(picks_at);
    std::vector<uintptr_t> address(n);
    for (unsigned long long i = 0; i < n; ++i) {
      intptr_t at = picks[i];
      if (at < 0 || at >= size || !plain(items[at])) {
        Py_DECREF(fast);
        Py_RETURN_FALSE;
      }
      const at::Tensor& g = unpack(items[at]);
      if (!g.is_contiguous() || g.is_neg() || g.is_conj()) {
        Py_DECREF(fast);
        Py_RETURN_FALSE;
      }
      address[i] = reinterpret_cast<uintptr_t>(g.const_data_ptr());
    }
    Py_DECREF(fast);
    const intptr_t* tensor = reinterpret_cast<const intptr_t*>(tensor_at);
    const uintptr_t* offset = reinterpret_cast<const uintptr_t*>(offset_at);
    uintptr_t* pointers = reinterpret_cast<uintptr_t*>(pointers_at);
    for (unsigned long long s = 0; s < m; ++s) pointers[s * stride + 1] = address[tensor[s]] + offset[s];
    Py_RETURN_TRUE;
  } catch (const std::exception& e) {
    return raised(e);
  }
}

// bump(tensors: tuple | list) -> None: each tensor's autograd version counter advanced, as an
// in-place op advances it; inference tensors, which have none, are skipped
// (torch.autograd.graph.increment_version).
PyObject* bump(PyObject*, PyObject* tensors) {
  try {
    PyObject* fast = PySequence_Fast(tensors, "tensors");
    if (!fast) return nullptr;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject** items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!THPVariable_Check(items[i])) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_TypeError, "bump: not a tensor");
        return nullptr;
      }
      const at::Tensor& t = unpack(items[i]);
      if (!t.is_inference()) torch::autograd::impl::bump_version(t);
    }
    Py_DECREF(fast);
    Py_RETURN_NONE;
  } catch (const std::exception& e) {
    return raised(e);
  }
}

PyMethodDef methods[] = {
    {"dense_grads", dense_grads, METH_O, "each parameter's plain strided gradient of its dtype and shape, or None"},
    {"intact", intact, METH_VARARGS, "whether a bucket's state entries and parameter storage are unchanged"},
    {"fill", fill, METH_VARARGS, "the gradients' addresses into a kernel's segment table"},
    {"bump", bump, METH_O, "advance each tensor's autograd version counter"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "uniopt_host", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_uniopt_host(void) { return PyModule_Create(&module); }
