"""fusedrnn under torch.func (grad, vjp, jacrev, jvp, vmap, functional_call, per-sample
gradients, model ensembles), batched gradients and forward-mode AD, against torch.nn."""
import copy

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch.func import functional_call

from conftest import CELLS, apply_layer, layer_args, make_pair, refuse, rel_err
from fusedrnn import ops
from test_cells import CELL_CLASSES, make_cell_pair

CASES = [(cell, bidirectional) for cell in CELLS for bidirectional in (False, True)]
IDS = [f"{cell}-{'bi' if bi else 'uni'}" for cell, bi in CASES]


def _pair(cell, bidirectional, requires_grad=True):
    ref, fused = make_pair(cell, 3, 5, "cpu", torch.float64, bidirectional=bidirectional)
    for model in (ref, fused):
        model.requires_grad_(requires_grad)
    return ref, fused


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_close(ours, theirs, tol=1e-10):
    ours, theirs = torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)
    assert len(ours) == len(theirs)
    errors = [rel_err(a, b) for a, b in zip(ours, theirs)]
    assert max(errors) <= tol, errors


def _output(model):
    """The model's output as a function of its parameters and input."""
    return lambda p, x: functional_call(model, p, (x,))[0]


def _loss(model):
    return lambda p, x: _output(model)(p, x).pow(2).sum()


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_grad_vjp_jacrev_jvp_of_functional_call(cell, bidirectional):
    ref, fused = _pair(cell, bidirectional)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x, tangent = _x(4, 2, 3), _x(4, 2, 3, seed=2)
    cotangent = _x(4, 2, 10 if bidirectional else 5, seed=1)
    _assert_close(torch.func.grad(_loss(fused), argnums=(0, 1))(params, x),
                  torch.func.grad(_loss(ref), argnums=(0, 1))(params, x))
    (_, ours), (_, theirs) = (torch.func.vjp(_output(m), params, x) for m in (fused, ref))
    _assert_close(ours(cotangent), theirs(cotangent))
    _assert_close(torch.func.jacrev(_output(fused), argnums=1)(params, x),
                  torch.func.jacrev(_output(ref), argnums=1)(params, x))
    _assert_close(torch.func.jvp(lambda x: _output(fused)(params, x), (x,), (tangent,)),
                  torch.func.jvp(lambda x: _output(ref)(params, x), (x,), (tangent,)))

    def grad_of_grad(model):  # nested transforms
        return torch.func.grad(lambda x: torch.func.grad(_loss(model), argnums=1)(params, x).sum())

    _assert_close(grad_of_grad(fused)(x), grad_of_grad(ref)(x))


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_grad_and_vjp_alone_take_the_fused_backward(cell, bidirectional, monkeypatch):
    """torch.func.grad and vjp with nothing around them: their gradients are not differentiated
    again, so the fused backward gives them (the reference made to raise), equal to torch.nn's."""
    ref, fused = _pair(cell, bidirectional)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x, cotangent = _x(4, 2, 3), _x(4, 2, 10 if bidirectional else 5, seed=1)
    expected = (torch.func.grad(_loss(ref), argnums=(0, 1))(params, x),
                torch.func.vjp(_output(ref), params, x)[1](cotangent))
    monkeypatch.setattr(ops, "_of_some", refuse)
    _assert_close((torch.func.grad(_loss(fused), argnums=(0, 1))(params, x),
                   torch.func.vjp(_output(fused), params, x)[1](cotangent)), expected)


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_grad_differentiated_by_autograd_around_it(cell, bidirectional):
    """torch.autograd.grad of torch.func.grad's result (parameters that require grad outside the
    transform): the gradients are differentiated again, so they come through the reference, and
    the second derivatives are torch.nn's."""
    ref, fused = _pair(cell, bidirectional)
    x = _x(4, 2, 3)

    def second(model):
        params = {k: v.detach().requires_grad_() for k, v in ref.named_parameters()}
        grads = torch.func.grad(_loss(model))(params, x)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in grads.values()),
                                   list(params.values()))

    _assert_close(second(fused), second(ref))


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_pullback_differentiated_inside_another_transform(cell, bidirectional):
    """A vjp's pullback called inside torch.func.grad, which differentiates it with respect to
    the cotangent: its tensors wrap at two levels, so the reference runs, and the result is
    torch.nn's."""
    ref, fused = _pair(cell, bidirectional)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x, cotangent = _x(4, 2, 3), _x(4, 2, 10 if bidirectional else 5, seed=1)

    def through_pullback(model):
        _, pullback = torch.func.vjp(_output(model), params, x)
        return torch.func.grad(lambda c: pullback(c)[1].pow(2).sum())(cotangent)

    _assert_close(through_pullback(fused), through_pullback(ref))


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_per_sample_gradients_and_vmap(cell, bidirectional):
    """vmap(grad(...)) over samples (Opacus-style), and vmap of the forward: as a loop over the
    samples (torch.nn's own LSTM does not run under vmap)."""
    ref, fused = _pair(cell, bidirectional)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    samples = _x(6, 4, 1, 3)
    ours = torch.func.vmap(torch.func.grad(_loss(fused)), in_dims=(None, 0))(params, samples)
    theirs = {k: torch.stack([torch.func.grad(_loss(ref))(params, x)[k] for x in samples])
              for k in params}
    _assert_close(ours, theirs)
    _assert_close(torch.func.vmap(lambda x: fused(x)[0])(samples),
                  torch.stack([ref(x)[0] for x in samples]))


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_per_sample_gradients_take_the_fused_backward(cell, bidirectional, monkeypatch):
    """vmap(grad(...)): only the grad level differentiates, so the fused backward gives the
    gradients, batched by the ops' vmap rules (the reference made to raise), equal to torch.nn's
    sample by sample."""
    ref, fused = _pair(cell, bidirectional)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    samples = _x(5, 4, 1, 3, seed=3)
    theirs = {k: torch.stack([torch.func.grad(_loss(ref))(params, x)[k] for x in samples])
              for k in params}
    monkeypatch.setattr(ops, "_of_some", refuse)
    _assert_close(torch.func.vmap(torch.func.grad(_loss(fused)), in_dims=(None, 0))(params,
                                                                                  samples),
                  theirs)


@pytest.mark.parametrize("kind", ["layers", "bidirectional-layers", "cell"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_model_ensemble_under_vmap(cell, kind):
    """Model ensembling as torch.func teaches it: the models' parameters stacked
    (stack_module_state), vmap over them and over each model's input. Each model's loss and
    parameter gradients as torch.nn's model by model (torch.nn's own layers, and its LSTM cell,
    raise under this vmap: no batching rule)."""
    if kind == "cell":
        pairs = [make_cell_pair(cell, 3, 5, "cpu", torch.float64, seed=s) for s in range(3)]
        inputs = _x(3, 2, 3)
    else:
        pairs = [make_pair(cell, 3, 5, "cpu", torch.float64, seed=s, num_layers=2,
                           bidirectional=kind == "bidirectional-layers") for s in range(3)]
        inputs = _x(3, 4, 2, 3)
    refs, fused = zip(*pairs)
    params, buffers = torch.func.stack_module_state(fused)
    stateless = copy.deepcopy(fused[0]).to("meta")

    def squared_sum(out):  # of the output (a layer's or an LSTM cell's first result)
        return (out[0] if isinstance(out, tuple) else out).pow(2).sum()

    def loss(p, b, x):
        return squared_sum(functional_call(stateless, (p, b), (x,)))

    grads, losses = torch.func.vmap(torch.func.grad_and_value(loss))(params, buffers, inputs)
    for index, (ref, x) in enumerate(zip(refs, inputs)):
        ref_loss = squared_sum(ref(x))
        names, ref_params = zip(*ref.named_parameters())
        _assert_close((losses[index], [grads[n][index] for n in names]),
                      (ref_loss, torch.autograd.grad(ref_loss, ref_params)))


@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_batched_gradients(cell, bidirectional):
    """autograd.grad(is_grads_batched=True) and jacobian(vectorize=True): autograd's own vmap."""
    ref, fused = _pair(cell, bidirectional)
    x = _x(4, 2, 3).requires_grad_()
    outputs = [model(x)[0] for model in (fused, ref)]
    v = _x(3, *outputs[0].shape, seed=3)
    ours, theirs = (torch.autograd.grad(out, x, v, is_grads_batched=True) for out in outputs)
    _assert_close(ours, theirs)
    _assert_close(torch.autograd.functional.jacobian(lambda x: fused(x)[0], x, vectorize=True),
                  torch.autograd.functional.jacobian(lambda x: ref(x)[0], x, vectorize=True))


@pytest.mark.parametrize("requires_grad", [True, False], ids=["params-grad", "params-frozen"])
@pytest.mark.parametrize("cell, bidirectional", CASES, ids=IDS)
def test_forward_mode_ad(cell, bidirectional, requires_grad):
    """Dual tensors (torch.autograd.forward_ad), also where nothing requires grad."""
    ref, fused = _pair(cell, bidirectional, requires_grad)
    x, tangent = _x(4, 2, 3), _x(4, 2, 3, seed=4)
    results = []
    for model in (fused, ref):
        with forward_ad.dual_level():
            out, h = model(forward_ad.make_dual(x, tangent))
            h = h[0] if isinstance(h, tuple) else h
            results.append([forward_ad.unpack_dual(t).tangent for t in (out, h)])
    _assert_close(*results)


@pytest.mark.parametrize("cell", list(CELL_CLASSES))
def test_cells(cell):
    ref, fused = make_cell_pair(cell, 3, 5, "cpu", torch.float64)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    x, tangent = _x(2, 3), _x(2, 3, seed=5)

    def first(model):
        def run(p, x):
            out = functional_call(model, p, (x,))
            return out[0] if isinstance(out, tuple) else out
        return run

    _assert_close(torch.func.jacrev(first(fused), argnums=(0, 1))(params, x),
                  torch.func.jacrev(first(ref), argnums=(0, 1))(params, x))
    _assert_close(torch.func.jvp(lambda x: first(fused)(params, x), (x,), (tangent,)),
                  torch.func.jvp(lambda x: first(ref)(params, x), (x,), (tangent,)))


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_with_batched_grad_and_forward_ad(cell):
    """gradcheck as PyTorch's own module tests run it: batched gradients and forward AD on."""
    args = [a.requires_grad_() if a is not None else a
            for a in layer_args(cell, 3, 2, 3, 4, "cpu")]
    assert torch.autograd.gradcheck(lambda *a: apply_layer(cell, a, False), args,
                                    check_batched_grad=True, check_forward_ad=True)


def test_forward_ad_through_packed_input_says_it_is_not_supported():
    from torch.nn.utils.rnn import pack_sequence
    _, fused = _pair("gru", False)
    packed = pack_sequence([_x(4, 3), _x(2, 3, seed=1)])
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(packed.data, torch.ones_like(packed.data))
        with pytest.raises(NotImplementedError, match="forward-mode AD through PackedSequence"):
            fused(torch.nn.utils.rnn.PackedSequence(dual, packed.batch_sizes))
