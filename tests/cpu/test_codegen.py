"""The fused CPU product's register-blocked tiles (csrc/cpu/vectorized_product.h, `tile`) as the
compiler emitted them into fusedrnn._C: each ISA's tiles, the full one that most rows of a
product run through and those for the rows left over, must be unrolled into one FMA per
accumulator per k, their accumulators in registers. GCC once left AVX-512's one-vector tiles of
18-24 rows (single-gate products at H <= 32) rolled, their accumulators in memory: one FMA in
the loop, and 1.7x-1.9x the time the 24-row tile takes unrolled."""
import functools
import re
import shutil
import subprocess

import pytest

import fusedrnn

REGISTERS = {"avx2": 16, "avx512": 32}  # vector registers, as FUSEDRNN_VECTOR_REGISTERS

pytestmark = pytest.mark.skipif(shutil.which("nm") is None or shutil.which("objdump") is None,
                                reason="needs binutils (nm, objdump)")


def tiles():
    """(isa, scalar type, rows, vectors) of every tile panels_as uses: the full one, with its
    accumulators in three quarters of the registers, and one for each count of rows left but
    one (GCC inlines most one-row tiles into their callers)."""
    for isa, registers in REGISTERS.items():
        for vectors in (1, 2, 3, 4):
            for rows in range(2, registers * 3 // 4 // vectors + 1):
                for scalar in ("float", "double"):
                    yield isa, scalar, rows, vectors


@functools.lru_cache(maxsize=1)
def symbols():
    return subprocess.run(["nm", "-C", "-S", "--defined-only", fusedrnn.library_path()],
                          check=True, capture_output=True, text=True).stdout


def symbol_extent(name):
    """(start, size) in fusedrnn's library of the function whose demangled name starts with
    `name`."""
    for line in symbols().splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) == 4 and fields[3].startswith(name):
            return int(fields[0], 16), int(fields[1], 16)
    raise AssertionError(f"{name} is not in {fusedrnn.library_path()}")


@pytest.mark.parametrize("isa,scalar,rows,vectors", list(tiles()))
def test_tiles_are_unrolled(isa, scalar, rows, vectors):
    start, size = symbol_extent(f"void fusedrnn::cpu::{isa}::tile<{scalar}, {rows}, {vectors}>(")
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start}",
                           f"--stop-address={start + size}", fusedrnn.library_path()],
                          check=True, capture_output=True, text=True).stdout
    fmas = len(re.findall(r"\bvfmadd\w+", code))
    assert fmas >= rows * vectors, (isa, scalar, rows, vectors, fmas)
