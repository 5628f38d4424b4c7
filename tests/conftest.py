"""Shared helpers: device and dtype parameters, model pairs, and the comparison rules."""
import contextlib
import copy
import statistics

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import ops


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not fusedrnn.WITH_CUDA:
        return "fusedrnn was built without CUDA"
    return None


CUDA_SKIP = _cuda_skip_reason()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))),
]

# cell name -> (torch.nn class, fusedrnn class, extra constructor arguments)
CELLS = {
    "lstm": (nn.LSTM, fusedrnn.LSTM, {}),
    "gru": (nn.GRU, fusedrnn.GRU, {}),
    "rnn_tanh": (nn.RNN, fusedrnn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, fusedrnn.RNN, {"nonlinearity": "relu"}),
}

# Relative norm error allowed against torch.nn in the same dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
HALF_DTYPES = (torch.float16, torch.bfloat16)


@pytest.fixture(params=["grad", "no_grad"])
def either_grad_mode(request):
    """The test with grad mode on, then off: the modules take their direct path in both, the
    cells theirs without grad, and each must leave bad arguments to the general path's
    messages."""
    with torch.set_grad_enabled(request.param == "grad"):
        yield


@pytest.fixture(autouse=True)
def _exact_float32_on_cuda():
    """cuDNN uses TF32 for float32 by default; compare against exact float32 instead."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_pair(cell, input_size, hidden_size, device="cpu", dtype=torch.float32, seed=0,
              classes=CELLS, **options):
    """A torch.nn module and a fusedrnn module with the same (random) weights; `classes` maps
    the cell name to (torch.nn class, fusedrnn class, extra arguments)."""
    ref_cls, fused_cls, extra = classes[cell]
    torch.manual_seed(seed)
    ref = ref_cls(input_size, hidden_size, **extra, **options).to(device=device, dtype=dtype)
    fused = fused_cls(input_size, hidden_size, **extra, **options).to(device=device, dtype=dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def graph_names(tensor):
    """The names of every node of the graph behind tensor."""
    names, seen, todo = [], set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        todo += [next_node for next_node, _ in node.next_functions]
    return names


def random_state(cell, model, batch, device, dtype, generator):
    layers = model.num_layers * (2 if model.bidirectional else 1)
    shape = (layers, batch, model.hidden_size)
    h = torch.randn(shape, generator=generator).to(device, dtype)
    if cell == "lstm":
        return h, torch.randn(shape, generator=generator).to(device, dtype)
    return h


def run_and_grad(model, x, hx, probe_seed=1234, lengths=None, enforce_sorted=True):
    """Runs the model and differentiates a random projection of every output.

    With `lengths`, x is a padded batch that runs packed (pack_padded_sequence with
    enforce_sorted), and the output is padded back. Returns {name: tensor}: output, h_n (c_n),
    grad_input, grad_h0 (grad_c0) and grad_<parameter name> for every parameter.
    """
    skip_if_refused(model, x if lengths is None else
                    pack_padded_sequence(x, torch.tensor(lengths), model.batch_first,
                                         enforce_sorted))
    x = x.detach().requires_grad_()
    states = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
    states = tuple(s.detach().requires_grad_() for s in states)
    hx_arg = None if hx is None else (states if isinstance(hx, tuple) else states[0])
    if lengths is None:
        output, final = model(x, hx_arg)
    else:
        packed = pack_padded_sequence(x, torch.tensor(lengths), model.batch_first, enforce_sorted)
        output, final = model(packed, hx_arg)
        output, out_lengths = pad_packed_sequence(output, model.batch_first)
        assert out_lengths.tolist() == lengths
    finals = final if isinstance(final, tuple) else (final,)
    gen = torch.Generator().manual_seed(probe_seed)
    results = {"output": output}
    results.update(zip(("h_n", "c_n"), finals))
    loss = sum((t.double() * torch.randn(t.shape, generator=gen).to(t.device, torch.float64)).sum()
               for t in map(_real_view, results.values()))
    names = [name for name, _ in model.named_parameters()]
    inputs = [x, *states, *model.parameters()]
    grads = torch.autograd.grad(loss, inputs)
    results["grad_input"] = grads[0]
    results.update(zip(("grad_h0", "grad_c0"), grads[1:1 + len(states)]))
    results.update({f"grad_{n}": g for n, g in zip(names, grads[1 + len(states):])})
    return {k: v.detach() for k, v in results.items()}


def _real_view(tensor):
    """A complex tensor's real and imaginary parts as a real tensor: the loss takes both."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def make_complex_pair(cell, input_size, hidden_size, dtype, seed=0, classes=CELLS, **options):
    """make_pair's modules in complex `dtype`, every weight drawn with an imaginary part."""
    ref, fused = make_pair(cell, input_size, hidden_size, seed=seed, classes=classes, **options)
    ref, fused = ref.to(dtype), fused.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in ref.parameters():
            weight.copy_(0.4 * torch.randn(weight.shape, dtype=dtype, generator=gen))
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def run_packed_and_grad(model, padded, lengths, enforce_sorted, hx):
    """run_and_grad on `padded` run as a PackedSequence of `lengths`."""
    return run_and_grad(model, padded, hx, probe_seed=5, lengths=lengths,
                        enforce_sorted=enforce_sorted)


def rel_err(actual, expected):
    actual, expected = _real_view(actual).double().cpu(), _real_view(expected).double().cpu()
    scale = expected.norm()
    diff = (actual - expected).norm()
    return (diff / scale).item() if scale > 0 else diff.item()


def assert_close_by_name(actual, expected, tol):
    assert actual.keys() == expected.keys()
    errors = {k: rel_err(actual[k], expected[k]) for k in expected}
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


def half_rule_draws(cell):
    """How many input draws the half-precision rule takes its medians over. relu's derivative
    jumps at zero, so its gradient errors are heavy-tailed: in a draw where a unit lands on the
    other side of zero than in float64 they jump from ~0.004 to ~0.1-0.3, for fusedrnn and
    torch.nn alike (60 draws of the 2-layer bidirectional bfloat16 RNN of these tests: 5-25% of
    draws for either, about as often). Three draws leave the median to that lottery."""
    return 15 if cell == "rnn_relu" else 3


def assert_half_rule(runs, factor=3.0, floor=1e-4):
    """Half precision: our error against a float64 reference at most `factor` times torch.nn's
    own error against the same reference (plus a small floor for errors near zero).

    runs: a list of (ours, torch.nn's, float64 reference) result dicts, one per input draw. The
    rule holds on the medians over the draws, so that one relu unit landing on the other side
    of zero in half precision (where its derivative jumps) cannot decide alone."""
    bad = {}
    for k in runs[0][2]:
        e_ours = statistics.median(rel_err(ours[k], ref[k]) for ours, _, ref in runs)
        e_torch = statistics.median(rel_err(theirs[k], ref[k]) for _, theirs, ref in runs)
        if not e_ours <= factor * e_torch + floor:
            bad[k] = (e_ours, e_torch)
    assert not bad, f"(ours, torch.nn) median errors against float64 breaking the rule: {bad}"


def assert_matches(cell, fused, ref, x, hx, dtype):
    """Every result within TOLERANCE of torch.nn's. In float32 two correct implementations that
    sum in different orders (cuDNN's and ours) can differ by more on ill-conditioned values,
    such as small bias gradients: those must then be at least as close as torch.nn's to a
    float64 run of the same model."""
    ours, theirs = run_and_grad(fused, x, hx), run_and_grad(ref, x, hx)
    off = [k for k in theirs if not rel_err(ours[k], theirs[k]) <= TOLERANCE[dtype]]
    if dtype != torch.float32 or not off:
        assert not off, {k: rel_err(ours[k], theirs[k]) for k in off}
        return
    ref64 = copy.deepcopy(ref).double()
    as_double = tuple(s.double() for s in hx) if isinstance(hx, tuple) else hx.double()
    exact = run_and_grad(ref64, x.double(), as_double)
    worse = {k: (rel_err(ours[k], exact[k]), rel_err(theirs[k], exact[k])) for k in off}
    assert all(e_ours <= 2 * e_torch + 1e-6 for e_ours, e_torch in worse.values()), worse


@contextlib.contextmanager
def num_threads(n):
    """torch's CPU threads set to n for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Gate blocks of each cell.
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def refuse(*args, **kwargs):
    raise AssertionError("the path the test rules out ran")


class Without:
    """torch.ops.fusedrnn but the ops whose names contain `part`, which raise."""

    def __init__(self, ops, part):
        self.ops, self.part = ops, part

    def __getattr__(self, name):
        return refuse if self.part in name else getattr(self.ops, name)


def layer_args(cell, T, B, I, H, device, dtype=torch.float64, bias=True, seed=0):
    """Random arguments of one layer function, scaled so the gates are not saturated."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device, dtype)

    G = GATES[cell]
    args = [rand(T, B, I), rand(B, H)]
    if cell == "lstm":
        args.append(rand(B, H))
    args += [rand(G * H, I, scale=0.5), rand(G * H, H, scale=0.5)]
    args += [rand(G * H, scale=0.3), rand(G * H, scale=0.3)] if bias else [None, None]
    return args


def apply_layer(cell, args, reverse, batch_sizes=None):
    """The cell's autograd.Function on layer_args (as the layer functions apply it, forward AD
    included): its user-facing outputs (output, h_n[, c_n])."""
    if cell == "lstm":
        return ops._apply(ops.LSTMFunction, *args, reverse, batch_sizes)[:3]
    if cell == "gru":
        return ops._apply(ops.GRUFunction, *args, reverse, batch_sizes)[:2]
    return ops._apply(ops.RNNFunction, *args, cell == "rnn_relu", reverse, batch_sizes)[:2]


# ---- the switches a test can run under -------------------------------------------------------
CPU_ISAS = list(fusedrnn.backends.cpu_isas())


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Runs the test with the CPU kernels of each instruction set this machine runs
    (csrc/cpu/isa.h); tests/cpu/ uses it throughout."""
    with fusedrnn.backends.force_cpu_isa(request.param):
        yield request.param


@pytest.fixture(params=fusedrnn.backends.NAMES)
def backend(request):
    """Runs the test with every call forced onto each backend (csrc/layer/backend.h); run_and_grad
    skips, with the backend's reason, a call that backend refuses."""
    with fusedrnn.backends.force(request.param):
        yield request.param


def skip_if_refused(model, x):
    """Skips the test, saying why, when the forced backend refuses model(x)."""
    forced = fusedrnn.backends.forced()
    model = getattr(model, "cell", model)  # CellAsLayer
    if forced and isinstance(model, (fusedrnn.modules._FusedRNNBase, fusedrnn.cells._FusedCell)):
        why = fusedrnn.backends.explain(model, x).refusals[forced]
        if why is not None:
            pytest.skip(f"{forced} refuses this call: {why}")
