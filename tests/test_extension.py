"""What `import fusedrnn` says about the compiled extension."""
import os
import shutil
import subprocess
import sys

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


def test_missing_extension_names_the_fix(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "fusedrnn",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    err = _import_error("import fusedrnn", tmp_path)
    assert "ImportError" in err and "has to be built" in err and "pip install" in err


def test_other_torch_version_names_the_fix():
    code = "import torch; torch.__version__ = '0.0.1'; import fusedrnn"
    err = _import_error(code, os.path.dirname(PACKAGE))
    assert f"built for torch {torch.__version__}" in err and "0.0.1" in err
