"""The binding ABI is written once (python/paramgeom/_contract.py) and rendered for C++.

The rendered paramgeom/contract.h compiles on its own and holds exactly the table's
numbers (a C++ file of static_asserts generated from the table); the script CMake runs
writes it only when its text changes; and no other source defines those enums again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paramgeom import _contract

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "python" / "paramgeom" / "_contract.py"
CXX = shutil.which("g++") or shutil.which("c++")


def _write_header(tmp_path: Path) -> Path:
    header = tmp_path / "include" / _contract.HEADER_NAME
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "header", str(header)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return header


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_rendered_header_holds_exactly_the_table(tmp_path):
    _write_header(tmp_path)
    checks = [
        "#include <cstdint>",
        "typedef std::int64_t pg_i64;",
        '#include "paramgeom/contract.h"',
    ]
    for enum, namespace, _, entries in _contract._ENUMS:
        for cpp_name, value, _ in entries:
            checks.append(f'static_assert({namespace}::{cpp_name} == {value}, "{cpp_name}");')
            checks.append(f'static_assert(sizeof({namespace}::{enum}) == sizeof(int), "{enum}");')
    checks.append(f'static_assert(paramgeom::kMaxTols == {_contract.MAX_TOLS}, "kMaxTols");')
    checks.append(f'static_assert(paramgeom::kGroupElems == {_contract.GROUP_ELEMS}, "group");')
    unit = tmp_path / "check.cpp"
    unit.write_text("\n".join(checks) + "\n")
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", f"-I{tmp_path / 'include'}"]
    proc = subprocess.run([*cmd, str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(checks) > 40  # every enum entry was checked


def test_python_names_match_the_table():
    """The constants Python code uses are the ones rendered (one value per fact)."""
    assert (_contract.NUM_COUNTS, _contract.NUM_SUMS) == (20, 5)
    assert _contract.ABS0 == _contract.REL0 + _contract.MAX_TOLS
    assert _contract.NUM_COUNTS == _contract.ABS0 + _contract.MAX_TOLS
    rendered = {
        cpp_name: value for _, _, _, entries in _contract._ENUMS for cpp_name, value, _ in entries
    }
    assert rendered["kNumCounts"] == _contract.NUM_COUNTS
    assert rendered["kFloat8E5M2"] == _contract.FLOAT8_E5M2
    assert rendered["kAccumulate64"] == _contract.ACCUMULATE64
    for _, _, _, entries in _contract._ENUMS:
        values = [v for _, v, _ in entries]
        assert len(values) == len(set(values)), "two names for one code"


def test_script_writes_only_a_changed_header_and_lists_the_sources(tmp_path):
    header = _write_header(tmp_path)
    assert header.read_text() == _contract.render_header()
    header.write_text(header.read_text())  # same text
    before = header.stat().st_mtime_ns
    _write_header(tmp_path)
    assert header.stat().st_mtime_ns == before, "an unchanged table must not trigger a rebuild"
    header.write_text("// stale\n")
    _write_header(tmp_path)
    assert header.read_text() == _contract.render_header()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "cuda-sources"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert proc.stdout.split(";") == list(_contract.CUDA_KERNEL_SOURCES.values())
    for name in proc.stdout.split(";"):
        assert (ROOT / "csrc" / "cuda" / name).is_file(), name
    bad = subprocess.run([sys.executable, str(SCRIPT), "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_script_needs_nothing_but_the_standard_library():
    """CMake runs it with the build environment's Python, before torch is installed."""
    imports = re.findall(r"^(?:from|import) (\S+)", SCRIPT.read_text(), re.M)
    assert set(imports) <= {"__future__", "sys", "pathlib"}, imports


def test_no_other_source_defines_the_abi_again():
    """The enums and layout constants live in the generated header only: a hand-written
    copy in a C++ header or a Python module would be a second definition that can drift."""
    cpp_enums = re.compile(r"enum\s+(DType|Status|CountIndex|SumIndex|Epilogue)\b")
    cpp_consts = re.compile(r"constexpr\s+\w+\s+(kMaxTols|kGroupElems)\s*=")
    for path in (ROOT / "csrc").rglob("*"):
        if path.suffix in (".h", ".cuh", ".cu", ".cpp"):
            text = path.read_text()
            assert not cpp_enums.search(text) and not cpp_consts.search(text), path
    py_def = re.compile(r"^(NUM_COUNTS|NUM_SUMS|REL0|ABS0|MAX_TOLS|FLOAT8_E4M3)\s*=\s*\d", re.M)
    for folder in ("python", "triton_kernels", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path != SCRIPT:
                assert not py_def.search(path.read_text()), path
