"""Smoke test of examples/: each one trains a few steps with torch.nn and with fusedrnn."""
import importlib
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module", autouse=True)
def _examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("name, extra", [
    ("char_lm", ["--sample", "20"]),
    ("forecast_gru", ["--length", "600"]),
    ("packed_classifier", ["--train-size", "200"]),
    ("digits_rnn", []),
])
def test_example_runs(name, extra, capsys):
    if name == "digits_rnn":
        pytest.importorskip("sklearn")
    module = importlib.import_module(name)
    results = module.main(["--epochs", "1", "--steps", "3", "--device", "cpu", *extra])
    assert set(results) == {"torch", "fused"}
    for run in results.values():
        assert len(run["losses"]) == 1 and math.isfinite(run["losses"][0])
        assert all(math.isfinite(v) for v in run["metrics"].values())
    # Same weights, same batches: the first epoch's losses agree to rounding.
    assert results["fused"]["losses"][0] == pytest.approx(results["torch"]["losses"][0], rel=1e-4)
    assert "torch.nn / fusedrnn" in capsys.readouterr().out
