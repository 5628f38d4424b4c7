"""fusedrnn.convert and fusedrnn.revert on model trees: same results, same Parameter objects."""
import warnings

import pytest
import torch
import torch.nn.utils.prune  # noqa: F401 (nn.utils.prune)
from torch import nn

import fusedrnn
from conftest import DEVICES, assert_close_by_name

TORCH_NN = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
FUSED = (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN, fusedrnn.LSTMCell, fusedrnn.GRUCell,
         fusedrnn.RNNCell)


class Tagger(nn.Module):
    """Every recurrent module torch.nn has, inside containers: embedding, a 2-layer bidirectional
    LSTM, a GRU and a relu RNN over the sequence, then a loop of cells, then a linear head."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.encoder = nn.Sequential(nn.LSTM(6, 5, num_layers=2, bidirectional=True))
        self.layers = nn.ModuleList([nn.GRU(10, 4), nn.RNN(4, 4, nonlinearity="relu")])
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(4, 3), "gru": nn.GRUCell(3, 3),
                                    "rnn": nn.RNNCell(3, 3, bias=False)})
        self.head = nn.Linear(3, 2)

    def forward(self, tokens):
        x, _ = self.encoder[0](self.embedding(tokens))
        for layer in self.layers:
            x, _ = layer(x)
        lstm_state = gru_state = rnn_state = None
        for step in x:
            lstm_state = self.cells["lstm"](step, lstm_state)
            gru_state = self.cells["gru"](lstm_state[0], gru_state)
            rnn_state = self.cells["rnn"](gru_state, rnn_state)
        return self.head(rnn_state)


def _tagger(device="cpu", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return Tagger().to(device=device, dtype=dtype)


def _tokens(device):
    return torch.randint(0, 20, (5, 3), generator=torch.Generator().manual_seed(1)).to(device)


def _outputs_and_gradients(model, tokens):
    """The output and the gradient of a random projection of it for every trainable parameter."""
    output = model(tokens)
    probe = torch.randn(output.shape, generator=torch.Generator().manual_seed(2),
                        dtype=output.dtype).to(output.device)
    names, parameters = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad((output * probe).sum(), parameters)
    return {"output": output.detach(), **{f"grad_{n}": g for n, g in zip(names, grads)}}


def _recurrent_types(model):
    return sorted(type(m).__module__.split(".")[0] + "." + type(m).__name__
                  for m in model.modules() if isinstance(m, TORCH_NN + FUSED))


@pytest.mark.parametrize("device", DEVICES)
def test_same_outputs_and_gradients(device):
    model, tokens = _tagger(device), _tokens(device)
    expected = _outputs_and_gradients(model, tokens)
    converted = fusedrnn.convert(model)
    assert converted is model
    assert _recurrent_types(model) == sorted(f"fusedrnn.{c.__name__}" for c in FUSED)
    assert_close_by_name(_outputs_and_gradients(model, tokens), expected, 1e-10)


def test_parameters_are_the_same_objects():
    model = _tagger()
    before = dict(model.named_parameters())
    fusedrnn.convert(model)
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    assert all(after[name] is parameter for name, parameter in before.items())


def test_copy_converts_a_copy():
    model = _tagger()
    before = dict(model.named_parameters())
    converted = fusedrnn.convert(model, copy=True)
    assert _recurrent_types(model) == sorted(f"torch.{c.__name__}" for c in TORCH_NN)
    assert _recurrent_types(converted) == sorted(f"fusedrnn.{c.__name__}" for c in FUSED)
    for name, parameter in converted.named_parameters():
        assert parameter is not before[name] and torch.equal(parameter, before[name]), name
    tokens = _tokens("cpu")
    assert_close_by_name(_outputs_and_gradients(converted, tokens),
                         _outputs_and_gradients(model, tokens), 1e-10)


@pytest.mark.parametrize("copy", [False, True])
def test_training_mode_requires_grad_and_dtype_are_kept(copy):
    model = _tagger(dtype=torch.float32)
    model.layers[0].eval()
    model.cells["gru"].eval()
    model.cells["lstm"].bias_hh.requires_grad_(False)
    model.encoder[0].weight_hh_l1_reverse.requires_grad_(False)
    state = {name: (m.training, [(p.requires_grad, p.dtype, p.device) for p in m.parameters()])
             for name, m in model.named_modules()}
    converted = fusedrnn.convert(model, copy=copy)
    assert {name: (m.training, [(p.requires_grad, p.dtype, p.device) for p in m.parameters()])
            for name, m in converted.named_modules()} == state


def test_revert_round_trips():
    model, tokens = _tagger(), _tokens("cpu")
    expected = _outputs_and_gradients(model, tokens)
    before = dict(model.named_parameters())
    reverted = fusedrnn.revert(fusedrnn.convert(model))
    assert _recurrent_types(reverted) == sorted(f"torch.{c.__name__}" for c in TORCH_NN)
    assert all(type(m) in TORCH_NN for m in reverted.modules() if isinstance(m, TORCH_NN))
    assert all(p is before[name] for name, p in reverted.named_parameters())
    assert_close_by_name(_outputs_and_gradients(reverted, tokens), expected, 1e-10)


def test_root_module_is_replaced_and_returned():
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.25).double().eval()
    fused = fusedrnn.convert(lstm)
    assert type(fused) is fusedrnn.LSTM and not fused.training
    assert (fused.num_layers, fused.batch_first, fused.dropout) == (2, True, 0.25)
    assert all(a is b for a, b in zip(fused.parameters(), lstm.parameters()))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x)[0], lstm(x)[0], rtol=1e-10, atol=0)
    back = fusedrnn.revert(fused)
    assert type(back) is nn.LSTM and all(a is b for a, b in zip(back.parameters(),
                                                                lstm.parameters()))
    torch.testing.assert_close(back(x)[0], lstm(x)[0], rtol=0, atol=0)


def test_projected_lstm_converts():
    lstm = nn.LSTM(3, 4, proj_size=2, num_layers=2, bidirectional=True).double()
    fused = fusedrnn.convert(lstm, copy=True)
    assert type(fused) is fusedrnn.LSTM and fused.proj_size == 2
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x)[0], lstm(x)[0], rtol=1e-10, atol=0)


def test_extra_buffers_carry_over_and_submodules_are_left_with_a_warning():
    gru = nn.GRU(3, 4)
    mask = torch.ones(4)
    gru.register_buffer("mask", mask)
    gru.register_buffer("scratch", torch.zeros(2), persistent=False)
    converted = fusedrnn.convert(gru)
    assert type(converted) is fusedrnn.GRU and converted.mask is mask
    assert converted.state_dict().keys() == gru.state_dict().keys()
    gru.extra = nn.Linear(4, 4)
    with pytest.warns(UserWarning, match="the root module .*it has submodules"):
        assert fusedrnn.convert(gru) is gru


def _parametrize(model):
    """Each kind of parametrization torch.nn.utils.parametrizations offers, on the Tagger's
    recurrent weights: weight norm, spectral norm (which steps its power iteration at every
    evaluation in training) and orthogonal."""
    weight_norm, spectral_norm, orthogonal = (nn.utils.parametrizations.weight_norm,
                                              nn.utils.parametrizations.spectral_norm,
                                              nn.utils.parametrizations.orthogonal)
    weight_norm(model.encoder[0], "weight_hh_l0")
    spectral_norm(model.encoder[0], "weight_ih_l1_reverse")
    orthogonal(model.layers[0], "weight_hh_l0")
    spectral_norm(model.layers[1], "weight_hh_l0")
    weight_norm(model.cells["lstm"], "weight_ih")
    spectral_norm(model.cells["gru"], "weight_hh")
    orthogonal(model.cells["rnn"], "weight_hh")
    return model


def test_parametrized_modules_convert_with_their_parametrizations():
    """A parametrized module converts, its parametrizations carried over with their original
    tensors: the same Parameter objects and state_dict, and in training the same outputs,
    gradients, optimizer steps and spectral-norm buffers as the unconverted model."""
    model, tokens = _parametrize(_tagger()), _tokens("cpu")
    fused = _parametrize(_tagger())
    originals = dict(fused.named_parameters())
    assert fusedrnn.convert(fused) is fused
    kinds = {type(m).__mro__[1] for m in fused.modules() if isinstance(m, TORCH_NN + FUSED)}
    assert kinds == set(FUSED)
    assert all(nn.utils.parametrize.is_parametrized(m)
               for m in fused.modules() if isinstance(m, FUSED))
    assert all(p is originals[name] for name, p in fused.named_parameters())
    assert fused.state_dict().keys() == model.state_dict().keys()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, fused)]
    for _ in range(3):
        results = [_outputs_and_gradients(m, tokens) for m in (model, fused)]
        assert_close_by_name(results[1], results[0], 1e-10)
        for m, optimizer, result in zip((model, fused), optimizers, results):
            for name, p in m.named_parameters():
                p.grad = result[f"grad_{name}"]
            optimizer.step()
    assert_close_by_name(fused.state_dict(), model.state_dict(), 1e-10)


def test_parametrized_modules_revert():
    model = _parametrize(_tagger())
    originals = dict(model.named_parameters())
    reverted = fusedrnn.revert(fusedrnn.convert(model))
    kinds = {type(m).__mro__[1] for m in reverted.modules() if isinstance(m, TORCH_NN + FUSED)}
    assert kinds == set(TORCH_NN)
    assert all(p is originals[name] for name, p in reverted.named_parameters())


def _train_in_step(model, other, x, steps=3):
    """`steps` SGD steps of each, checked at every step: outputs and parameter gradients at
    1e-10, then the parameters."""
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, other)]
    for _ in range(steps):
        results = []
        for m in (model, other):
            output, _ = m(x)
            names, parameters = zip(*m.named_parameters())
            grads = torch.autograd.grad(output.square().sum(), parameters)
            results.append({"output": output.detach(),
                            **{f"grad_{n}": g for n, g in zip(names, grads)}})
            for p, g in zip(parameters, grads):
                p.grad = g
        assert_close_by_name(results[1], results[0], 1e-10)
        for optimizer in optimizers:
            optimizer.step()
    assert_close_by_name(dict(other.named_parameters()), dict(model.named_parameters()), 1e-10)


def _hook_reparametrized(kind):
    """An LSTM whose weights a forward pre-hook computes: pruned, or the hook-based weight_norm."""
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2).double()
    if kind == "prune":
        nn.utils.prune.random_unstructured(lstm, "weight_hh_l0", 0.5)
        nn.utils.prune.l1_unstructured(lstm, "weight_ih_l1", 0.3)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates it for parametrize
            nn.utils.weight_norm(lstm, "weight_hh_l1")
    return lstm


@pytest.mark.parametrize("kind", ["prune", "weight_norm"])
def test_hook_reparametrized_modules_convert(kind):
    """torch.nn.utils.prune and the hook-based weight_norm: their parameters, buffers and
    forward pre-hooks carry over, and the converted module trains as the unconverted one."""
    model, fused = _hook_reparametrized(kind), _hook_reparametrized(kind)
    originals = dict(fused.named_parameters())
    fused = fusedrnn.convert(fused)  # the root itself is replaced
    assert type(fused) is fusedrnn.LSTM
    assert fused.state_dict().keys() == model.state_dict().keys()
    assert all(p is originals[name] for name, p in fused.named_parameters())
    assert originals.keys() == dict(fused.named_parameters()).keys()
    _train_in_step(model, fused, torch.randn(5, 2, 3, dtype=torch.float64))
    if kind == "prune":
        nn.utils.prune.remove(fused, "weight_hh_l0")  # the pruning's own undo works on it
        assert isinstance(fused.weight_hh_l0, nn.Parameter)


def test_hooks_carry_over_and_their_handles_still_remove_them():
    lstm = nn.LSTM(3, 4)
    calls = []
    handles = [
        lstm.register_forward_pre_hook(lambda m, args: calls.append("pre")),
        lstm.register_forward_hook(lambda m, args, out: calls.append("forward")),
        lstm.register_full_backward_hook(lambda m, gin, gout: calls.append("backward")),
        lstm.register_state_dict_post_hook(lambda m, state, prefix, local: calls.append("state")),
    ]
    fused = fusedrnn.convert(lstm)
    output, _ = fused(torch.randn(2, 1, 3, requires_grad=True))
    output.sum().backward()
    fused.state_dict()
    assert calls == ["pre", "forward", "backward", "state"]
    for handle in handles:
        handle.remove()
    calls.clear()
    fused(torch.randn(2, 1, 3, requires_grad=True))[0].sum().backward()
    fused.state_dict()
    assert calls == []


def test_shared_module_stays_shared_and_subclasses_stay():
    class MyGRU(nn.GRU):
        pass

    shared = nn.LSTMCell(3, 3)
    model = nn.ModuleList([shared, nn.Sequential(shared), MyGRU(3, 3)])
    with pytest.warns(UserWarning, match="left 2 .* it subclasses torch.nn.GRU"):
        fusedrnn.convert(model)
    assert type(model[0]) is fusedrnn.LSTMCell and model[1][0] is model[0]
    assert type(model[2]) is MyGRU


class _ScaledLSTM(nn.LSTM):
    """A subclass as forecasting libraries write them: Python around the base forward."""

    def forward(self, x, hx=None):
        out, state = super().forward(x, hx)
        return 2 * out, state


class _FusedScaledLSTM(fusedrnn.LSTM):
    def forward(self, x, hx=None):
        out, state = super().forward(x, hx)
        return 2 * out, state


def test_subclasses_are_left_with_a_warning_naming_them():
    model = nn.Sequential(_ScaledLSTM(4, 5), nn.GRU(5, 3))
    with pytest.warns(UserWarning, match=r"left 0 \(test_convert._ScaledLSTM\) as it is: it "
                                         r"subclasses torch.nn.LSTM.*derive it from "
                                         r"fusedrnn.LSTM"):
        converted = fusedrnn.convert(model)
    assert type(converted[0]) is _ScaledLSTM and type(converted[1]) is fusedrnn.GRU
    with pytest.warns(UserWarning, match=r"subclasses fusedrnn.LSTM.*derive it from torch.nn.LSTM"):
        fusedrnn.revert(nn.Sequential(_FusedScaledLSTM(4, 5)))


def test_converting_again_changes_nothing_and_says_nothing():
    """fusedrnn's cells are torch.nn cells too (isinstance holds): convert leaves them, and
    subclasses of them, as they are and silently, as it leaves fusedrnn's layers; revert warns
    about such a subclass."""
    class MyCell(fusedrnn.LSTMCell):
        pass

    model = fusedrnn.convert(_tagger())
    model.extra = MyCell(3, 3)
    before = list(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fusedrnn.convert(model) is model
    assert list(model.named_modules()) == before
    assert type(model.cells["lstm"]) is fusedrnn.LSTMCell
    assert isinstance(model.cells["lstm"], nn.LSTMCell)
    with pytest.warns(UserWarning, match="subclasses fusedrnn.LSTMCell.*from torch.nn.LSTMCell"):
        fusedrnn.revert(nn.Sequential(MyCell(3, 3)))


def test_a_subclass_derived_from_fusedrnn_matches_its_torch_nn_twin():
    """The route the warning names: the same subclass on fusedrnn.LSTM."""
    torch.manual_seed(0)
    theirs, ours = _ScaledLSTM(4, 5).double(), _FusedScaledLSTM(4, 5).double()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    (a, (h_a, c_a)), (b, (h_b, c_b)) = theirs(x), ours(x)
    for mine, reference in ((b, a), (h_b, h_a), (c_b, c_a)):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


def test_dynamic_quantization_takes_the_reverted_model():
    """quantize_dynamic quantizes torch.nn's LSTM and GRU by their exact classes: it leaves
    fusedrnn's in float (as the README says), and revert() hands it torch.nn's, which it
    quantizes, close to the float model."""
    quantize = torch.ao.quantization.quantize_dynamic
    torch.manual_seed(0)
    model = fusedrnn.convert(nn.Sequential(nn.LSTM(8, 16)))
    x = torch.randn(5, 3, 8)
    assert type(quantize(model, {nn.LSTM}, dtype=torch.qint8)[0]) is fusedrnn.LSTM
    quantized = quantize(fusedrnn.revert(model, copy=True), {nn.LSTM}, dtype=torch.qint8)
    assert type(quantized[0]) is torch.ao.nn.quantized.dynamic.LSTM
    expected = model(x)[0]
    assert (quantized(x)[0] - expected).norm() <= 0.05 * expected.norm()
