"""cffi builder of the native tc-flower batch encoder (native/tcflower.c).

setup.py compiles every native/build_*.py's ``ffibuilder``; the extension is
optional, so an install without a C compiler still succeeds and
hwflow.backends.tc.native falls back to the Python reference encoder.
``python native/build_tc.py`` builds it in place for a source checkout.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "hwflow.backends.tc._tcflower_native"

CDEF = """
enum { HWTC_OK = 0, HWTC_E_RANGE = 1, HWTC_E_MASK = 2, HWTC_E_SPACE = 3, HWTC_E_SLOT = 4, HWTC_E_COVERS = 5 };
struct hwtc_slot {
    uint32_t offset;
    uint8_t size;
    uint8_t big_endian;
    int16_t mask_slot;
    uint64_t min, max;
    uint64_t mask_const;
    uint64_t covers;
};
struct hwtc_result { uint32_t written; int error; uint32_t bad_rule; uint32_t bad_slot; };
int hwtc_encode(const uint8_t *template_bytes, uint32_t template_size, const struct hwtc_slot *slots,
                uint32_t nslots, const uint64_t *values, uint32_t nrules, uint32_t first_seq, uint8_t *out,
                size_t cap, struct hwtc_result *res);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(MODULE, '#include "tcflower.c"', include_dirs=[str(HERE)],
                      extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror"],
                      depends=[str(HERE / "tcflower.c")], optional=True)


def build_in_place() -> Path:
    """Compile in a scratch directory and copy only the shared object next to native.py."""
    with tempfile.TemporaryDirectory(prefix="hwflow-build-tc-") as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=False))
        target = HERE.parent.joinpath(*MODULE.split(".")[:-1], built.name)
        shutil.copy2(built, target)
    return target


if __name__ == "__main__":
    print(build_in_place())
