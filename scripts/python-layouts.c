/* Prints one CPython version's struct offsets as a Rust `PyLayout` literal, for
 * crates/profilers/src/interp/python_layouts.rs. Compiled by scripts/python-layouts.sh against
 * each version's own headers (internal ones included, with Py_BUILD_CORE). */
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#if PY_VERSION_HEX >= 0x030B0000
#include <internal/pycore_frame.h>
#endif
#if PY_VERSION_HEX >= 0x03090000
#include <internal/pycore_interp.h>
#include <internal/pycore_runtime.h>
#else
#include <internal/pycore_pystate.h>
#endif
#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>
#endif

#define F(name, expr) printf("        %s: %zu,\n", name, (size_t)(expr))

int main(void)
{
    printf("    PyLayout {\n");
    printf("        version: (%d, %d),\n", PY_MAJOR_VERSION, PY_MINOR_VERSION);
    F("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
#if PY_VERSION_HEX >= 0x030B0000
    F("interp_threads_head", offsetof(PyInterpreterState, threads.head));
#else
    F("interp_threads_head", offsetof(PyInterpreterState, tstate_head));
#endif
    F("tstate_next", offsetof(PyThreadState, next));
    F("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030D0000
    F("tstate_frame", offsetof(PyThreadState, current_frame));
    F("cframe_current_frame", 0);
#elif PY_VERSION_HEX >= 0x030B0000
    F("tstate_frame", offsetof(PyThreadState, cframe));
    F("cframe_current_frame", offsetof(_PyCFrame, current_frame));
#else
    F("tstate_frame", offsetof(PyThreadState, frame));
    F("cframe_current_frame", 0);
#endif
#if PY_VERSION_HEX >= 0x030D0000
    F("frame_code", offsetof(_PyInterpreterFrame, f_executable));
    F("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#elif PY_VERSION_HEX >= 0x030B0000
    F("frame_code", offsetof(_PyInterpreterFrame, f_code));
    F("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#else
    F("frame_code", offsetof(PyFrameObject, f_code));
    F("frame_instr", offsetof(PyFrameObject, f_lasti));
#endif
#if PY_VERSION_HEX >= 0x030B0000
    F("frame_previous", offsetof(_PyInterpreterFrame, previous));
    F("frame_owner", offsetof(_PyInterpreterFrame, owner));
#else
    F("frame_previous", offsetof(PyFrameObject, f_back));
    F("frame_owner", 0);
#endif
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    F("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#else
    F("frame_is_entry", 0);
#endif
#if PY_VERSION_HEX >= 0x030B0000
    F("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
    F("code_qualname", offsetof(PyCodeObject, co_qualname));
#else
    F("code_adaptive", 0);
    F("code_qualname", 0);
#endif
    F("code_filename", offsetof(PyCodeObject, co_filename));
    F("code_name", offsetof(PyCodeObject, co_name));
    F("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
#if PY_VERSION_HEX >= 0x030A0000
    F("code_linetable", offsetof(PyCodeObject, co_linetable));
#else
    F("code_linetable", offsetof(PyCodeObject, co_lnotab));
#endif
    F("object_type", offsetof(PyObject, ob_type));
    F("bytes_size", offsetof(PyVarObject, ob_size));
    F("bytes_data", offsetof(PyBytesObject, ob_sval));
    F("unicode_length", offsetof(PyASCIIObject, length));
    F("unicode_state", offsetof(PyASCIIObject, state));
    F("unicode_ascii_data", sizeof(PyASCIIObject));
    F("unicode_compact_data", sizeof(PyCompactUnicodeObject));
    printf("    },\n");
    return 0;
}
