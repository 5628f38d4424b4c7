"""torch.fx.symbolic_trace of models holding fusedrnn's modules and cells (FX graph-mode tools:
feature extraction, graph rewriting, FX quantization's tracing): each is one call_module node,
as FX records torch.nn's (its leaf modules), and the GraphModule computes what the model does."""
import torch
from torch import nn

import fusedrnn
from conftest import assert_close_by_name


class Model(nn.Module):
    """Every recurrent class in containers, states given and not, batch first and not."""

    def __init__(self, lib):
        super().__init__()
        self.encoder = nn.Sequential(lib.LSTM(4, 5, num_layers=2, bidirectional=True))
        self.layers = nn.ModuleDict({"gru": lib.GRU(10, 6, batch_first=True),
                                     "rnn": lib.RNN(6, 6, nonlinearity="relu")})
        self.cells = nn.ModuleList([lib.LSTMCell(6, 3), lib.GRUCell(3, 3), lib.RNNCell(3, 3)])

    def forward(self, x, h0):
        x, (h_n, _) = self.encoder[0](x)
        x, _ = self.layers["gru"](x.transpose(0, 1))
        x, h = self.layers["rnn"](x.transpose(0, 1), h0)
        h, c = self.cells[0](x[-1])
        h = self.cells[1](h, c[:, :3])
        return self.cells[2](h) + h_n.sum(0)[:, :3] + h.sum()


def _models():
    torch.manual_seed(0)
    reference = Model(nn).double()
    fused = Model(fusedrnn).double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _run(model, x, h0):
    output = model(x, h0)
    grads = torch.autograd.grad(output.square().sum(), list(model.parameters()))
    names = [name for name, _ in model.named_parameters()]
    return {"output": output, **{f"grad_{n}": g for n, g in zip(names, grads)}}


def test_symbolic_trace_records_each_module_as_torch_nn_does():
    reference, fused = _models()
    theirs, ours = torch.fx.symbolic_trace(reference), torch.fx.symbolic_trace(fused)
    assert str(ours.graph) == str(theirs.graph)
    calls = [n.target for n in ours.graph.nodes if n.op == "call_module"]
    assert calls == ["encoder.0", "layers.gru", "layers.rnn", "cells.0", "cells.1", "cells.2"]
    for target in calls:
        assert type(ours.get_submodule(target)).__module__.startswith("fusedrnn.")
    gen = torch.Generator().manual_seed(1)
    for T, B in ((7, 3), (1, 1)):
        x = torch.randn(T, B, 4, generator=gen, dtype=torch.float64)
        h0 = torch.randn(1, B, 6, generator=gen, dtype=torch.float64)
        assert_close_by_name(_run(ours, x, h0), _run(reference, x, h0), 1e-10)
        assert_close_by_name(_run(ours, x, h0), _run(fused, x, h0), 0)


def test_not_tracing_is_unchanged():
    """A Proxy-free call never takes the FX branch: no graph, the module's own results."""
    reference, fused = _models()
    x, h0 = torch.randn(5, 2, 4, dtype=torch.float64), torch.randn(1, 2, 6, dtype=torch.float64)
    assert fusedrnn.modules.fx_leaf_call(fused.encoder[0], x, None) is None
    assert fusedrnn.modules.fx_leaf_call(fused.layers["rnn"], x, h0) is None
    assert_close_by_name(_run(fused, x, h0), _run(reference, x, h0), 1e-10)
