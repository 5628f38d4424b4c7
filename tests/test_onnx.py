"""ONNX export (both exporters): fusedrnn modules and cells export as torch.nn's do, to ONNX's own
LSTM, GRU and RNN operators, and the exported model, run in ONNX Runtime, matches fusedrnn."""
import warnings

import pytest
import torch
from torch import nn

import fusedrnn

onnx = pytest.importorskip("onnx", reason="onnx is an optional test dependency (make test)")
ort = pytest.importorskip("onnxruntime",
                          reason="onnxruntime is an optional test dependency (make test)")

MODELS = {
    "lstm-2layer-bi": (nn.LSTM, fusedrnn.LSTM, dict(num_layers=2, bidirectional=True)),
    "gru-batch-first": (nn.GRU, fusedrnn.GRU, dict(batch_first=True)),
    "rnn-relu": (nn.RNN, fusedrnn.RNN, dict(nonlinearity="relu")),
    "lstm-cell": (nn.LSTMCell, fusedrnn.LSTMCell, {}),
}
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}


def _export(model, x, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=dynamo)
    return onnx.load(path)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(MODELS))
def test_exports_as_torch_nn_and_runs_in_onnx_runtime(name, dynamo, tmp_path):
    ref_cls, fused_cls, options = MODELS[name]
    torch.manual_seed(0)
    ref, fused = ref_cls(4, 6, **options).eval(), fused_cls(4, 6, **options).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4) if name.endswith("cell") else torch.randn(5, 3, 4)
    theirs = _export(ref, x, tmp_path / "torch_nn.onnx", dynamo)
    ours = _export(fused, x, tmp_path / "fusedrnn.onnx", dynamo)
    ops = {node.op_type for node in ours.graph.node}
    assert ops == {node.op_type for node in theirs.graph.node}
    assert not any(op.startswith("fusedrnn") for op in ops)
    if name.startswith(("lstm-2", "gru")) or not dynamo and name == "rnn-relu":
        assert ops & RECURRENT_OPS  # ONNX's own operator, gate order as torch.nn's export
    session = ort.InferenceSession(str(tmp_path / "fusedrnn.onnx"))
    (output, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = fused(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(torch.from_numpy(output), expected, rtol=1e-5, atol=1e-6)
