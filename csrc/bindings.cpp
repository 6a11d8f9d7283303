// The _C Python module. Loading it runs the TORCH_LIBRARY registrations beside each kernel
// (csrc/cpu/<op>.cpp, csrc/cuda/<op>_binding.cpp), which add the ops tltorch_ext_C::<op>_<fn>;
// the module itself only says whether the CUDA kernels were built. Plain CPython API, no
// pybind11: torch/extension.h alone took longer to compile than any kernel file.
#include <Python.h>

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef WITH_CUDA
  PyObject* with_cuda = Py_True;
#else
  PyObject* with_cuda = Py_False;
#endif
  if (PyModule_AddObjectRef(module, "WITH_CUDA", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
