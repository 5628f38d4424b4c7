"""fusedrnn.LSTM/GRU/RNN against torch.nn: outputs, final states and every gradient."""

import random

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fusedrnn
from conftest import (CELLS, CUDA_SKIP, DEVICES, HALF_DTYPES, TOLERANCE, assert_close_by_name,
                      assert_half_rule, assert_matches, half_rule_draws, make_complex_pair,
                      make_pair, random_state, rel_err, run_and_grad)

ALL_CELLS = list(CELLS)

# (T, B, I, H, options): the options that change the code path, odd sizes, T=1, B=1.
CONFIGS = [
    (5, 3, 7, 11, {}),
    (4, 2, 6, 5, {"num_layers": 2, "bidirectional": True}),
    (6, 3, 5, 9, {"bias": False}),
    (3, 4, 8, 6, {"batch_first": True}),
    (1, 1, 3, 4, {}),
    (7, 1, 1, 1, {"num_layers": 2}),
    (1, 5, 13, 17, {"bidirectional": True, "bias": False}),
    (9, 2, 4, 3, {"num_layers": 3, "bidirectional": True, "batch_first": True}),
]


def _config_id(config):
    T, B, I, H, options = config
    return f"T{T}-B{B}-I{I}-H{H}-" + ("-".join(f"{k}={v}" for k, v in options.items()) or "plain")


def _inputs(cell, model, T, B, I, device, dtype, batch_first=False, with_state=True, seed=7):
    gen = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    hx = random_state(cell, model, B, device, dtype, gen) if with_state else None
    return x, hx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_matches_torch_nn(cell, config, dtype, device, backend):
    T, B, I, H, options = config
    ref, fused = make_pair(cell, I, H, device, dtype, **options)
    x, hx = _inputs(cell, ref, T, B, I, device, dtype, options.get("batch_first", False))
    assert_matches(cell, fused, ref, x, hx, dtype)


def _drawn_case(draw):
    """The options that change the code path drawn together, as users combine them, on odd
    sizes: -> cell, (T, B, I, H, options), lengths of a packed batch or None, enforce_sorted,
    whether hx is given. H from 2: a single tanh unit fed many inputs saturates, and there
    either library's float64 rounding of its derivative, amplified, reached 1.9e-10."""
    rng = random.Random(draw)
    cell = rng.choice(ALL_CELLS)
    T, B = rng.choice([1, 2, 5, 13, 40]), rng.choice([1, 2, 3, 8, 17, 33])
    I, H = rng.choice([1, 3, 7, 16, 33]), rng.choice([2, 5, 8, 17, 31, 64])
    options = {"num_layers": rng.choice([1, 2, 3]), "bidirectional": rng.random() < 0.5,
               "batch_first": rng.random() < 0.5, "bias": rng.random() < 0.8}
    if cell == "lstm" and rng.random() < 0.4:
        options["proj_size"] = rng.randint(1, H - 1)
    lengths, enforce_sorted = None, True
    if rng.random() < 0.4:
        lengths = sorted((rng.randint(1, T) for _ in range(B)), reverse=True)
        lengths[0] = T  # padded back to T
        enforce_sorted = rng.random() < 0.5
        if not enforce_sorted:
            rng.shuffle(lengths)
    return cell, (T, B, I, H, options), lengths, enforce_sorted, rng.random() < 0.7


@pytest.mark.parametrize("draw", range(40))
def test_drawn_option_combinations_match_torch_nn(draw):
    cell, config, lengths, enforce_sorted, with_state = _drawn_case(draw)
    T, B, I, H, options = config
    ref, fused = make_pair(cell, I, H, "cpu", torch.float64, seed=draw, **options)
    x, hx = _inputs(cell, ref, T, B, I, "cpu", torch.float64, options["batch_first"],
                    with_state, seed=draw)
    if hx is not None and "proj_size" in options:  # h is proj_size wide
        hx = (hx[0][..., :options["proj_size"]].contiguous(), hx[1])
    results = [run_and_grad(model, x, hx, lengths=lengths, enforce_sorted=enforce_sorted)
               for model in (fused, ref)]
    assert_close_by_name(*results, TOLERANCE[torch.float64])


def _results(outputs):
    output, states = outputs
    states = states if isinstance(states, tuple) else (states,)
    return dict(zip(("output", "h_n", "c_n"), (output, *states)))


DIRECT_CONFIGS = CONFIGS + [(4, 3, 5, 7, {"proj_size": 3, "num_layers": 2})]


def _direct_path_case(cell, config, with_state, monkeypatch):
    """A torch.nn and fusedrnn pair (float64, CPU) and their input, with fusedrnn's general path
    made to fail: the call must take the direct path. -> ref, fused, x, hx."""
    T, B, I, H, options = config
    if cell != "lstm" and "proj_size" in options:
        pytest.skip("proj_size is the LSTM's")
    ref, fused = make_pair(cell, I, H, "cpu", torch.float64, **options)
    x, hx = _inputs(cell, ref, T, B, I, "cpu", torch.float64, options.get("batch_first", False),
                    with_state)
    if hx is not None and "proj_size" in options:  # h is proj_size wide
        hx = (hx[0][..., :options["proj_size"]].contiguous(), hx[1])

    def general_path(*args):
        raise AssertionError("the direct path deferred to the general path")

    monkeypatch.setattr(type(fused), "_prepare_input", general_path)
    return ref, fused, x, hx


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("config", DIRECT_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_inference_matches_torch_nn(cell, config, mode, with_state, monkeypatch):
    """Calls that need no gradient take the modules' direct path straight to the layer ops, and
    give torch.nn's results."""
    ref, fused, x, hx = _direct_path_case(cell, config, with_state, monkeypatch)
    with mode():
        expected, actual = _results(ref(x, hx)), _results(fused(x, hx))
    assert_close_by_name(actual, expected, 1e-10)


@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no-hx"])
@pytest.mark.parametrize("config", DIRECT_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_training_on_the_direct_path_matches_torch_nn(cell, config, with_state, monkeypatch):
    """With a gradient to take, the modules' direct path runs every layer as its autograd node,
    in one C++ call: every output and gradient as torch.nn's, without the general path."""
    ref, fused, x, hx = _direct_path_case(cell, config, with_state, monkeypatch)
    assert_close_by_name(run_and_grad(fused, x, hx), run_and_grad(ref, x, hx), 1e-10)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_activation_checkpointing(cell, reentrant, packed):
    """torch.utils.checkpoint around a module, which runs its forward again in the backward (with
    dropout's masks drawn again as the first time): the gradients of the call without it, bit
    for bit, and in evaluation mode torch.nn's."""
    ref, fused = make_pair(cell, 5, 7, "cpu", torch.float64, num_layers=2, bidirectional=True,
                           dropout=0.3)
    gen = torch.Generator().manual_seed(41)
    x = torch.randn(6, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(6, 3, 14, generator=gen, dtype=torch.float64)
    lengths = [6, 2, 4]

    def gradients(model, checkpointed):
        def call(x):
            given = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) \
                if packed else x
            output, states = model(given)
            if packed:
                output = nn.utils.rnn.pad_packed_sequence(output)[0]
            return (output, *(states if isinstance(states, tuple) else (states,)))

        torch.manual_seed(3)
        results = torch.utils.checkpoint.checkpoint(call, x, use_reentrant=reentrant) \
            if checkpointed else call(x)
        loss = (results[0] * probe).sum() + sum(r.pow(2).sum() for r in results[1:])
        leaves = [x, *model.parameters()]
        for leaf in leaves:
            leaf.grad = None
        loss.backward()  # the reentrant checkpoint's backward takes no `inputs`
        return [leaf.grad for leaf in leaves]

    for checkpointed, plain in zip(gradients(fused, True), gradients(fused, False)):
        assert torch.equal(checkpointed, plain)
    ref.eval(), fused.eval()
    names = ["x", *dict(fused.named_parameters())]
    assert_close_by_name(dict(zip(names, gradients(fused, True))),
                         dict(zip(names, gradients(ref, True))), 1e-10)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_saved_tensor_hooks(cell):
    """torch.autograd.graph.saved_tensors_hooks (activation offloading, compression): the
    tensors a layer saves for its backward go through the hooks, here kept aside under a key and
    handed back by it, and the gradients are torch.nn's."""
    ref, fused = make_pair(cell, 5, 7, "cpu", torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    grads = {}
    for name, model in (("torch", ref), ("fused", fused)):
        kept = []

        def pack(tensor):
            kept.append(tensor.clone())
            return len(kept) - 1

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda key: kept[key]):
            output, _ = model(x)
        assert kept, "nothing saved went through the hooks"
        grads[name] = dict(zip(dict(model.named_parameters()),
                               torch.autograd.grad(output.square().sum(), model.parameters())))
    assert_close_by_name(grads["fused"], grads["torch"], 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_default_state_is_zeros(cell, device):
    ref, fused = make_pair(cell, 4, 6, device, torch.float64, num_layers=2)
    x, _ = _inputs(cell, ref, 5, 3, 4, device, torch.float64)
    assert_close_by_name(run_and_grad(fused, x, None), run_and_grad(ref, x, None), 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_long_sequence(cell, dtype, device, backend):
    ref, fused = make_pair(cell, 5, 8, device, dtype, bidirectional=True)
    x, hx = _inputs(cell, ref, 1000, 2, 5, device, dtype)
    assert_matches(cell, fused, ref, x, hx, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_unbatched_input(cell, batch_first, device):
    ref, fused = make_pair(cell, 4, 5, device, torch.float64, num_layers=2,
                           batch_first=batch_first)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64).to(device)
    hx = random_state(cell, ref, 1, device, torch.float64, gen)
    hx = tuple(s.squeeze(1) for s in hx) if cell == "lstm" else hx.squeeze(1)
    ours, theirs = run_and_grad(fused, x, hx), run_and_grad(ref, x, hx)
    assert ours["output"].shape == theirs["output"].shape == (6, 5)
    assert_close_by_name(ours, theirs, 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_only_final_state_used(cell, device):
    """Gradients when the loss ignores the output (the backward gets no grad_output)."""
    ref, fused = make_pair(cell, 3, 4, device, torch.float64, num_layers=2)
    x, hx = _inputs(cell, ref, 6, 2, 3, device, torch.float64)

    def grads(model):
        xr = x.clone().requires_grad_()
        _, final = model(xr, hx)
        h_n = final[0] if isinstance(final, tuple) else final
        return torch.autograd.grad(h_n.pow(2).sum(), [xr, *model.parameters()])

    for ours, theirs in zip(grads(fused), grads(ref)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_empty_batch(cell, device):
    ref, fused = make_pair(cell, 3, 4, device, torch.float32, num_layers=2)
    x = torch.randn(5, 0, 3, device=device, requires_grad=True)
    ours, theirs = fused(x), ref(x)
    assert ours[0].shape == theirs[0].shape == (5, 0, 4)
    ours[0].sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_non_contiguous_input(cell, device):
    ref, fused = make_pair(cell, 4, 5, device, torch.float64)
    base = torch.randn(6, 3, 8, dtype=torch.float64, device=device)
    x = base[:, :, ::2]
    assert not x.is_contiguous()
    assert_close_by_name(run_and_grad(fused, x, None), run_and_grad(ref, x, None), 1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_nan_and_inf_propagate_like_torch_nn(cell, device):
    ref, fused = make_pair(cell, 4, 5, device, torch.float64)
    x = torch.randn(6, 3, 4, dtype=torch.float64, device=device)
    x[2, 0, 1] = float("nan")
    x[4, 1, 0] = float("inf")
    x[1, 2, 3] = -float("inf")
    with torch.no_grad():
        ours, theirs = fused(x), ref(x)
    torch.testing.assert_close(ours[0], theirs[0], equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["f16", "bf16"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_half_precision_rule(cell, dtype, device, backend):
    """float16/bfloat16: error against float64 at most a small multiple of torch.nn's own."""
    # relu's derivative jumps at zero: keep few units near it, so the medians are meaningful.
    T, B, I, H = (6, 2, 8, 8) if cell == "rnn_relu" else (20, 4, 16, 32)
    options = dict(num_layers=2, bidirectional=True)
    runs = []
    for seed in range(half_rule_draws(cell)):
        ref, fused = make_pair(cell, I, H, device, dtype, seed=seed, **options)
        ref64 = CELLS[cell][0](I, H, **options, **CELLS[cell][2]).double()
        ref64.load_state_dict({k: v.double().cpu() for k, v in ref.state_dict().items()})
        x, hx = _inputs(cell, ref, T, B, I, device, dtype, seed=seed)
        hx64 = tuple(s.double().cpu() for s in hx) if cell == "lstm" else hx.double().cpu()
        runs.append((run_and_grad(fused, x, hx), run_and_grad(ref, x, hx),
                     run_and_grad(ref64, x.double().cpu(), hx64)))
    assert_half_rule(runs)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_same_initialisation_and_parameters(cell):
    ref_cls, fused_cls, extra = CELLS[cell]
    options = dict(num_layers=2, bidirectional=True, **extra)
    torch.manual_seed(11)
    ref = ref_cls(6, 7, **options)
    torch.manual_seed(11)
    fused = fused_cls(6, 7, **options)
    ours, theirs = dict(fused.named_parameters()), dict(ref.named_parameters())
    assert list(ours) == list(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_state_dict_loads_strictly_both_ways(cell):
    ref, fused = make_pair(cell, 5, 6, num_layers=2, bidirectional=True, bias=False)
    fresh_ref, fresh_fused = make_pair(cell, 5, 6, seed=99, num_layers=2, bidirectional=True,
                                       bias=False)
    fresh_fused.load_state_dict(ref.state_dict(), strict=True)
    fresh_ref.load_state_dict(fused.state_dict(), strict=True)
    for name, value in ref.state_dict().items():
        assert torch.equal(fresh_fused.state_dict()[name], value)
        assert torch.equal(fresh_ref.state_dict()[name], value)


def _new_parameter(module, name, value):
    setattr(module, name, nn.Parameter(value))


def _load_assigned(module, name, value):
    module.load_state_dict({**module.state_dict(), name: value}, assign=True)


def _edit_data(module, name, value):
    getattr(module, name).data.copy_(value)


def _optimizer_step(module, name, value):
    weight = getattr(module, name)
    weight.grad = weight.detach() - value  # one SGD step of rate 1 lands on value
    torch.optim.SGD([weight], lr=1.0).step()
    weight.grad = None


def _weight_norm(module, name, value):
    nn.utils.parametrizations.weight_norm(module, name)
    with torch.no_grad():  # weight = g * v / |v| with g = |v| row by row: value itself
        module.parametrizations[name].original0.copy_(value.norm(dim=1, keepdim=True))
        module.parametrizations[name].original1.copy_(value)


@pytest.mark.parametrize("change", [_new_parameter, _load_assigned, _edit_data, _optimizer_step,
                                    _weight_norm], ids=lambda f: f.__name__.lstrip("_"))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_changed_weights_are_used(cell, change):
    """A module that ran once sees its weights changed in every way user code changes them: a
    new Parameter, load_state_dict(assign=True), an in-place edit of .data, an optimizer step, a
    parametrization (weight_norm). Its next call uses the new weights, as torch.nn's does (the
    modules keep the list of weights between calls, updated by identity: modules.py,
    _update_flat_weights)."""
    ref, fused = make_pair(cell, 5, 6, num_layers=2)
    x, hx = _inputs(cell, ref, 4, 3, 5, "cpu", torch.float32)
    before = fused(x, hx)[0]
    gen = torch.Generator().manual_seed(3)
    for name in ("weight_hh_l0", "weight_ih_l1"):
        value = torch.randn(getattr(ref, name).shape, generator=gen)
        for module in (ref, fused):
            change(module, name, value.clone())
    ours, theirs = run_and_grad(fused, x, hx), run_and_grad(ref, x, hx)
    assert rel_err(ours["output"], before) > 0.01
    assert_close_by_name(ours, theirs, TOLERANCE[torch.float32])


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_functional_call_uses_the_given_weights(cell):
    ref, fused = make_pair(cell, 5, 6)
    x, hx = _inputs(cell, ref, 4, 3, 5, "cpu", torch.float32)
    fused(x, hx)
    gen = torch.Generator().manual_seed(5)
    given = {name: torch.randn(p.shape, generator=gen) for name, p in ref.named_parameters()}
    ours = torch.func.functional_call(fused, given, (x, hx))
    theirs = torch.func.functional_call(ref, given, (x, hx))
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(fused(x, hx)[0], ref(x, hx)[0])  # and back to its own


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dtype_and_device_conversions(cell):
    _, fused = make_pair(cell, 3, 4)
    x = torch.randn(5, 2, 3)
    for convert, dtype in [(lambda m: m.double(), torch.float64), (lambda m: m.half(), torch.float16),
                           (lambda m: m.to(torch.bfloat16), torch.bfloat16),
                           (lambda m: m.float(), torch.float32)]:
        convert(fused)
        assert all(p.dtype == dtype for p in fused.parameters())
        output, _ = fused(x.to(dtype))
        assert output.dtype == dtype and torch.isfinite(output).all()


# (T, B, I, H, options, lengths): padded (lengths None) and packed, unsorted lengths among them.
COMPLEX_CONFIGS = [
    (5, 3, 4, 6, {}, None),
    (4, 2, 3, 5, {"num_layers": 2, "bidirectional": True, "batch_first": True}, None),
    (1, 1, 2, 3, {"bias": False}, None),
    (6, 3, 4, 5, {"num_layers": 2}, [4, 6, 2]),
    (5, 2, 3, 4, {"bidirectional": True}, [5, 3]),
]


def _complex_run(model, x, hx, lengths):
    """run_and_grad, or for packed input (whose packing torch cannot differentiate in complex
    dtypes) the outputs alone."""
    if lengths is None:
        return run_and_grad(model, x, hx)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), model.batch_first,
                                               enforce_sorted=False)
    with torch.no_grad():
        output, final = model(packed, hx)
    finals = final if isinstance(final, tuple) else (final,)
    padded = nn.utils.rnn.pad_packed_sequence(output, model.batch_first)[0]
    return {"output": padded, **dict(zip(("h_n", "c_n"), finals))}


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_complex_layers_run_torch_nns_implementation(cell, dtype):
    """fusedrnn has no complex kernels, and torch.nn runs complex layers: given complex input,
    fusedrnn's modules run torch.nn's implementation on their own parameters, so the outputs,
    final states and every gradient are torch.nn's, bit for bit (padded, packed, stacked,
    bidirectional, unbatched, with and without a state, the LSTM's projection), and the errors
    are its errors (the relu RNN: torch has no complex relu)."""
    configs = COMPLEX_CONFIGS + ([(4, 2, 3, 5, {"proj_size": 2}, None)] if cell == "lstm" else [])
    for seed, (T, B, I, H, options, lengths) in enumerate(configs):
        ref, fused = make_complex_pair(cell, I, H, dtype, seed=seed, **options)
        gen = torch.Generator().manual_seed(seed)
        shape = (B, T, I) if options.get("batch_first") else (T, B, I)
        x = torch.randn(shape, dtype=dtype, generator=gen)
        layers = fused.num_layers * (2 if fused.bidirectional else 1)
        sizes = [fused.proj_size or H, H] if cell == "lstm" else [H]
        states = [torch.randn(layers, B, size, dtype=dtype, generator=gen) for size in sizes]
        for hx in (tuple(states) if cell == "lstm" else states[0], None):
            if cell == "rnn_relu":
                with pytest.raises(NotImplementedError, match="not supported for complex"):
                    ref(x, hx)
                with pytest.raises(NotImplementedError, match="not supported for complex"):
                    fused(x, hx)
                continue
            expected = _complex_run(ref, x, hx, lengths)
            assert expected["output"].dtype == dtype
            assert_close_by_name(_complex_run(fused, x, hx, lengths), expected, 0.0)
    if cell != "rnn_relu":
        unbatched = torch.randn(4, I, dtype=dtype, generator=gen)
        assert torch.equal(fused(unbatched)[0], ref(unbatched)[0])


@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_cuda_and_back(cell):
    ref, fused = make_pair(cell, 3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    on_gpu = fused.cuda()(x.cuda())[0].cpu()
    torch.testing.assert_close(on_gpu, ref(x)[0])
    torch.testing.assert_close(fused.cpu()(x)[0], ref(x)[0])


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_inter_layer_dropout(cell):
    ref, fused = make_pair(cell, 4, 6, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    # Evaluation mode: dropout is off and the modules agree.
    ref.eval(), fused.eval()
    assert_close_by_name(run_and_grad(fused, x, None), run_and_grad(ref, x, None), 1e-10)
    # Training mode: dropout changes the output, reproducibly under the same seed.
    fused.train()
    torch.manual_seed(5)
    first = fused(x)[0]
    torch.manual_seed(5)
    again = fused(x)[0]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - fused.eval()(x)[0]).abs().max() > 1e-3


def test_dropout_on_one_layer_warns_like_torch_nn():
    with pytest.warns(UserWarning, match="dropout"):
        fusedrnn.LSTM(3, 4, dropout=0.2)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_no_grad_keeps_nothing(cell):
    _, fused = make_pair(cell, 3, 4)
    with torch.no_grad():
        output, _ = fused(torch.randn(5, 2, 3))
    assert output.grad_fn is None


def test_rnn_nonlinearity_as_positional_argument():
    model = fusedrnn.RNN(3, 4, 2, "relu")
    assert model.nonlinearity == "relu" and model.num_layers == 2 and model.mode == "RNN_RELU"


def test_not_a_torch_nn_rnn_subclass():
    """torch.compile refuses instances of nn.LSTM/GRU/RNN; fusedrnn's must not be one. What the
    README offers code that picks modules by class instead: nn.RNNBase and torch.nn's `mode`,
    and torch.nn's class names."""
    for cls in (fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN):
        assert not issubclass(cls, (nn.LSTM, nn.GRU, nn.RNN))
        assert issubclass(cls, nn.RNNBase)
    for cell, (ref_cls, fused_cls, extra) in CELLS.items():
        ref, fused = ref_cls(3, 4, **extra), fused_cls(3, 4, **extra)
        assert isinstance(fused, nn.RNNBase) and fused.mode == ref.mode
        assert type(fused).__name__ == type(ref).__name__


PROJECTED = [
    (5, 3, 7, 11, {"proj_size": 4}),
    (4, 2, 6, 5, {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
    (3, 4, 8, 6, {"proj_size": 1, "bias": False, "batch_first": True}),
    (1, 1, 3, 4, {"proj_size": 2, "num_layers": 3, "bidirectional": True}),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", PROJECTED, ids=_config_id)
def test_projected_lstm_matches_torch_nn(config, dtype, device, backend):
    T, B, I, H, options = config
    ref, fused = make_pair("lstm", I, H, device, dtype, **options)
    gen = torch.Generator().manual_seed(9)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    layers = ref.num_layers * (2 if ref.bidirectional else 1)
    hx = (torch.randn(layers, B, options["proj_size"], generator=gen).to(device, dtype),
          torch.randn(layers, B, H, generator=gen).to(device, dtype))
    assert_matches("lstm", fused, ref, x, hx, dtype)
    assert_close_by_name(run_and_grad(fused, x, None), run_and_grad(ref, x, None),
                         TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_backward_in_eval_mode(cell, device):
    """cuDNN refuses a backward in eval mode; fusedrnn does it (dropout off, as in eval)."""
    ref, fused = make_pair(cell, 4, 5, device, torch.float64, num_layers=2, dropout=0.5)
    ref.eval(), fused.eval()
    x, hx = _inputs(cell, ref, 6, 3, 4, device, torch.float64)
    with torch.backends.cudnn.flags(enabled=False):  # torch.nn's reference: its native path
        expected = run_and_grad(ref, x, hx)
    assert_close_by_name(run_and_grad(fused, x, hx), expected, 1e-10)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_lstm_public_state_helpers_match_torch_nn(batch_first, packed):
    """nn.LSTM's check_forward_args, permute_hidden and get_expected_cell_size, which subclasses
    and user code call: the same results and the same errors, with a projection."""
    from test_errors import _both_raise

    ref, fused = make_pair("lstm", 4, 6, proj_size=3, num_layers=2, batch_first=batch_first)
    batch_sizes = torch.tensor([5, 5, 3, 1]) if packed else None
    x = torch.randn(14, 4) if packed else torch.randn(5, 7, 4)  # packed: the data
    B = 5 if packed else (5 if batch_first else 7)
    h, c = torch.randn(2, B, 3), torch.randn(2, B, 6)
    for model in (ref, fused):
        assert model.get_expected_cell_size(x, batch_sizes) == ref.get_expected_cell_size(
            x, batch_sizes)
        model.check_forward_args(x, (h, c), batch_sizes)
    for bad in ((h, c[:, :1]), (c, c)):
        _both_raise(ref.check_forward_args, fused.check_forward_args, x, bad, batch_sizes,
                    match=r"Expected hidden\[[01]\] size")
    permutation = torch.randperm(B)
    for ours, theirs in zip(fused.permute_hidden((h, c), permutation),
                            ref.permute_hidden((h, c), permutation)):
        assert torch.equal(ours, theirs)
    assert fused.permute_hidden((h, c), None) == (h, c)


class _WeightGradsFlags(TorchDispatchMode):
    """The weight_grads argument of every fusedrnn backward op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.flags = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fusedrnn" and "backward" in func.name():
            names = [a.name for a in func._schema.arguments]
            index = names.index("weight_grads")
            self.flags.append(args[index] if len(args) > index
                              else kwargs.get("weight_grads", True))
        return func(*args, **kwargs)


def _weight_grads_flags(ref, fused, gradients):
    """The weight_grads flags of fusedrnn's backward ops while gradients(fused) runs, once its
    gradients are checked against gradients(ref), torch.nn's (None where torch.nn's are)."""
    with _WeightGradsFlags() as seen:
        ours = gradients(fused)
    theirs = gradients(ref)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel_err(a, b) <= 1e-10
    return seen.flags


@pytest.mark.parametrize("trainable", [None, "weight_hh_l0"], ids=["frozen", "one-trainable"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_frozen_weights_skip_their_gradients(cell, bidirectional, trainable):
    """With every weight frozen the backward ops skip the weights' GEMMs (weight_grads=False);
    a trainable weight brings them back for its layer (here the first of two). The input's
    gradient is torch.nn's either way."""
    ref, fused = make_pair(cell, 3, 5, "cpu", torch.float64, num_layers=2,
                           bidirectional=bidirectional)
    for model in (ref, fused):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name == trainable)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def input_grad(model):
        xx = x.clone().requires_grad_()
        out = model(xx)[0]
        (out * out.detach().sin()).sum().backward()
        return [xx.grad]

    # One backward op a layer, the second layer's first.
    assert _weight_grads_flags(ref, fused, input_grad) == (
        [False, False] if trainable is None else [False, True])


@pytest.mark.parametrize("asked", ["input", "input-backward", "input-and-weight", "all"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_backward_skips_gradients_nobody_asked_for(cell, bidirectional, asked):
    """Trainable weights, but a backward that asks for some gradients only (autograd.grad of
    the input, backward(inputs=...)): the backward ops skip the weights' GEMMs where the engine
    will not use them. The gradients asked for are torch.nn's."""
    ref, fused = make_pair(cell, 3, 5, "cpu", torch.float64, num_layers=2,
                           bidirectional=bidirectional)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def gradients(model):
        xx = x.clone().requires_grad_()
        out = model(xx)[0]
        loss = (out * out.detach().cos()).sum()
        if asked == "input":
            return torch.autograd.grad(loss, xx)
        if asked == "input-and-weight":
            return torch.autograd.grad(loss, [xx, model.weight_hh_l1])
        model.zero_grad(set_to_none=True)
        loss.backward(inputs=[xx] if asked == "input-backward" else None)
        return [xx.grad] + [p.grad for p in model.parameters()]

    # One backward op a layer, the second layer's first.
    assert _weight_grads_flags(ref, fused, gradients) == {
        "input": [False, False], "input-backward": [False, False],
        "input-and-weight": [True, False], "all": [True, True]}[asked]


@pytest.mark.parametrize("asked", ["input", "weights"])
def test_backward_asks_the_engine_about_weights_that_are_not_leaves(asked):
    """Weights computed from parameters (functional_call with p * 1): their gradients flow to
    the product's node rather than to a leaf's accumulator, which the engine runs only when
    the backward asks for the parameters."""
    ref, fused = make_pair("gru", 3, 5, "cpu", torch.float64)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def gradients(model):
        xx = x.clone().requires_grad_()
        parameters = dict(model.named_parameters())
        scaled = {name: p * 1 for name, p in parameters.items()}
        out = torch.func.functional_call(model, scaled, (xx,))[0]
        loss = (out * out.detach().cos()).sum()
        return torch.autograd.grad(loss, [xx] if asked == "input" else list(parameters.values()))

    assert _weight_grads_flags(ref, fused, gradients) == [asked == "weights"]


@pytest.mark.parametrize("asked", ["input", "weight_hr_l0"])
def test_backward_asks_the_engine_about_the_projection(asked):
    """The LSTM's projection weight is the Function's last, optional argument: asked for alone,
    it brings the weights' gradients back."""
    ref, fused = make_pair("lstm", 3, 5, "cpu", torch.float64, proj_size=2)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def gradients(model):
        xx = x.clone().requires_grad_()
        out = model(xx)[0]
        loss = (out * out.detach().cos()).sum()
        return torch.autograd.grad(loss, [xx] if asked == "input" else [model.weight_hr_l0])

    assert _weight_grads_flags(ref, fused, gradients) == [asked != "input"]
