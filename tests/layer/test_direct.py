"""The direct calls (csrc/layer/direct.h): a module's or cell's CPU call that needs no gradient
runs every layer in one C++ call past the dispatcher. It must give what the dispatcher's path
gives, bit for bit, and step aside for whatever watches or transforms ops."""
import gc
import types

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fusedrnn
from fusedrnn import cells, modules, ops
from conftest import CELLS, assert_close_by_name, graph_names, make_pair, random_state

ALL_CELLS = list(CELLS)

# (T, B, I, H, options): every option of the layer loop, odd sizes, T=1, B=1.
CONFIGS = [
    (5, 3, 7, 11, {}),
    (1, 1, 3, 4, {}),
    (6, 3, 5, 9, {"bias": False}),
    (3, 4, 8, 6, {"batch_first": True}),
    (4, 2, 6, 5, {"num_layers": 2, "bidirectional": True}),
    (7, 1, 1, 1, {"num_layers": 3}),
    (1, 5, 13, 17, {"bidirectional": True, "bias": False}),
    (4, 3, 5, 7, {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
]

CELL_CLASSES = {"lstm": (torch.nn.LSTMCell, fusedrnn.LSTMCell, {}),
                "gru": (torch.nn.GRUCell, fusedrnn.GRUCell, {}),
                "rnn_tanh": (torch.nn.RNNCell, fusedrnn.RNNCell, {"nonlinearity": "tanh"}),
                "rnn_relu": (torch.nn.RNNCell, fusedrnn.RNNCell, {"nonlinearity": "relu"})}


def _config_id(config):
    T, B, I, H, options = config
    return f"T{T}-B{B}-I{I}-H{H}-" + ("-".join(f"{k}={v}" for k, v in options.items()) or "plain")


def _case(cell, config, dtype=torch.float64, seed=7):
    """A torch.nn and fusedrnn pair and random input and states. -> ref, fused, x, hx."""
    T, B, I, H, options = config
    ref, fused = make_pair(cell, I, H, "cpu", dtype, **options)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((B, T, I) if options.get("batch_first") else (T, B, I), generator=gen)
    hx = random_state(cell, ref, B, "cpu", dtype, gen)
    if "proj_size" in options:  # h is proj_size wide
        hx = (hx[0][..., :options["proj_size"]].contiguous(), hx[1])
    return ref, fused, x.to(dtype), hx


def _cell_pair(cell, I, H, bias):
    return make_pair(cell, I, H, dtype=torch.float64, bias=bias, classes=CELL_CLASSES)


def _fail(*args, **kwargs):
    raise AssertionError("the call did not take the direct C++ call")


def _without_direct_calls(monkeypatch):
    """Makes the direct calls decline, so that the calls take the dispatcher's path."""
    declining = types.SimpleNamespace(direct_module_forward=lambda *args: None,
                                      direct_packed_forward=lambda *args: None,
                                      direct_cell_forward=lambda *args: None,
                                      direct_cell_step=lambda *args: None)
    monkeypatch.setattr(modules, "_C", declining)
    monkeypatch.setattr(cells, "_C", declining)
    monkeypatch.setattr(ops._C, "direct_layer_node", lambda *args: None)
    monkeypatch.setattr(ops._C, "direct_layer_pair_node", lambda *args: None)


def _direct_and_dispatched(call, model, slow_paths, monkeypatch):
    """call() with the methods `slow_paths` of model's class made to fail, so that it must take
    the direct call; then call() with the direct calls declining. -> both results."""
    with monkeypatch.context() as patch:
        for name in slow_paths:
            patch.setattr(type(model), name, _fail)
        direct = call()
    with monkeypatch.context() as patch:
        _without_direct_calls(patch)
        dispatched = call()
    return direct, dispatched


def _states_of(out):
    """A cell's result as a list: (h, c) or h."""
    return list(out) if isinstance(out, tuple) else [out]


def _flat(results):
    output, states = results
    return [output, *(states if isinstance(states, tuple) else (states,))]


def _assert_equal(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert torch.equal(a, e)


def _no_gradient_modes():
    """The ways a call needs no gradient: no_grad, inference_mode, and grad mode with nothing
    that requires one (the module frozen)."""
    return [("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode),
            ("frozen", torch.enable_grad)]


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("mode", _no_gradient_modes(), ids=lambda m: m[0])
@pytest.mark.parametrize("cell,config", [(cell, config) for cell in ALL_CELLS for config in CONFIGS
                                         if cell == "lstm" or "proj_size" not in config[4]],
                         ids=lambda p: p if isinstance(p, str) else _config_id(p))
def test_module_matches_torch_nn_and_the_dispatcher_path(cell, config, mode, with_state,
                                                        monkeypatch):
    ref, fused, x, hx = _case(cell, config)
    hx = hx if with_state else None
    fused.requires_grad_(False)
    with mode[1]():
        expected = _flat(ref(x, hx))
        direct, dispatched = _direct_and_dispatched(
            lambda: _flat(fused(x, hx)), fused, ("_run_layers", "_prepare_input"), monkeypatch)
    names = ("output", "h_n", "c_n")
    assert_close_by_name(dict(zip(names, direct)), dict(zip(names, expected)), 1e-10)
    _assert_equal(direct, dispatched)
    assert not any(t.requires_grad for t in direct)


# (lengths, I, H, options) of packed calls: sorted or not, a batch of one, one-step lengths.
PACKED_CONFIGS = [
    ([6, 6, 3, 1], 5, 7, {}),
    ([1], 3, 4, {"bias": False}),
    ([4, 7, 1], 3, 5, {"num_layers": 2, "bidirectional": True}),
    ([2, 2, 2], 4, 6, {"num_layers": 3}),
    ([5, 2, 5], 4, 6, {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
]


def _packed_case(cell, config, sorted_lengths, dtype=torch.float64):
    """A torch.nn and fusedrnn pair, and a PackedSequence of random rows and random states in
    the caller's batch order (h proj_size wide where there is one). -> ref, fused, packed, hx."""
    lengths, I, H, options = config
    ref, fused = make_pair(cell, I, H, "cpu", dtype, **options)
    gen = torch.Generator().manual_seed(25)
    x = torch.randn(max(lengths), len(lengths), I, generator=gen).to(dtype)
    if sorted_lengths:
        lengths = sorted(lengths, reverse=True)
    hx = random_state(cell, ref, len(lengths), "cpu", dtype, gen)
    if "proj_size" in options:
        hx = (hx[0][..., :options["proj_size"]].contiguous(), hx[1])
    return ref, fused, _packed(x, lengths, sorted_lengths), hx


def _flat_packed(results):
    output, states = results
    return [output.data, *(states if isinstance(states, tuple) else (states,))]


@pytest.mark.parametrize("sorted_lengths", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("mode", _no_gradient_modes(), ids=lambda m: m[0])
@pytest.mark.parametrize("cell,config",
                         [(cell, config) for cell in ALL_CELLS for config in PACKED_CONFIGS
                          if cell == "lstm" or "proj_size" not in config[3]],
                         ids=lambda p: p if isinstance(p, str) else
                         "-".join(f"{k}{v}" for k, v in p[3].items()) or "plain")
def test_packed_module_matches_torch_nn_and_the_dispatcher_path(cell, config, mode, with_state,
                                                               sorted_lengths, monkeypatch):
    """A PackedSequence's call that needs no gradient runs in one C++ call
    (direct_packed_forward), the states moved into the sorted order and back: torch.nn's
    results, the dispatcher's path's bit for bit, and a PackedSequence with the input's
    batch_sizes and indices."""
    ref, fused, packed, hx = _packed_case(cell, config, sorted_lengths)
    hx = hx if with_state else None
    fused.requires_grad_(False)
    with mode[1]():
        expected = _flat_packed(ref(packed, hx))
        direct, dispatched = _direct_and_dispatched(
            lambda: _flat_packed(fused(packed, hx)), fused, ("_run_layers", "_prepare_input"),
            monkeypatch)
        output = fused(packed, hx)[0]
    names = ("output", "h_n", "c_n")
    assert_close_by_name(dict(zip(names, direct)), dict(zip(names, expected)), 1e-10)
    _assert_equal(direct, dispatched)
    assert not any(t.requires_grad for t in direct)
    assert all(a is b for a, b in zip(output[1:], packed[1:]))


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_packed_call_with_other_states_does_what_torch_nn_does(cell):
    """States of another batch size or width, which the direct call declines, do what they do
    in torch.nn: fewer rows or another width raise an error of its type; more rows than the
    batch pass, as torch.nn's moving them into the sorted order picks the batch's rows."""
    ref, fused, packed, hx = _packed_case(cell, PACKED_CONFIGS[0], False)
    states = hx if isinstance(hx, tuple) else (hx,)
    for other in ([s[:, :3] for s in states], [torch.cat([s, s], 1) for s in states],
                  [s[..., :4] for s in states]):
        other_hx = tuple(other) if isinstance(hx, tuple) else other[0]
        with torch.no_grad():
            try:
                expected = _flat_packed(ref(packed, other_hx))
            except RuntimeError as error:
                with pytest.raises(type(error)):
                    fused(packed, other_hx)
                continue
            assert_close_by_name(dict(enumerate(_flat_packed(fused(packed, other_hx)))),
                                 dict(enumerate(expected)), 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_packed_dropout_between_layers_as_the_dispatcher_path(cell, monkeypatch):
    """A packed training-mode call without grad drops out between layers, drawing what the
    dispatcher's path draws."""
    _, fused, packed, hx = _packed_case(cell, ([5, 3, 4, 5], 6, 8,
                                               {"num_layers": 3, "dropout": 0.5}), False)
    fused.train()

    def call():
        torch.manual_seed(5)
        return _flat_packed(fused(packed, hx))

    with torch.no_grad():
        _assert_equal(*_direct_and_dispatched(call, fused, ("_run_layers",), monkeypatch))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_in_every_dtype_as_the_dispatcher_path(cell, dtype, monkeypatch):
    ref, fused, x, hx = _case(cell, (6, 16, 9, 70, {"num_layers": 2}), dtype)  # 96 rows
    with torch.no_grad():
        _assert_equal(*_direct_and_dispatched(lambda: _flat(fused(x, hx)), fused,
                                              ("_run_layers",), monkeypatch))


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_states_of_any_layout(cell, monkeypatch):
    """Expanded, strided and offset states are read where they lie."""
    monkeypatch.setattr(fusedrnn.LSTM, "_run_layers", _fail)
    for klass in (fusedrnn.GRU, fusedrnn.RNN):
        monkeypatch.setattr(klass, "_run_layers", _fail)
    ref, fused, x, _ = _case(cell, (4, 3, 5, 6, {"num_layers": 2, "bidirectional": True}))
    gen = torch.Generator().manual_seed(3)
    count = 2 if cell == "lstm" else 1
    layouts = {
        "expanded": [torch.randn(4, 1, 6, generator=gen, dtype=torch.float64).expand(4, 3, 6)
                     for _ in range(count)],
        "strided": [torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).transpose(0, 1)
                    for _ in range(count)],
        "offset": [torch.randn(5, 3, 6, generator=gen, dtype=torch.float64)[1:]
                   for _ in range(count)],
    }
    for name, states in layouts.items():
        hx = tuple(states) if cell == "lstm" else states[0]
        contiguous = tuple(s.contiguous() for s in states) if cell == "lstm" else \
            states[0].contiguous()
        with torch.no_grad():
            _assert_equal(_flat(fused(x, hx)), _flat(fused(x, contiguous)))
            assert_close_by_name(dict(enumerate(_flat(fused(x, hx)))),
                                 dict(enumerate(_flat(ref(x, hx)))), 1e-10)


@pytest.mark.parametrize("units", [(1, False), (2, True)], ids=["one-unit", "stacked"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_results_are_tensors_of_their_own(cell, units):
    """The final states own their memory, as torch.nn's: writing one changes nothing else,
    and the next call changes none of them."""
    layers, bidirectional = units
    _, fused, x, hx = _case(cell, (3, 2, 4, 5, {"num_layers": layers,
                                                 "bidirectional": bidirectional}))
    with torch.no_grad():
        output, *states = _flat(fused(x, hx))
        kept = [t.clone() for t in (output, *states)]
        assert all(s.shape == (layers * (1 + bidirectional), 2, 5) and s.is_contiguous()
                   for s in states)
        for state in states:
            state.fill_(float("nan"))
        assert torch.equal(output, kept[0])
        fused(x * 2, hx)
        assert torch.equal(output, kept[0])
        assert all(torch.isnan(s).all() for s in states)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dropout_between_layers_as_the_dispatcher_path(cell, monkeypatch):
    """A training-mode call without grad drops out between layers, drawing what the
    dispatcher's path draws."""
    _, fused, x, hx = _case(cell, (5, 4, 6, 8, {"num_layers": 3, "dropout": 0.5}))
    fused.train()
    def call():
        torch.manual_seed(5)
        return _flat(fused(x, hx))

    with torch.no_grad():
        direct, dispatched = _direct_and_dispatched(call, fused, ("_run_layers",), monkeypatch)
        _assert_equal(direct, dispatched)
        fused.eval()
        assert not torch.equal(direct[0], fused(x, hx)[0])


class _Names:
    """Records the name of every function a mode sees."""

    def __init__(self):
        super().__init__()
        self.names = []

    def _record(self, func, args, kwargs):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class _OpNames(_Names, TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self._record(func, args, kwargs)


class _FunctionNames(_Names, TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self._record(func, args, kwargs)


class _Recorded(torch.Tensor):
    """A tensor subclass that records the functions it takes part in."""
    names = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.names.append(str(func))
        return super().__torch_function__(func, types, args, kwargs or {})


def _seen_ops(run):
    """-> the fusedrnn ops that a dispatch mode, a function mode and the profiler see in
    run()."""
    seen = {}
    with _OpNames() as mode:
        run()
    seen["dispatch mode"] = [n for n in mode.names if "fusedrnn" in n]
    with _FunctionNames() as mode:
        run()
    seen["function mode"] = [n for n in mode.names if "fusedrnn" in n]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    seen["profiler"] = [e.name for e in profile.events() if "fusedrnn" in e.name]
    return seen


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_weights_with_torch_function_see_the_ops(cell, monkeypatch):
    """A weight of a tensor subclass with __torch_function__ sees the op calls, as it sees
    torch.nn's."""
    _, fused, x, hx = _case(cell, (3, 2, 4, 5, {}))
    _, fused_cell = _cell_pair(cell, 4, 5, True)
    monkeypatch.setattr(_Recorded, "names", [])
    for model, name in ((fused, "weight_hh_l0"), (fused_cell, "weight_hh")):
        weight = getattr(model, name).detach().as_subclass(_Recorded)
        setattr(model, name, torch.nn.Parameter(weight, requires_grad=False))
    with torch.no_grad():
        for run in (lambda: fused(x, hx), lambda: fused_cell(x[0])):
            _Recorded.names.clear()
            run()
            assert any("fusedrnn" in n for n in _Recorded.names)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_watched_calls_go_through_the_dispatcher(cell):
    """Dispatch modes, function modes and the profiler see the ops, as they did before the
    direct calls."""
    _, fused, x, hx = _case(cell, (3, 2, 4, 5, {}))
    _, fused_cell = _cell_pair(cell, 4, 5, True)
    for mode in (torch.no_grad, torch.enable_grad):  # the modules' parameters require grad
        with mode():
            for run in (lambda: fused(x, hx), lambda: fused_cell(x[0])):
                for watcher, names in _seen_ops(run).items():
                    assert any(cell.split("_")[0] + "_forward" in n for n in names), watcher


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("mode", _no_gradient_modes(), ids=lambda m: m[0])
@pytest.mark.parametrize("shape", [(3, 7, 11, True), (1, 3, 4, True), (5, 13, 17, False)],
                         ids=lambda s: f"B{s[0]}-I{s[1]}-H{s[2]}" + ("" if s[3] else "-no-bias"))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_matches_torch_nn_and_the_dispatcher_path(cell, shape, mode, with_state,
                                                      monkeypatch):
    B, I, H, bias = shape
    ref, fused = _cell_pair(cell, I, H, bias)
    fused.requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, I, generator=gen, dtype=torch.float64)
    states = [torch.randn(B, H, generator=gen, dtype=torch.float64) for _ in range(2)]
    hx = (tuple(states) if cell == "lstm" else states[0]) if with_state else None

    with mode[1]():
        expected = _states_of(ref(x, hx))
        direct, dispatched = _direct_and_dispatched(
            lambda: _states_of(fused(x, hx)), fused, ("_step", "_inference_step"), monkeypatch)
    assert_close_by_name(dict(enumerate(direct)), dict(enumerate(expected)), 1e-10)
    _assert_equal(direct, dispatched)
    assert isinstance(fused(x, hx), tuple) == (cell == "lstm")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_reads_input_and_states_of_any_layout(cell, monkeypatch):
    ref, fused = _cell_pair(cell, 5, 6, True)
    monkeypatch.setattr(type(fused), "_step", _fail)
    monkeypatch.setattr(type(fused), "_inference_step", _fail)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 9, generator=gen, dtype=torch.float64)[:, 2:6].t()  # [4, 5], strided
    states = [torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)[1].t() for _ in range(2)]
    hx = tuple(states) if cell == "lstm" else states[0]
    contiguous = tuple(s.contiguous() for s in states) if cell == "lstm" else \
        states[0].contiguous()
    with torch.no_grad():
        ours, theirs = _states_of(fused(x, hx)), _states_of(ref(x.contiguous(), contiguous))
        _assert_equal(ours, _states_of(fused(x.contiguous(), contiguous)))
    assert_close_by_name(dict(enumerate(ours)), dict(enumerate(theirs)), 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_forced_backends_hold_for_direct_calls(cell, monkeypatch):
    """A backend forced with fusedrnn.backends.force runs the direct calls too: in float32 the
    two CPU backends round differently, and each direct call gives its backend's bits."""
    _, fused, x, hx = _case(cell, (5, 3, 7, 11, {"num_layers": 2, "bidirectional": True}),
                            torch.float32)
    results = {}
    for name in ("cpu-fused", "step"):
        with fusedrnn.backends.force(name), torch.no_grad():
            direct, dispatched = _direct_and_dispatched(lambda: _flat(fused(x, hx)), fused,
                                                        ("_run_layers",), monkeypatch)
        _assert_equal(direct, dispatched)
        results[name] = direct
    assert not all(torch.equal(a, b) for a, b in zip(results["cpu-fused"], results["step"]))


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("cell,config", [(cell, config) for cell in ALL_CELLS for config in CONFIGS
                                         if cell == "lstm" or "proj_size" not in config[4]],
                         ids=lambda p: p if isinstance(p, str) else _config_id(p))
def test_unbatched_module_calls(cell, config, with_state, monkeypatch):
    """Unbatched input [T, I] and states [L*D, H] take the direct call too."""
    ref, fused, x, hx = _case(cell, config)
    batch_dim = 0 if config[4].get("batch_first") else 1
    x = x.select(batch_dim, 0)  # [T, I], strided
    if with_state:
        hx = tuple(s[:, 0] for s in hx) if cell == "lstm" else hx[:, 0]
    else:
        hx = None
    with torch.no_grad():
        expected = _flat(ref(x, hx))
        direct, dispatched = _direct_and_dispatched(
            lambda: _flat(fused(x, hx)), fused, ("_run_layers", "_prepare_input"), monkeypatch)
    assert [t.shape for t in direct] == [t.shape for t in expected]
    assert_close_by_name(dict(enumerate(direct)), dict(enumerate(expected)), 1e-10)
    _assert_equal(direct, dispatched)


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_unbatched_cell_calls(cell, bias, with_state, monkeypatch):
    ref, fused = _cell_pair(cell, 5, 7, bias)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)[:, 1]  # [5], strided
    states = [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(2)]
    hx = (tuple(states) if cell == "lstm" else states[0]) if with_state else None
    with torch.no_grad():
        expected = _states_of(ref(x, hx))
        direct, dispatched = _direct_and_dispatched(
            lambda: _states_of(fused(x, hx)), fused, ("_step", "_inference_step"), monkeypatch)
    assert [t.shape for t in direct] == [t.shape for t in expected] == [(7,)] * len(expected)
    assert_close_by_name(dict(enumerate(direct)), dict(enumerate(expected)), 1e-10)
    _assert_equal(direct, dispatched)


# ---- a cell's step where a gradient may follow: one autograd node in C++ ---------------------
def _node_name(states):
    return states[0].grad_fn.name()


def _step_and_gradients(fused, x, hx, seed=9):
    """One step, and the gradients of a random projection of its states with respect to x, the
    states and every parameter that requires grad. -> (states, the node's name, gradients by
    name)."""
    out = _states_of(fused(x, hx))
    gen = torch.Generator().manual_seed(seed)
    loss = sum((s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum() for s in out)
    states = [] if hx is None else _states_of(hx)
    given = {"x": x, **{f"hx{k}": s for k, s in enumerate(states)},
             **dict(fused.named_parameters())}
    wrt = {name: t for name, t in given.items() if t.requires_grad}
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return [s.detach() for s in out], _node_name(out), dict(zip(wrt, grads))


@pytest.mark.parametrize("frozen", ["none", "weights", "input"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("shape", [(3, 7, 11, True), (1, 3, 4, True), (5, 13, 17, False),
                                   (None, 6, 9, True)],
                         ids=lambda s: f"B{s[0]}-I{s[1]}-H{s[2]}" + ("" if s[3] else "-no-bias"))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_step_with_gradients_matches_torch_nn_and_the_dispatcher_path(
        cell, shape, with_state, frozen, monkeypatch):
    """Where a gradient may follow, a CPU cell's step is one C++ autograd node (B None:
    unbatched). Its states and gradients are torch.nn's, and the Python autograd.Function's bit
    for bit (the same fused ops), whichever inputs require grad."""
    B, I, H, bias = shape
    ref, fused = _cell_pair(cell, I, H, bias)
    gen = torch.Generator().manual_seed(8)
    batch = () if B is None else (B,)
    x = torch.randn(*batch, I, generator=gen, dtype=torch.float64)
    states = [torch.randn(*batch, H, generator=gen, dtype=torch.float64).requires_grad_()
              for _ in range(2)]
    hx = (tuple(states) if cell == "lstm" else states[0]) if with_state else None
    x.requires_grad_(frozen != "input")
    for model in (ref, fused):
        model.requires_grad_(frozen != "weights")

    expected_states, _, expected = _step_and_gradients(ref, x, hx)
    (states_, name, grads), (dispatched_states, dispatched_name, dispatched) = \
        _direct_and_dispatched(lambda: _step_and_gradients(fused, x, hx), fused,
                               ("_step", "_inference_step"), monkeypatch)
    assert "RecurrenceNode" in name and "RecurrenceNode" not in dispatched_name
    assert grads.keys() == expected.keys() == dispatched.keys()
    assert_close_by_name(dict(enumerate(states_)), dict(enumerate(expected_states)), 1e-10)
    assert_close_by_name(grads, expected, 1e-10)
    _assert_equal(states_, dispatched_states)
    _assert_equal(list(grads.values()), list(dispatched.values()))
    assert all(grads[name].shape == expected[name].shape for name in expected)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_step_node_gradcheck_batched_and_twice(cell):
    """The node's gradients in float64 against finite differences, batched (vmap over the
    backward, which takes ATen's ops) and differentiated again; c computed from h, so that a
    gradient passed on twice would show."""
    _, fused = _cell_pair(cell, 3, 4, True)
    names = [name for name, _ in fused.named_parameters()]
    gen = torch.Generator().manual_seed(10)
    x, h = (torch.randn(2, n, generator=gen, dtype=torch.float64, requires_grad=True)
            for n in (3, 4))
    parameters = [p.detach().clone().requires_grad_() for p in fused.parameters()]

    def step(x, h, *parameters):
        hx = (h, 2 * h) if cell == "lstm" else h
        out = torch.func.functional_call(fused, dict(zip(names, parameters)), (x, hx))
        assert "RecurrenceNode" in _node_name(_states_of(out))
        return out

    assert torch.autograd.gradcheck(step, (x, h, *parameters), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(step, (x, h, *parameters), check_batched_grad=True)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch", [(3,), ()], ids=["batched", "unbatched"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_step_node_derivatives_to_the_third_match_torch_nn(cell, batch, bias):
    """A gradient penalty through the node, and that differentiated once more: the node's
    create_graph backward, on the activations it keeps as its own output, is differentiable
    again, and every second and third derivative is torch.nn's."""
    ref, fused = _cell_pair(cell, 5, 4, bias)
    gen = torch.Generator().manual_seed(14)
    x, h = (torch.randn(*batch, n, generator=gen, dtype=torch.float64) for n in (5, 4))
    weights = [torch.randn(*batch, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    results = []
    for model in (ref, fused):
        inputs = [x.clone().requires_grad_(), h.clone().requires_grad_()]
        hx = (inputs[1], inputs[1].sin()) if cell == "lstm" else inputs[1]
        states = _states_of(model(*inputs[:1], hx))
        loss = sum((s.pow(3) * w).sum() for s, w in zip(states, weights))
        wrt = [*inputs, *model.parameters()]
        first = torch.autograd.grad(loss, inputs, create_graph=True)
        penalty = sum(g.pow(2).sum() for g in first) + states[0].sum()
        second = torch.autograd.grad(penalty, wrt, create_graph=True)
        third = torch.autograd.grad(sum((g * g.detach().cos()).sum() for g in second), wrt,
                                    allow_unused=True)
        names = ["x", "h", *dict(model.named_parameters())]
        results.append({**{f"{n} second": g for n, g in zip(names, second)},
                        **{f"{n} third": g for n, g in zip(names, third) if g is not None}})
        results[-1]["node"] = _node_name(states)
    nodes = [result.pop("node") for result in results]
    assert "RecurrenceNode" in nodes[1] and "RecurrenceNode" not in nodes[0]
    assert results[1].keys() == results[0].keys()
    assert_close_by_name(results[1], results[0], 1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("layer", [False, True], ids=["cell", "layer"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_step_node_penalty_in_half_precision(cell, layer, dtype):
    """A penalty step through the node in bfloat16 and float16, whose LSTM and GRU keep their
    gates in float32: every gradient within a small multiple of torch.nn's own error against a
    float64 reference."""
    classes = CELLS if layer else CELL_CLASSES
    ref, fused = make_pair(cell, 8, 16, dtype=torch.float64, classes=classes)
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(*((1,) if layer else ()), 3, 8, generator=gen, dtype=torch.float64)
    states = [torch.randn(*((1,) if layer else ()), 3, 16, generator=gen, dtype=torch.float64)
              for _ in range(2)]

    def gradients(model, dtype):
        model = model.to(dtype)
        inputs = x.to(dtype).requires_grad_()
        hx = [s.to(dtype) for s in states]
        out = model(inputs, tuple(hx) if cell == "lstm" else hx[0])
        h = (out[0] if isinstance(out, tuple) else out).float()
        (d_x,) = torch.autograd.grad(h.pow(2).sum(), inputs, create_graph=True)
        grads = torch.autograd.grad(h.sum() + d_x.float().pow(2).sum(),
                                    [inputs, *model.parameters()])
        return (out[0] if isinstance(out, tuple) else out).grad_fn.name(), \
            [g.double() for g in grads]

    _, expected = gradients(ref, torch.float64)
    _, theirs = gradients(ref, dtype)
    node, ours = gradients(fused, dtype)
    assert "RecurrenceNode" in node
    for name, a, b, e in zip(["x", *dict(fused.named_parameters())], ours, theirs, expected):
        error, torch_error = ((a - e).norm() / e.norm()).item(), ((b - e).norm() / e.norm()).item()
        assert error <= 3 * torch_error, (name, error, torch_error)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_steps_in_a_loop_train_as_torch_nn(cell):
    """A cell run over a sequence in a Python loop (a decoder, a control policy), its loss
    summed over the steps and differentiated: torch.nn's gradients, in float32 too."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        ref, fused = make_pair(cell, 5, 16, dtype=dtype, classes=CELL_CLASSES)
        gen = torch.Generator().manual_seed(11)
        xs = torch.randn(12, 3, 5, generator=gen).to(dtype)
        results = []
        for model in (ref, fused):
            x = xs.clone().requires_grad_()
            hx, loss = None, 0
            for t in range(xs.size(0)):
                hx = model(x[t], hx)
                loss = loss + _states_of(hx)[0].pow(2).sum()
            grads = torch.autograd.grad(loss, [x, *model.parameters()])
            results.append(dict(zip(["x", *dict(model.named_parameters())], grads)))
        assert_close_by_name(results[1], results[0], tol)


@pytest.mark.parametrize("what", ["cell", "layer", "pair"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_node_keeps_torch_nns_rules(cell, what):
    """A cell's step and a layer's sequence, one direction or both: in-place edits of the
    results are allowed, as torch.nn's allow them; a second backward without retain_graph
    raises; saved-tensor hooks see what the node keeps."""
    if what == "cell":
        _, fused = _cell_pair(cell, 3, 4, True)
        x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    else:
        _, fused = make_pair(cell, 3, 4, "cpu", torch.float64, bidirectional=what == "pair")
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out = _states_of(fused(x)) if what == "cell" else fused(x)[:1]
    node = "LayerPairNode" if what == "pair" else "RecurrenceNode"
    assert node in " ".join(graph_names(out[0])) and packed
    out[0].mul_(2)
    out[0].sum().backward(retain_graph=True)
    out[0].sum().backward()
    with pytest.raises(RuntimeError, match="second time"):
        out[0].sum().backward()


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cell_steps_with_gradients_that_are_watched_go_through_the_dispatcher(cell):
    """Dispatch modes, function modes and the profiler see the ops of a step that may need a
    gradient too."""
    _, fused_cell = _cell_pair(cell, 4, 5, True)
    x = torch.randn(2, 4, dtype=torch.float64)
    for watcher, names in _seen_ops(lambda: fused_cell(x)).items():
        assert any(cell.split("_")[0] + "_forward" in n for n in names), watcher


def _assert_one_node_per_layer(ref, fused, call, x, wrt, monkeypatch, nodes=None):
    """call(model) -> its output tensor and final states, which, with the gradients of a random
    projection of them with respect to x (wrt "input"), x and every parameter ("all") or the
    parameters that require one ("trained"), must be torch.nn's, and the Functions' bit for
    bit; fused's call one C++ call (the module's Python layer loop unused), each of its layers
    one C++ node (`nodes` of them where given)."""
    def run(model):
        output, states = call(model)
        results = [output, *(states if isinstance(states, tuple) else (states,))]
        gen = torch.Generator().manual_seed(12)
        loss = sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum()
                   for r in results)
        parameters = [(n, p) for n, p in model.named_parameters()
                      if wrt == "all" or (wrt == "trained" and p.requires_grad)]
        wrt_tensors = {"x": x} if wrt != "trained" else {}
        wrt_tensors.update(parameters)
        grads = dict(zip(wrt_tensors, torch.autograd.grad(loss, list(wrt_tensors.values()))))
        return [r.detach() for r in results], " ".join(graph_names(output)), grads

    expected, _, expected_grads = run(ref)
    (results, name, grads), (dispatched, dispatched_name, dispatched_grads) = \
        _direct_and_dispatched(lambda: run(fused), fused, ("_run_layers", "_prepare_input"),
                               monkeypatch)
    node = "LayerPairNode" if fused.bidirectional else "RecurrenceNode"
    assert name.count(node) == (fused.num_layers if nodes is None else nodes)
    assert node not in dispatched_name
    assert_close_by_name(dict(enumerate(results)), dict(enumerate(expected)), 1e-10)
    assert_close_by_name(grads, expected_grads, 1e-10)
    _assert_equal(results, dispatched)
    _assert_equal(list(grads.values()), list(dispatched_grads.values()))


@pytest.mark.parametrize("wrt", ["all", "input"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("config", [(1, 3, 7, 11, {}), (1, 1, 3, 4, {"bias": False}),
                                    (1, 2, 5, 6, {"num_layers": 2, "batch_first": True}),
                                    (9, 3, 7, 11, {}), (5, 1, 3, 4, {"bias": False}),
                                    (6, 2, 5, 6, {"num_layers": 2, "batch_first": True}),
                                    (1, 2, 5, 6, {"bidirectional": True}),
                                    (8, 3, 7, 11, {"bidirectional": True}),
                                    (5, 1, 3, 4, {"bidirectional": True, "bias": False}),
                                    (6, 2, 5, 6, {"num_layers": 2, "bidirectional": True,
                                                  "batch_first": True})],
                         ids=_config_id)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_with_gradients_is_one_node_per_layer(cell, config, with_state, wrt,
                                                     monkeypatch):
    """A module in training, called over a sequence or one step at a time: each layer is one
    C++ node (RecurrenceNode for one direction, LayerPairNode for both). Output, final states
    and every gradient asked for (all, or the input's alone, where the node skips the weights'
    products) are torch.nn's, and the Functions' bit for bit; the output has memory of its own,
    as torch.nn's."""
    ref, fused, x, hx = _case(cell, config)
    hx = hx if with_state else None
    x.requires_grad_()
    _assert_one_node_per_layer(ref, fused, lambda model: model(x, hx), x, wrt, monkeypatch)
    output, states = fused(x, hx)
    first = states[0] if isinstance(states, tuple) else states
    assert output.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("cell,config", [(cell, config) for cell in ALL_CELLS for config in CONFIGS
                                         if cell == "lstm" or "proj_size" not in config[4]],
                         ids=lambda p: p if isinstance(p, str) else _config_id(p))
def test_unbatched_module_with_gradients_is_one_node_per_layer(cell, config, with_state,
                                                               monkeypatch):
    """Unbatched input [T, I] and states [L*D, H] in training: one C++ call, a node a layer,
    torch.nn's results and gradients (the states' too)."""
    ref, fused, x, hx = _case(cell, config)
    batch_dim = 0 if config[4].get("batch_first") else 1
    x = x.select(batch_dim, 0).detach().requires_grad_()  # [T, I]
    if with_state:
        hx = tuple(s[:, 0].requires_grad_() for s in hx) if cell == "lstm" else \
            hx[:, 0].requires_grad_()
    else:
        hx = None
    _assert_one_node_per_layer(ref, fused, lambda model: model(x, hx), x, "all", monkeypatch)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dropout_between_layers_with_gradients_as_the_dispatcher_path(cell, packed,
                                                                      monkeypatch):
    """A training call with gradients drops out between layers in the one C++ call, drawing
    what the dispatcher's path draws; its gradients are that path's, bit for bit."""
    lengths = [5, 3, 4, 5]
    ref, fused = make_pair(cell, 6, 8, "cpu", torch.float64, num_layers=3, dropout=0.5,
                           bidirectional=True)
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(5, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    hx = random_state(cell, ref, 4, "cpu", torch.float64, gen)
    fused.train()

    def call():
        torch.manual_seed(5)
        output, states = fused(_packed(x, lengths, False) if packed else x, hx)
        results = [output.data if packed else output,
                   *(states if isinstance(states, tuple) else (states,))]
        loss = sum((r * torch.randn(r.shape, generator=gen.manual_seed(6), dtype=r.dtype)).sum()
                   for r in results)
        return [r.detach() for r in results] + list(
            torch.autograd.grad(loss, [x, *fused.parameters()]))

    direct, dispatched = _direct_and_dispatched(call, fused, ("_run_layers", "_prepare_input"),
                                                monkeypatch)
    _assert_equal(direct, dispatched)
    fused.eval()
    assert not torch.equal(direct[0], call()[0])


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "pair"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_with_its_first_layer_frozen(cell, bidirectional, packed, monkeypatch):
    """A module whose first layer is frozen, on input that needs no gradient (a pretrained
    encoder's lower layers): the first layer runs without a node, the others as nodes, and
    the trained layers' gradients are torch.nn's."""
    lengths = [4, 6, 2]
    ref, fused = make_pair(cell, 5, 7, "cpu", torch.float64, num_layers=3,
                           bidirectional=bidirectional)
    for model in (ref, fused):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("_l0" not in name)
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)

    def call(model):
        output, states = model(_packed(x, lengths, False) if packed else x)
        return (output.data if packed else output), states

    _assert_one_node_per_layer(ref, fused, call, x, "trained", monkeypatch, nodes=2)


def _packed(x, lengths, sorted_lengths):
    """x [T, B, I] packed to `lengths`, sorted by them or not."""
    return pack_padded_sequence(x, lengths, enforce_sorted=sorted_lengths)


@pytest.mark.parametrize("wrt", ["all", "input"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("config", [([6, 6, 3, 1], 5, 7, True, {}),
                                    ([4, 7, 1], 3, 4, False, {"bias": False}),
                                    ([1], 2, 3, True, {}),
                                    ([5, 2, 5], 4, 6, False, {"num_layers": 2}),
                                    ([6, 6, 3, 1], 5, 7, True, {"bidirectional": True}),
                                    ([4, 7, 1], 3, 4, False,
                                     {"bidirectional": True, "bias": False}),
                                    ([5, 2, 5], 4, 6, False,
                                     {"num_layers": 2, "bidirectional": True})],
                         ids=lambda c: f"lengths{c[0]}-{'sorted' if c[3] else 'unsorted'}-"
                                       + "-".join(f"{k}{v}" for k, v in c[4].items()))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_with_packed_input_is_one_node_per_layer(cell, config, with_state, wrt,
                                                        monkeypatch):
    """A PackedSequence in training (sorted or not, a batch of one, lengths of one step): each
    layer is one C++ node over the packed rows, as over a padded batch. Output, final states and
    every gradient asked for are torch.nn's, and the Functions' bit for bit."""
    lengths, I, H, sorted_lengths, options = config
    ref, fused = make_pair(cell, I, H, "cpu", torch.float64, **options)
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(max(lengths), len(lengths), I, generator=gen, dtype=torch.float64,
                    requires_grad=True)
    hx = random_state(cell, ref, len(lengths), "cpu", torch.float64, gen) if with_state else None

    def call(model):
        output, states = model(_packed(x, lengths, sorted_lengths), hx)
        return output.data, states

    _assert_one_node_per_layer(ref, fused, call, x, wrt, monkeypatch)


def _projected_lstm_inputs(ref, lengths, I, gen):
    """x [T, B, I] as a leaf (T the longest of `lengths`, B their count), and random states (h
    proj_size wide) that need gradients."""
    T, B = max(lengths), len(lengths)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    units = ref.num_layers * (2 if ref.bidirectional else 1)
    hx = tuple(torch.randn(units, B, width, generator=gen, dtype=torch.float64,
                           requires_grad=True) for width in (ref.proj_size, ref.hidden_size))
    return x, hx


@pytest.mark.parametrize("wrt", ["all", "input"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("config", [([6, 6, 3, 1], 5, 7, {"proj_size": 4}),
                                    ([1, 1], 3, 4, {"proj_size": 2, "bias": False}),
                                    ([4, 7, 1], 3, 5, {"proj_size": 1, "num_layers": 2}),
                                    ([6, 6, 3, 1], 5, 7, {"proj_size": 4, "bidirectional": True}),
                                    ([5, 2, 5], 4, 6, {"proj_size": 3, "num_layers": 2,
                                                       "bidirectional": True, "bias": False})],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c[3].items())
                         + f"-T{max(c[0])}")
def test_lstm_with_projection_is_one_node_per_layer(config, packed, wrt, monkeypatch):
    """An LSTM with proj_size in training, padded or packed, one direction or both: each layer
    is one C++ node, whose results and gradients are torch.nn's, and the Functions' bit for
    bit."""
    lengths, I, H, options = config
    ref, fused = make_pair("lstm", I, H, "cpu", torch.float64, **options)
    x, hx = _projected_lstm_inputs(ref, lengths, I, torch.Generator().manual_seed(23))

    def call(model):
        output, states = model(_packed(x, lengths, False) if packed else x, hx)
        return (output.data if packed else output), states

    _assert_one_node_per_layer(ref, fused, call, x, wrt, monkeypatch)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "pair"])
def test_lstm_projection_node_gradcheck_and_penalty_step(bidirectional, packed):
    """The node of an LSTM with proj_size against finite differences, batched and twice (its
    create_graph and batched backward are the Function's, w_hr's gradient included); and a
    gradient penalty through it, torch.nn's gradients."""
    ref, fused = make_pair("lstm", 3, 4, "cpu", torch.float64, proj_size=2,
                           bidirectional=bidirectional)
    node = "LayerPairNode" if bidirectional else "RecurrenceNode"
    names = [name for name, _ in fused.named_parameters()]
    lengths = [2, 4, 3]
    x, hx = _projected_lstm_inputs(ref, lengths, 3, torch.Generator().manual_seed(24))
    parameters = [p.detach().clone().requires_grad_() for p in fused.parameters()]

    def run(model, x, hx, parameters=None):
        given = _packed(x, lengths, False) if packed else x
        if parameters is None:
            return model(given, hx)
        return torch.func.functional_call(model, dict(zip(names, parameters)), (given, hx))

    def step(x, h, c, *parameters):
        output, states = run(fused, x, (h, c), parameters)
        output = output.data if packed else output
        assert node in " ".join(graph_names(output))
        return (output, *states)

    assert torch.autograd.gradcheck(step, (x, *hx, *parameters), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(step, (x, *hx, *parameters), check_batched_grad=True)
    results = []
    for model in (ref, fused):
        x_leaf = x.detach().clone().requires_grad_()
        output, _ = run(model, x_leaf, hx)
        output = output.data if packed else output
        (d_x,) = torch.autograd.grad(output.pow(2).sum(), x_leaf, create_graph=True)
        results.append(torch.autograd.grad(d_x.pow(2).sum() + output.sum(),
                                           [x_leaf, *hx, *model.parameters()]))
    assert_close_by_name(dict(enumerate(results[1])), dict(enumerate(results[0])), 1e-10)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "pair"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_packed_node_gradcheck_and_penalty_step(cell, bidirectional):
    """The node over packed rows against finite differences, batched and twice (its
    create_graph and batched backward are the Function's, given the node's batch_sizes); and a
    gradient penalty through it, torch.nn's gradients."""
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64, bidirectional=bidirectional)
    node = "LayerPairNode" if bidirectional else "RecurrenceNode"
    names = [name for name, _ in fused.named_parameters()]
    gen = torch.Generator().manual_seed(22)
    lengths = [2, 4, 3]
    x = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    parameters = [p.detach().clone().requires_grad_() for p in fused.parameters()]

    def step(x, *parameters):
        output, states = torch.func.functional_call(
            fused, dict(zip(names, parameters)), (_packed(x, lengths, False),))
        assert node in " ".join(graph_names(output.data))
        return (output.data, *states) if isinstance(states, tuple) else (output.data, states)

    assert torch.autograd.gradcheck(step, (x, *parameters), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(step, (x, *parameters), check_batched_grad=True)
    results = []
    for model in (ref, fused):
        x_leaf = x.detach().clone().requires_grad_()
        output, _ = model(_packed(x_leaf, lengths, False))
        (d_x,) = torch.autograd.grad(output.data.pow(2).sum(), x_leaf, create_graph=True)
        results.append(torch.autograd.grad(d_x.pow(2).sum() + output.data.sum(),
                                           [x_leaf, *model.parameters()]))
    assert_close_by_name(dict(enumerate(results[1])), dict(enumerate(results[0])), 1e-10)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "pair"])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_node_gradcheck_and_in_place_output(cell, steps, bidirectional):
    """The layer's node against finite differences, batched and twice (over a sequence, its
    create_graph and batched backward are the Function's); and an output edited in place
    before the backward, as torch.nn allows."""
    ref, fused = make_pair(cell, 3, 4, "cpu", torch.float64, bidirectional=bidirectional)
    node = "LayerPairNode" if bidirectional else "RecurrenceNode"
    directions = 2 if bidirectional else 1
    names = [name for name, _ in fused.named_parameters()]
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(steps, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h = torch.randn(directions, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    parameters = [p.detach().clone().requires_grad_() for p in fused.parameters()]

    def step(x, h, *parameters):
        hx = (h, h.cos()) if cell == "lstm" else h
        output, states = torch.func.functional_call(fused, dict(zip(names, parameters)), (x, hx))
        assert node in " ".join(graph_names(output))
        return (output, *states) if isinstance(states, tuple) else (output, states)

    assert torch.autograd.gradcheck(step, (x, h, *parameters), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(step, (x, h, *parameters), check_batched_grad=True)
    grads = []
    for model in (ref, fused):
        output, _ = model(x, (h, h.cos()) if cell == "lstm" else h)
        output.mul_(3)
        grads.append(torch.autograd.grad(output.pow(2).sum(), [x, *model.parameters()]))
    assert_close_by_name(dict(enumerate(grads[1])), dict(enumerate(grads[0])), 1e-10)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "pair"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_node_penalty_step_takes_the_second_order_pass(cell, layers, bidirectional,
                                                              monkeypatch):
    """A gradient penalty over a sequence through the layer nodes: the create_graph backward
    goes to the Function's, whose second-order pass leaves its second half to the node (the
    node's next backward takes it up, as the Function's node does); every gradient is
    torch.nn's, and the node's context goes with the penalty's graph."""
    ref, fused = make_pair(cell, 5, 6, "cpu", torch.float64, num_layers=layers,
                           bidirectional=bidirectional)
    node = "LayerPairNode" if bidirectional else "RecurrenceNode"
    directions = 2 if bidirectional else 1
    gen = torch.Generator().manual_seed(16)
    xs = torch.randn(7, 3, 5, generator=gen, dtype=torch.float64)
    taken = []  # per call of _left_pass: its context's type, whether it took a pass up
    left_pass = ops._left_pass

    def spied(ctx, key):
        left = left_pass(ctx, key)
        taken.append((type(ctx).__name__, left is not None))
        return left

    monkeypatch.setattr(ops, "_left_pass", spied)
    results = []
    for model in (ref, fused):
        x = xs.clone().requires_grad_()
        output, _ = model(x)
        (d_x,) = torch.autograd.grad(output.pow(2).sum(), x, create_graph=True)
        grads = torch.autograd.grad(d_x.pow(2).sum() + output.sum(), [x, *model.parameters()])
        results.append(dict(zip(["x", *dict(model.named_parameters())], grads)))
        if model is fused:
            assert " ".join(graph_names(output)).count(node) == layers
            assert len(ops._node_contexts) == layers
    assert_close_by_name(results[1], results[0], 1e-10)
    # Each node's create_graph backward, then its backward that takes up the pass's half (a
    # pair's asks once a direction each time).
    calls = layers * directions
    assert taken == [("_NodeContext", False)] * calls + [("_NodeContext", True)] * calls
    del output, d_x
    gc.collect()
    assert len(ops._node_contexts) == 0
