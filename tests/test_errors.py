"""Bad input: a clear Python exception, of the type torch.nn raises, never a crash."""
import pytest
import torch

import fusedrnn
from conftest import CELLS, CUDA_SKIP, make_pair

ALL_CELLS = list(CELLS)


pytestmark = pytest.mark.usefixtures("either_grad_mode")


def _state(cell, layers, batch, hidden, dtype=torch.float32):
    h = torch.randn(layers, batch, hidden, dtype=dtype)
    return (h, torch.randn(layers, batch, hidden, dtype=dtype)) if cell == "lstm" else h


def _both_raise(ref, fused, *args, match):
    """torch.nn and fusedrnn both reject the call with the same exception type; ours says
    `match`."""
    with pytest.raises(Exception) as theirs:
        ref(*args)
    with pytest.raises(theirs.type, match=match):
        fused(*args)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_wrong_feature_size(cell):
    ref, fused = make_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(3, 2, 6), match="input_size. Expected 4, got 6")


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 4)])
def test_wrong_number_of_dimensions(cell, shape):
    ref, fused = make_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(shape), match=f"2D or 3D, got {len(shape)}D")


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_input_dtype_differs_from_weights(cell, dtype):
    ref, fused = make_pair(cell, 4, 5)
    x = torch.randn(3, 2, 4).to(dtype)
    _both_raise(ref, fused, x, match="does not match weight dtype")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_zero_length_sequence(cell):
    ref, fused = make_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(0, 2, 4), match="sequence length")
    # torch.nn checks the sequence length last, after the dtypes and the state's shape.
    _both_raise(ref, fused, torch.randn(0, 2, 4, dtype=torch.float64),
                match="does not match weight dtype")
    _both_raise(ref, fused, torch.randn(0, 2, 4), _state(cell, 1, 3, 5),
                match=r"Expected hidden(\[0\])? size")


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("layers, batch, hidden", [(1, 3, 5), (2, 2, 5), (1, 2, 6)])
def test_hidden_state_of_wrong_shape(cell, layers, batch, hidden):
    ref, fused = make_pair(cell, 4, 5)
    hx = _state(cell, layers, batch, hidden)
    _both_raise(ref, fused, torch.randn(3, 2, 4), hx, match=r"Expected hidden(\[0\])? size")


def test_cell_state_of_wrong_shape():
    ref, fused = make_pair("lstm", 4, 5)
    hx = (torch.randn(1, 2, 5), torch.randn(1, 3, 5))
    _both_raise(ref, fused, torch.randn(3, 2, 4), hx, match=r"Expected hidden\[1\] size")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_hidden_state_dimensions_differ_from_input(cell):
    ref, fused = make_pair(cell, 4, 5)
    state = _state(cell, 1, 2, 5)
    two_d = tuple(s[0] for s in state) if cell == "lstm" else state[0]
    _both_raise(ref, fused, torch.randn(3, 2, 4), two_d, match="should also be 3-D")
    _both_raise(ref, fused, torch.randn(3, 4), _state(cell, 1, 1, 5), match="should also be 2-D")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_hidden_state_dtype_differs_from_input(cell):
    ref, fused = make_pair(cell, 4, 5)
    _both_raise(ref, fused, torch.randn(3, 2, 4), _state(cell, 1, 2, 5, torch.float64),
                match=r"hx dtype \(torch.float64\) does not match input dtype \(torch.float32\)")


def test_cell_state_dtype_differs_from_input():
    ref, fused = make_pair("lstm", 4, 5)
    hx = (torch.randn(1, 2, 5), torch.randn(1, 2, 5, dtype=torch.float64))
    _both_raise(ref, fused, torch.randn(3, 2, 4), hx, match="cx dtype")


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_hidden_state_on_another_device(cell):
    ref, fused = make_pair(cell, 4, 5, device="cuda")
    _both_raise(ref, fused, torch.randn(3, 2, 4, device="cuda"), _state(cell, 1, 2, 5),
                match="not at the same device")


def test_unsupported_options_say_so():
    with pytest.raises(ValueError, match="only supported for LSTM"):
        fusedrnn.GRU(4, 6, proj_size=3)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        fusedrnn.RNN(4, 6, nonlinearity="sigmoid")


@pytest.mark.parametrize("bad, match", [
    ({"input": torch.randn(3, 4)}, "input must be 3-D"),
    ({"input": torch.randn(0, 2, 4)}, "sequence length must be at least 1"),
    ({"h0": torch.randn(3, 5)}, r"h0 must have shape \[2, 5\]"),
    ({"w_ih": torch.randn(20, 3)}, r"w_ih must have shape \[20, 4\]"),
    ({"w_hh": torch.randn(19, 5)}, r"w_hh must be \[4\*H, H\]"),
    ({"w_hh": torch.randn(0, 0)}, "w_hh must have at least one hidden unit"),
    ({"b_ih": torch.randn(19)}, r"b_ih must have shape \[20\]"),
    ({"b_hh": None}, "pass both b_ih and b_hh"),
    ({"c0": torch.randn(2, 5, dtype=torch.float64)}, "c0 has dtype Double"),
])
def test_ops_validate_their_arguments(bad, match):
    args = dict(input=torch.randn(3, 2, 4), h0=torch.randn(2, 5), c0=torch.randn(2, 5),
                w_ih=torch.randn(20, 4), w_hh=torch.randn(20, 5), b_ih=torch.randn(20),
                b_hh=torch.randn(20))
    args.update(bad)
    with pytest.raises((RuntimeError, TypeError), match=match):
        torch.ops.fusedrnn.lstm_forward(*args.values(), False, False)


def test_ops_reject_integer_tensors():
    args = [torch.ones(3, 2, 4, dtype=torch.int32), torch.ones(2, 5, dtype=torch.int32),
            torch.ones(5, 4, dtype=torch.int32), torch.ones(5, 5, dtype=torch.int32), None, None]
    with pytest.raises(RuntimeError, match="unsupported dtype Int"):
        torch.ops.fusedrnn.rnn_forward(*args, False, False)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_integer_modules(cell):
    """Integer weights and input: a RuntimeError, as torch.nn raises (except for its relu RNN,
    which runs in integer arithmetic; fusedrnn has no integer kernels)."""
    ref, fused = make_pair(cell, 4, 5)
    for model in (ref, fused):
        for p in model.parameters():
            p.requires_grad_(False)
            p.data = p.data.long()
    x = torch.ones(3, 2, 4, dtype=torch.long)
    if cell == "rnn_relu":
        with pytest.raises(RuntimeError, match="unsupported dtype Long"):
            fused(x)
    else:
        _both_raise(ref, fused, x, match="unsupported dtype Long")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_one_weight_of_another_dtype(cell):
    ref, fused = make_pair(cell, 4, 5)
    for model in (ref, fused):
        model.weight_hh_l0.data = model.weight_hh_l0.data.double()
    _both_raise(ref, fused, torch.randn(3, 2, 4), match="w_hh has dtype Double")


def test_lstm_state_of_three_tensors():
    ref, fused = make_pair("lstm", 4, 5)
    h = torch.randn(1, 2, 5)
    _both_raise(ref, fused, torch.randn(3, 2, 4), (h, h, h), match="lstm expects two hidden states")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_module_on_meta(cell):
    """Parameters on `meta` (never materialised) and a CPU input: torch.nn's error, never
    tensors of uninitialised memory."""
    ref_cls, fused_cls, extra = CELLS[cell]
    x = torch.randn(3, 2, 4)
    _both_raise(ref_cls(4, 5, device="meta", **extra), fused_cls(4, 5, device="meta", **extra), x,
                match="not at the same device")


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_on_meta(cell):
    ref = getattr(torch.nn, cell)(4, 5, device="meta")
    fused = getattr(fusedrnn, cell)(4, 5, device="meta")
    with pytest.raises(RuntimeError):
        ref(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="on meta"):
        fused(torch.randn(2, 4))


def _lstm_forward_args():
    return dict(input=torch.randn(3, 2, 4), h0=torch.randn(2, 5), c0=torch.randn(2, 5),
                w_ih=torch.randn(20, 4), w_hh=torch.randn(20, 5), b_ih=torch.randn(20),
                b_hh=torch.randn(20))


@pytest.mark.parametrize("name", list(_lstm_forward_args()))
def test_ops_reject_an_argument_on_meta(name):
    """Every tensor argument of an op on the input's device: one on `meta` (which sends the
    call to the fake kernel) raises, whichever it is, the input included."""
    args = _lstm_forward_args()
    args[name] = args[name].to("meta")
    other = "h0" if name == "input" else name
    with pytest.raises(RuntimeError, match=f"{other} is on (meta|cpu) but input is on"):
        torch.ops.fusedrnn.lstm_forward(*args.values(), False, True)


def test_backward_op_rejects_saved_tensors_on_meta():
    lib = torch.ops.fusedrnn
    args = _lstm_forward_args()
    out, hn, cn, gates, cells, _ = lib.lstm_forward(*args.values(), False, True)
    inputs = [args[k] for k in ("input", "h0", "c0", "w_ih", "w_hh")]
    with pytest.raises(RuntimeError, match="gates is on meta but input is on cpu"):
        lib.lstm_backward(torch.ones_like(out), None, None, *inputs, out, gates.to("meta"), cells,
                          True, False)


# Faults a call may carry: each draw of the test below combines one or two.
FAULTS = ("feature_size", "input_float64", "input_int64", "no_steps", "input_4d", "state_batch",
          "state_layers", "state_width", "state_dtype", "state_dims", "state_count")


def _faulty_call(draw):
    """A module or cell, torch.nn's and fusedrnn's, and a call on it with one or two faults.
    -> ref, fused, args, faults."""
    rng = torch.Generator().manual_seed(draw)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    cell, is_cell = pick(ALL_CELLS), bool(draw % 3 == 0)
    faults = {pick(FAULTS) for _ in range(pick([1, 2]))}
    I, H, B, T = pick([1, 3, 4]), pick([1, 5]), pick([1, 2, 3]), pick([1, 2, 4])
    if is_cell:
        from test_cells import make_cell_pair
        ref, fused = make_cell_pair(cell, I, H, seed=draw)
        layers, shape = 1, (B, I)
    else:
        options = {"num_layers": pick([1, 2]), "bidirectional": pick([False, True]),
                   "batch_first": pick([False, True])}
        ref, fused = make_pair(cell, I, H, seed=draw, **options)
        layers = options["num_layers"] * (2 if options["bidirectional"] else 1)
        shape = (B, T, I) if options["batch_first"] else (T, B, I)
        if "no_steps" in faults:
            shape = (B, 0, I) if options["batch_first"] else (0, B, I)
    if "feature_size" in faults:
        shape = (*shape[:-1], I + 1)
    if "input_4d" in faults:
        shape = (*shape, 1)
    x = torch.randn(shape, generator=rng)
    x = x.double() if "input_float64" in faults else (
        x.long() if "input_int64" in faults else x)
    state_shape = [B, H] if is_cell else [layers, B, H]
    if "state_batch" in faults:
        state_shape[-2] += 1
    if "state_layers" in faults and not is_cell:
        state_shape[0] += 1
    if "state_width" in faults:
        state_shape[-1] += 1
    if "state_dims" in faults:
        state_shape = state_shape[1:]
    dtype = torch.float64 if "state_dtype" in faults else torch.float32
    states = [torch.randn(state_shape, generator=rng, dtype=dtype) for _ in range(2)]
    if cell != "lstm":
        return ref, fused, (x, states[0]), faults
    if "state_count" in faults:
        states = states[:1] if draw % 2 else states + states[:1]
    return ref, fused, (x, tuple(states)), faults


@pytest.mark.parametrize("draw", range(60))
def test_drawn_faulty_calls_raise_as_torch_nn(draw):
    """One or two faults drawn into a call of a module or cell: fusedrnn raises the exception
    type torch.nn raises, the first fault torch.nn checks deciding which (where torch.nn itself
    fails with an IndexError, fusedrnn raises a clear error of its own), and gives torch.nn's
    results where a drawn fault is harmless to torch.nn."""
    ref, fused, args, faults = _faulty_call(draw)
    try:
        expected = ref(*args)
    except IndexError:  # torch.nn's own indexing fails on some wrong shapes
        with pytest.raises((IndexError, RuntimeError, ValueError)):
            fused(*args)
        return
    except Exception as theirs:  # noqa: BLE001: any type, matched below
        with pytest.raises(type(theirs)):
            fused(*args)
        return
    got = fused(*args)
    for a, b in zip(torch.utils._pytree.tree_leaves(got),
                    torch.utils._pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, b, msg=f"faults {sorted(faults)}")
