"""What `import fusedrnn` says about the compiled extension."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import fusedrnn

PACKAGE = os.path.dirname(fusedrnn.__file__)


def _import_error(code, cwd):
    run = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert run.returncode != 0
    return run.stderr


def test_build_info_matches_this_torch():
    assert fusedrnn.TORCH_VERSION == torch.__version__
    assert isinstance(fusedrnn.WITH_CUDA, bool)


@pytest.mark.parametrize("missing", ["_C*.so", "libfusedrnn.so"])  # the module, its library
def test_missing_extension_names_the_fix(tmp_path, missing):
    shutil.copytree(PACKAGE, tmp_path / "fusedrnn",
                    ignore=shutil.ignore_patterns(missing, "__pycache__"))
    err = _import_error("import fusedrnn", tmp_path)
    assert "ImportError" in err and "has to be built" in err and "pip install" in err


def test_the_library_is_beside_the_module_and_needs_no_python():
    """fusedrnn._C links libfusedrnn.so (found beside it), which needs no Python library or
    symbol."""
    library = fusedrnn.library_path()
    assert os.path.dirname(library) == PACKAGE
    needed = subprocess.run(["readelf", "-d", library], capture_output=True, text=True,
                            check=True).stdout
    assert "libtorch_cpu.so" in needed
    assert "python" not in needed.lower()
    undefined = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True,
                               text=True, check=True).stdout.split()
    assert not [name for name in undefined if name.startswith(("Py", "_Py")) or "pybind11" in name]
    module = subprocess.run(["readelf", "-d", fusedrnn._extension._C.__file__],
                            capture_output=True, text=True, check=True).stdout
    assert "[libfusedrnn.so]" in module and "[$ORIGIN]" in module


def test_other_torch_version_names_the_fix():
    code = "import torch; torch.__version__ = '0.0.1'; import fusedrnn"
    err = _import_error(code, os.path.dirname(PACKAGE))
    assert f"built for torch {torch.__version__}" in err and "0.0.1" in err
