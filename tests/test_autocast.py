"""torch.autocast: fusedrnn's modules and cells return the dtypes torch.nn's return under the same
autocast, within the half-precision rule, with gradients reaching the float32 parameters."""
import contextlib
import copy
import functools

import pytest
import torch
from torch import nn

from conftest import (CELLS, DEVICES, HALF_DTYPES, assert_half_rule, half_rule_draws, make_pair,
                      random_state, run_and_grad)
from test_cells import CELL_CLASSES, CellAsLayer, cell_inputs, make_cell_pair
from test_errors import _both_raise


def _autocast_cases():
    """(device, autocast dtype): bfloat16 on the CPU (torch.nn's CPU LSTM fails under float16
    autocast), both half types on CUDA, with the marks of conftest's DEVICES."""
    cases = []
    for device in DEVICES:
        name, marks = (device, ()) if isinstance(device, str) else (device.values[0], device.marks)
        dtypes = [torch.bfloat16] if name == "cpu" else list(HALF_DTYPES)
        cases += [pytest.param(name, dtype, marks=marks, id=f"{name}-{str(dtype)[6:]}")
                  for dtype in dtypes]
    return cases


AUTOCASTS = _autocast_cases()
MODELS = [("module", cell) for cell in CELLS] + [("cell", cell) for cell in CELL_CLASSES]
MODEL_IDS = [f"{family}-{cell}" for family, cell in MODELS]


class Autocast(nn.Module):
    """The model's forward under torch.autocast; the backward runs outside it, as in training.
    Float64 models are left as they are, as autocast leaves float64 alone."""

    def __init__(self, model, device_type, dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype

    def forward(self, x, hx=None):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x, hx)


def _model_pair(model, device, seed=0):
    """torch.nn's and fusedrnn's float32 model with the same weights, an input and a state."""
    family, cell = model
    if family == "module":
        ref, fused = make_pair(cell, 8, 8, device, seed=seed, num_layers=2, bidirectional=True)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(6, 2, 8, generator=gen).to(device)
        return ref, fused, x, random_state(cell, ref, 2, device, torch.float32, gen)
    ref, fused = make_cell_pair(cell, 8, 8, device, seed=seed)
    x, hx = cell_inputs(cell, (4,), 8, 8, device, torch.float32, seed=seed)
    return CellAsLayer(ref), CellAsLayer(fused), x, hx


def _cast_state(hx, dtype):
    return tuple(s.to(dtype) for s in hx) if isinstance(hx, tuple) else hx.to(dtype)


def _result_dtypes(model, x, hx, device, dtype):
    output, final = Autocast(model, device, dtype)(x, hx)
    return [t.dtype for t in (output, *(final if isinstance(final, tuple) else (final,)))]


@contextlib.contextmanager
def _without_cudnn_and_onednn():
    """torch.nn's RNNs then take their native paths, which autocast casts differently."""
    saved = torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled
    torch.backends.cudnn.enabled = torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled = saved


@functools.cache
def _onednn_runs_bfloat16_lstm():
    """Whether torch.nn's CPU LSTM runs under bfloat16 autocast here: it runs as oneDNN's LSTM
    layer, which torch 2.14's oneDNN lacks in bfloat16 on CPUs without AVX-512 ("could not
    create a primitive descriptor"). fusedrnn runs there all the same."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            nn.LSTM(2, 2)(torch.randn(1, 1, 2))
        return True
    except RuntimeError:
        return False


def _lstm_beyond_onednn(model, device, dtype):
    return (model == ("module", "lstm") and device == "cpu" and dtype == torch.bfloat16
            and torch.backends.mkldnn.enabled and not _onednn_runs_bfloat16_lstm())


@pytest.mark.parametrize("device, dtype", AUTOCASTS)
@pytest.mark.parametrize("libraries", ["default", "no-cudnn-onednn"])
@pytest.mark.parametrize("state", ["none", "float32", "autocast-dtype"])
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_result_dtypes_match_torch_nn(model, state, libraries, device, dtype):
    ref, fused, x, hx = _model_pair(model, device)
    hx = {"none": None, "float32": hx, "autocast-dtype": _cast_state(hx, dtype)}[state]
    off = _without_cudnn_and_onednn() if libraries != "default" else contextlib.nullcontext()
    with off, torch.no_grad():
        if _lstm_beyond_onednn(model, device, dtype):
            # torch.nn raises; fusedrnn returns what torch.nn returns where oneDNN runs it,
            # the layer cast as a whole (autocast.autocast_policy).
            with pytest.raises(RuntimeError, match="primitive descriptor"):
                _result_dtypes(ref, x, hx, device, dtype)
            theirs = [dtype] * 3
        else:
            theirs = _result_dtypes(ref, x, hx, device, dtype)
        assert _result_dtypes(fused, x, hx, device, dtype) == theirs


@pytest.mark.parametrize("device, dtype", AUTOCASTS)
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_half_precision_rule(model, device, dtype):
    """Outputs and gradients within the half-precision rule against a float64 run, and the
    parameters' gradients in float32. Where torch.nn's LSTM cannot run on oneDNN in bfloat16
    (_onednn_runs_bfloat16_lstm), its error is that of its path without oneDNN."""
    runs = []
    beyond = _lstm_beyond_onednn(model, device, dtype)
    for seed in range(half_rule_draws(model[1])):
        ref, fused, x, hx = _model_pair(model, device, seed)
        ref64 = copy.deepcopy(ref).double().cpu()
        hx64 = tuple(s.double().cpu() for s in hx) if isinstance(hx, tuple) else hx.double().cpu()
        ours = run_and_grad(Autocast(fused, device, dtype), x, hx)
        with _without_cudnn_and_onednn() if beyond else contextlib.nullcontext():
            theirs = run_and_grad(Autocast(ref, device, dtype), x, hx)
        runs.append((ours, theirs,
                     run_and_grad(Autocast(ref64, device, dtype), x.double().cpu(), hx64)))
        for name, _ in fused.named_parameters():
            assert ours[f"grad_model.{name}"].dtype == torch.float32, name
    assert_half_rule(runs)


@pytest.mark.parametrize("device, dtype", AUTOCASTS)
@pytest.mark.parametrize("model", MODELS, ids=MODEL_IDS)
def test_float64_input_is_not_cast_and_fails_like_torch_nn(model, device, dtype):
    ref, fused, x, _ = _model_pair(model, device)
    _both_raise(Autocast(ref, device, dtype), Autocast(fused, device, dtype), x.double(),
                match="dtype")


@pytest.mark.parametrize("device, dtype", AUTOCASTS)
def test_float64_model_runs_in_float64(device, dtype):
    ref, fused, x, hx = _model_pair(("module", "gru"), device)
    ref, fused, x, hx = ref.double(), fused.double(), x.double(), hx.double()
    ours = Autocast(fused, device, dtype)(x, hx)[0]
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, Autocast(ref, device, dtype)(x, hx)[0], rtol=1e-10, atol=0)
