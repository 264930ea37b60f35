"""cffi builder of the native OpenFlow batch encoder (native/openflow.c).

setup.py compiles every native/build_*.py's ``ffibuilder``; the extension is
optional, so an install without a C compiler still succeeds and
hwflow.backends.ovs.native falls back to the os-ken reference encoder.
``python native/build_of.py`` builds it in place for a source checkout.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "hwflow.backends.ovs._openflow_native"

CDEF = """
#define HWOF_MAX_SLOTS 12
#define HWOF_MAX_DEPTH 8
enum { HWOF_PLAIN = 0, HWOF_CONTAINER = 1, HWOF_MATCH = 2, HWOF_MESSAGE = 3 };
enum { HWOF_OK = 0, HWOF_E_TEMPLATE = 1, HWOF_E_TRUNCATED = 2, HWOF_E_VALUE = 3, HWOF_E_NESTING = 4,
       HWOF_E_TOO_LONG = 5 };
struct hwof_slot { uint16_t offset; uint8_t width; };
struct hwof_template {
    const uint8_t *data;
    uint16_t size;
    uint8_t kind;
    uint8_t nslots;
    uint16_t length_at;
    struct hwof_slot slots[HWOF_MAX_SLOTS];
};
struct hwof_result { size_t consumed; size_t written; uint32_t messages; int error; size_t error_at; };
int hwof_encode(const struct hwof_template *templates, uint32_t ntemplates, const uint64_t *prog, size_t nwords,
                uint32_t first_xid, uint8_t *out, size_t cap, struct hwof_result *res);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(MODULE, '#include "openflow.c"', include_dirs=[str(HERE)],
                      extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror"],
                      depends=[str(HERE / "openflow.c")], optional=True)


def build_in_place() -> Path:
    """Compile in a scratch directory and copy only the shared object next to native.py, replacing any
    earlier build (pip names its build *.abi3.so, this one *.cpython-*.so: only one may be left)."""
    package = HERE.parent.joinpath(*MODULE.split(".")[:-1])
    with tempfile.TemporaryDirectory(prefix="hwflow-build-of-") as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=False))
        for old in package.glob(MODULE.rsplit(".", 1)[1] + ".*.so"):
            old.unlink()
        target = package / built.name
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
