"""The same inputs give bitwise the same outputs and gradients, run after run."""
import pytest
import torch

from conftest import CELLS, DEVICES, make_pair, random_state, rel_err, run_and_grad
from test_cells import CELL_CLASSES, CellAsLayer, cell_inputs, make_cell_pair

# (T, B, I, H, options): one larger case, and a single step of a single sequence.
CONFIGS = [(20, 8, 32, 64, {"num_layers": 2, "bidirectional": True}), (1, 1, 4, 5, {})]


def _assert_repeats_bitwise(model, x, hx, runs=3):
    first = run_and_grad(model, x, hx)
    for _ in range(runs - 1):
        again = run_and_grad(model, x, hx)
        assert [k for k in first if not torch.equal(again[k], first[k])] == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("config", CONFIGS, ids=["T20-B8-2layer-bi", "T1-B1"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_modules(cell, config, dtype, device):
    T, B, I, H, options = config
    _, fused = make_pair(cell, I, H, device, dtype, **options)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, I, generator=gen).to(device, dtype)
    _assert_repeats_bitwise(fused, x, random_state(cell, fused, B, device, dtype, gen))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_shape", [(), (16,)], ids=["unbatched", "B16"])
@pytest.mark.parametrize("cell", list(CELL_CLASSES))
def test_cells(cell, batch_shape, device):
    _, fused = make_cell_pair(cell, 32, 64, device)
    x, hx = cell_inputs(cell, batch_shape, 32, 64, device, torch.float32)
    _assert_repeats_bitwise(CellAsLayer(fused), x, hx)


@pytest.mark.parametrize("cell", list(CELLS))
def test_thread_counts_agree_to_rounding(cell):
    """Across torch.set_num_threads the promise is rounding, not bits (README, Numerics): the
    fused recurrence computes each unit on one thread in a fixed order whatever the team, but the
    GEMMs over the whole sequence (MKL, oneDNN) may split their sums by thread count, as
    torch.nn's own GEMMs do. Each thread count still repeats itself bitwise."""
    T, B, I, H = 100, 32, 64, 128  # weight gradients summed over 3200 rows
    _, fused = make_pair(cell, I, H, "cpu", torch.float32, num_layers=2)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(T, B, I, generator=gen)
    hx = random_state(cell, fused, B, "cpu", torch.float32, gen)
    saved = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results[threads] = run_and_grad(fused, x, hx)
            _assert_repeats_bitwise(fused, x, hx, runs=2)
    finally:
        torch.set_num_threads(saved)
    for threads in (2, 3):
        errors = {k: rel_err(results[threads][k], results[1][k]) for k in results[1]}
        assert max(errors.values()) <= 1e-6, errors
