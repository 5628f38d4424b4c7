"""TorchScript: torch.jit.trace (and save/load) of every module and cell, torch.jit.script of the
cells; each runs torch.nn's implementation on fusedrnn's parameters and matches fusedrnn."""
import io
import warnings

import pytest
import torch
from torch import nn

import fusedrnn

MODULES = {
    "lstm": (nn.LSTM, fusedrnn.LSTM, dict(num_layers=2, bidirectional=True)),
    "gru": (nn.GRU, fusedrnn.GRU, dict(batch_first=True)),
    "rnn": (nn.RNN, fusedrnn.RNN, dict(nonlinearity="relu")),
    "lstm-cell": (nn.LSTMCell, fusedrnn.LSTMCell, {}),
    "gru-cell": (nn.GRUCell, fusedrnn.GRUCell, {}),
    "rnn-cell": (nn.RNNCell, fusedrnn.RNNCell, dict(nonlinearity="tanh")),
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _model_and_input(name):
    _, fused_cls, options = MODULES[name]
    torch.manual_seed(0)
    model = fused_cls(4, 6, **options)
    x = torch.randn(3, 4) if name.endswith("cell") else torch.randn(5, 3, 4)
    return model, x


def _saved_and_loaded(scripted):
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("name", list(MODULES))
def test_trace_save_load(name):
    model, x = _model_and_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)  # check_trace on: the same graph every time
    with torch.no_grad():
        expected = _first(model(x))
    torch.testing.assert_close(_first(_saved_and_loaded(traced)(x)), expected)
    # the trace holds torch's own recurrent op, not fusedrnn's
    assert "fusedrnn::" not in str(traced.inlined_graph)


@pytest.mark.parametrize("name", list(MODULES))
def test_script_as_torch_nn(name):
    """torch.jit.script scripts torch.nn's class on the same parameters: the cells script and
    run; the modules fail exactly as torch.nn's own do on torch versions whose TorchScript cannot
    compile nn.LSTM/GRU/RNN (torch 2.14.1: AttributeError on the scripted module's forward)."""
    model, x = _model_and_input(name)
    ref_cls, _, options = MODULES[name]
    outcomes = []
    for candidate in (ref_cls(4, 6, **options), model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                outcomes.append(_saved_and_loaded(torch.jit.script(candidate))(x))
            except Exception as error:  # noqa: BLE001  (compared with torch.nn's below)
                outcomes.append(type(error))
    theirs, ours = outcomes
    if isinstance(theirs, type):
        assert ours is theirs
        return
    with torch.no_grad():
        torch.testing.assert_close(_first(ours), _first(model(x)))
    assert all(p is q for p, q in zip(model.parameters(), model.__prepare_scriptable__()
                                      .parameters()))
