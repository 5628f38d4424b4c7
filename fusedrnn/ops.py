"""The dispatcher ops of fusedrnn._C as differentiable layer functions.

Each op runs one layer in one direction over a whole sequence (csrc/layer/layer.h). Here they
get one torch.autograd.Function per cell type (their fake kernels, for torch.compile and
FakeTensor, are in fake.py) whose forward and backward call nothing but those ops. A double
backward (differentiating gradients taken with create_graph=True) runs a pass of its own,
second_order.py, which also carries the layer's own backward in the same step (see
_leave_to_layer); a third derivative, and torch.func's transforms wherever their gradients are
differentiated again, recompute the layer in plain PyTorch ops, which autograd can
differentiate again.

Shapes: input [T, B, I]; h0, c0 [B, H]; w_ih [G*H, I]; w_hh [G*H, H]; b_ih, b_hh [G*H] or None;
output [T, B, H]. With batch_sizes (a PackedSequence's), input is the packed data [rows, I] and
output is packed the same way, [rows, H].
"""
import inspect
import os
import weakref

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from ._extension import _C  # loading _C registers torch.ops.fusedrnn
from . import batching, fake  # noqa: F401  (the ops' vmap rules and fake kernels)
from . import second_order

_ops = torch.ops.fusedrnn


# ---- the same layers in plain PyTorch ops (csrc/core/gates.h), for the double backward ------
def _steps(x, reverse):
    return reversed(x.unbind(0)) if reverse else x.unbind(0)


def _stack(outputs, reverse):
    return torch.stack(outputs[::-1] if reverse else outputs)


def _lstm_reference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    h, c, outputs = h0, c0, []
    for x_gates in _steps(F.linear(input, w_ih, b_ih), reverse):
        i, f, g, o = (x_gates + F.linear(h, w_hh, b_hh)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        outputs.append(h)
    return _stack(outputs, reverse), h, c


def _gru_reference(input, h0, w_ih, w_hh, b_ih, b_hh, reverse):
    h, outputs = h0, []
    for x_gates in _steps(F.linear(input, w_ih, b_ih), reverse):
        xr, xz, xn = x_gates.chunk(3, 1)
        hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outputs.append(h)
    return _stack(outputs, reverse), h


def _rnn_reference(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    activation = torch.relu if relu else torch.tanh
    h, outputs = h0, []
    for x_pre in _steps(F.linear(input, w_ih, b_ih), reverse):
        h = activation(x_pre + F.linear(h, w_hh, b_hh))
        outputs.append(h)
    return _stack(outputs, reverse), h


# The same layers through torch.nn's own C++ recurrence (_VF, what nn.LSTM calls; cuDNN off, as it
# has no double backward), one layer and one direction: the double backward's plain-autograd
# path, cheaper than the Python loop above on small layers, where the cost is per op, and the
# only one that takes packed input (batch_sizes: a PackedSequence's; input and output are then
# its packed rows). The reverse direction runs on the input reversed in time, each packed
# sequence along its own length. torch.func's transforms keep the Python references, which they
# can see into.
def _weights(w_ih, w_hh, b_ih, b_hh, w_hr=None):
    return [w for w in (w_ih, w_hh, b_ih, b_hh, w_hr) if w is not None]


def _vf_layer(layer, input, hx, weights, has_biases, reverse, batch_sizes):
    """One layer in one direction through torch._VF's `layer` (lstm, gru, rnn_tanh,
    rnn_relu), its padded or its packed form -> the output, then each final state, [B, H]."""
    rows = None if batch_sizes is None or not reverse else \
        second_order.reversed_rows(batch_sizes, input.device)

    def in_time(t):  # the layer's order <-> the recurrence's (its own inverse)
        return t if not reverse else t.flip(0) if rows is None else t[rows]

    if batch_sizes is None:
        output, *states = layer(in_time(input), hx, weights, has_biases, 1, 0.0, False, False,
                                False)
    else:
        output, *states = layer(in_time(input), batch_sizes, hx, weights, has_biases, 1, 0.0,
                                False, False)
    return (in_time(output), *(state[0] for state in states))


def _lstm_torch_nn(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, batch_sizes=None):
    return _vf_layer(torch._VF.lstm, input, (h0[None], c0[None]),
                     _weights(w_ih, w_hh, b_ih, b_hh, w_hr), b_ih is not None, reverse,
                     batch_sizes)


def _gru_torch_nn(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes=None):
    return _vf_layer(torch._VF.gru, input, h0[None], _weights(w_ih, w_hh, b_ih, b_hh),
                     b_ih is not None, reverse, batch_sizes)


def _rnn_torch_nn(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes=None):
    return _vf_layer(torch._VF.rnn_relu if relu else torch._VF.rnn_tanh, input, h0[None],
                     _weights(w_ih, w_hh, b_ih, b_hh), b_ih is not None, reverse, batch_sizes)


_TORCH_NN = {_lstm_reference: _lstm_torch_nn, _gru_reference: _gru_torch_nn,
             _rnn_reference: _rnn_torch_nn}


def _plain(tensor):
    """Neither a subclass (FakeTensor, ...) nor batched or wrapped by functorch."""
    functorch = torch._C._functorch
    return type(tensor) in (torch.Tensor, torch.nn.Parameter) and not (
        functorch.is_functorch_wrapped_tensor(tensor) or functorch.is_legacy_batchedtensor(tensor))


_SECOND_ORDER = {_lstm_reference: second_order.lstm, _gru_reference: second_order.gru,
                 _rnn_reference: second_order.rnn}


def _of_some(reference, inputs, options, wanted):
    """reference(*inputs, *options) as a function of inputs[i] for i in `wanted` alone, the
    others held fixed: what torch.func differentiates."""
    def layer(*tensors):
        full = list(inputs)
        for i, tensor in zip(wanted, tensors):
            full[i] = tensor
        return reference(*full, *options)
    return layer


def _differentiable_backward(reference, inputs, options, grad_outputs, needed, fused, output,
                             saved, layer, batch_sizes):
    """The gradients of `inputs` through `reference(*inputs, *options)`, as differentiable
    tensors: taken where grad mode is on in the backward, i.e. under create_graph=True (double
    backward) and inside torch.func's transforms (grad, vjp, jacrev; nested or not). Under plain
    autograd they are the fused backward's (`fused()`: the gradients of all inputs), which
    _FusedGradients differentiates (second_order's pass, or the layer recomputed). Inside
    torch.func's transforms they come from torch.func.vjp of the reference, which, unlike
    torch.autograd.grad, sees the tensors a transform tracks; where nothing will differentiate
    them again (_differentiated_once), from the fused backward itself. `needed`: which inputs
    need a gradient; `output`, `saved`: the layer's output and the activations its forward saved;
    `layer`: (the layer's node, its ctx; the direction's key), see _Recomputation;
    `batch_sizes`: a packed input's (plain autograd only)."""
    wanted = [i for i, need in enumerate(needed) if need and inputs[i] is not None]
    if not wanted or all(g is None for g in grad_outputs):
        return (None,) * len(inputs)
    tensors = [t for t in (*inputs, *grad_outputs) if t is not None]
    if not any(map(torch._C._functorch.is_functorch_wrapped_tensor, tensors)):  # plain autograd
        return _FusedGradients.apply(
            _Recomputation(reference, options, fused, wanted, output, saved, layer,
                           batch_sizes), *inputs, *grad_outputs)
    _check_not_packed(batch_sizes)
    if _differentiated_once(tensors):
        return tuple(g if i in wanted else None for i, g in enumerate(fused()))
    outputs, pullback = torch.func.vjp(_of_some(reference, inputs, options, wanted),
                                       *(inputs[i] for i in wanted))
    grads = iter(pullback(tuple(torch.zeros_like(out) if g is None else g
                                for out, g in zip(outputs, grad_outputs))))
    return tuple(next(grads) if i in wanted else None for i in range(len(inputs)))


def _differentiated_once(tensors):
    """Inside torch.func's transforms: whether the gradients a backward returns will not be
    differentiated again, so that the fused backward may give them (the ops have no derivative
    of their own, and differentiating their results would silently give zeros). That is: one
    grad transform (torch.func.grad, vjp), the innermost running, with only vmaps around it
    (per-sample gradients: the ops' vmap rules batch them), or one that has exited (a vjp's
    pullback called on its own); each tensor wrapped by that grad level at most once, then by
    vmaps; and nothing beneath that plain autograd around the transforms records
    (autograd.grad of torch.func.grad's result). Nested grads, forward AD, jacrev (a vmap
    inside the grad level), a pullback called inside another transform, compilers and dispatch
    modes take the reference, which each of them can see into."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    running = retrieve_all_functorch_interpreters()
    if running and (running[-1].key() != TransformType.Grad or
                    any(other.key() != TransformType.Vmap for other in running[:-1])):
        return False
    functorch = torch._C._functorch
    levels = {running[-1].level()} if running else set()
    for tensor in tensors:
        if functorch.is_gradtrackingtensor(tensor):
            levels.add(functorch.maybe_get_level(tensor))
            tensor = functorch.get_unwrapped(tensor)
        while functorch.is_batchedtensor(tensor):
            tensor = functorch.get_unwrapped(tensor)
        if tensor.requires_grad or not _plain(tensor):
            return False
    return len(levels) == 1


def _second_order_on(device):
    """Whether second_order's pass runs on `device`: on the CPU; on CUDA only where
    FUSEDRNN_CUDA_SECOND_ORDER=1, until its kernels (cuda/second_order.cu) have run on a GPU.
    Elsewhere the double backward recomputes the layer through torch.nn's recurrence."""
    return device.type == "cpu" or (device.type == "cuda" and
                                    os.environ.get("FUSEDRNN_CUDA_SECOND_ORDER") == "1")


class _Recomputation:
    """What _FusedGradients needs of a layer: `fused()`, the fused backward's gradients of all
    its inputs; `reference` and `options`, the layer in plain PyTorch ops (recomputed through
    torch.nn's own recurrence, _TORCH_NN); `wanted`, the inputs whose gradients are returned;
    `output` and `saved`, the layer's output (the forward's own copy) and the activations its
    forward saved, for the second-order pass; `layer`: (node, key), the layer's own autograd
    node (its Function's ctx) and which of its directions this is, where the pass can leave its
    second half (_leave_to_layer); `batch_sizes`, a packed input's."""

    def __init__(self, reference, options, fused, wanted, output, saved, layer, batch_sizes):
        self.reference, self.options, self.fused, self.wanted = reference, options, fused, wanted
        self.output, self.saved, self.layer, self.batch_sizes = output, saved, layer, batch_sizes

    def second_order(self, tensors, grad_grads, needs):
        """The double backward by second_order's pass (the gradients of all saved tensors), or
        None where it does not apply: a device it is not on (_second_order_on), under a dispatch
        mode, and for tensors of a subclass or batched (autograd's vmap): its loops run past the
        dispatcher."""
        if not _second_order_on(self.output.device) or \
                torch._C._len_torch_dispatch_stack() or any(
                not _plain(t) for t in (*tensors, *grad_grads) if t is not None):
            return None
        count = len(grad_grads)
        cell, inputs, grad_outputs = _SECOND_ORDER[self.reference], tensors[:count], \
            tensors[count:]
        if any(needs[:count]) and _leave_to_layer(*self.layer):
            of_grad_outputs, backward = cell(inputs, self.options, self.output, self.saved,
                                             grad_grads, needs[count:], self.batch_sizes)
            self.layer[0].left_passes[_running_task(), self.layer[1]] = \
                lambda grad_outputs_dot, needs: backward(grad_outputs, grad_outputs_dot, needs)
            return (None,) * count + of_grad_outputs
        return second_order.double_backward(cell, inputs, self.options, self.output,
                                            self.saved, grad_outputs, grad_grads, needs,
                                            self.batch_sizes)

    def gradients_with_graph(self, inputs, grad_outputs, which):
        """{i: the gradient of inputs[i], differentiable} for i in which, through the layer
        recomputed with autograd recording (cuDNN off: it has no double backward)."""
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            outputs = _TORCH_NN[self.reference](*inputs, *self.options, self.batch_sizes)
            used = [(out, g) for out, g in zip(outputs, grad_outputs) if g is not None]
            grads = torch.autograd.grad([out for out, _ in used], [inputs[i] for i in which],
                                        [g for _, g in used], create_graph=True,
                                        allow_unused=True)
        return dict(zip(which, grads))


class _FusedGradients(torch.autograd.Function):
    """A layer's first-order gradients as a differentiable function of its inputs and of the
    gradients of its outputs: apply(recomputation, *inputs, *grad_outputs) -> one gradient per
    input (None where not wanted). Forward: the fused backward, so create_graph=True costs no
    more than a plain backward until its gradients are differentiated, and gradgradcheck's
    numerical half, which never differentiates them, runs at fused speed. Backward (the double
    backward): on the CPU, second_order's pass. Where that does not apply (recording a third
    derivative, CUDA, dispatch modes, batched incoming gradients): the layer recomputed through
    torch.nn's recurrence, the gradients that are differentiated taken with create_graph=True
    once and kept (when no graph is recorded), then differentiated."""

    @staticmethod
    def forward(ctx, recomputation, *tensors):
        ctx.recomputation, ctx.inner = recomputation, {}
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        grads, returned = [], set()
        for i, grad in enumerate(recomputation.fused()):
            if i not in recomputation.wanted:
                grad = None
            elif id(grad) in returned:  # one tensor for b_ih and b_hh: each output its own
                grad = grad.clone()
            returned.add(id(grad))
            grads.append(grad)
        return tuple(grads)

    @staticmethod
    def backward(ctx, *grad_grads):
        differentiated = {i for i, gg in enumerate(grad_grads) if gg is not None}
        if not differentiated:
            return (None,) * len(ctx.needs_input_grad)
        recording = torch.is_grad_enabled()
        if not recording:
            result = ctx.recomputation.second_order(ctx.saved_tensors, grad_grads,
                                                    ctx.needs_input_grad[1:])
            if result is not None:
                return (None, *result)
        # Kept for the next call only when this one records no graph: a recorded result
        # (create_graph=True, a third derivative) hangs on the recomputation's graph, and the
        # backward through it may free that graph before a next call would reuse it.
        if recording or not differentiated <= ctx.inner.keys():
            aliases, inner = _FusedGradients._recompute(
                ctx, len(grad_grads), differentiated | (set() if recording else ctx.inner.keys()))
            if not recording:
                ctx.aliases, ctx.inner = aliases, inner
        else:
            aliases, inner = ctx.aliases, ctx.inner
        used = [(inner[i], grad_grads[i]) for i in differentiated
                if inner[i] is not None and inner[i].requires_grad]
        targets = [k for k in range(len(aliases)) if ctx.needs_input_grad[1 + k]]
        result = [None] * len(aliases)
        if used and targets:
            grads = torch.autograd.grad([g for g, _ in used], [aliases[k] for k in targets],
                                        [gg for _, gg in used], retain_graph=True,
                                        create_graph=recording, allow_unused=True)
            for k, grad in zip(targets, grads):
                result[k] = grad
        return (None, *result)

    @staticmethod
    def _recompute(ctx, count, which):
        """-> aliases of the saved tensors, {i: the gradient of input i with a graph}.
        The backward returns partial derivatives: the grad_outputs may depend on the inputs
        (through the layer's own output, say), and autograd.grad through the tensors
        themselves would follow those paths too. Aliases cut them, and keep a recorded result
        connected to the tensors."""
        with torch.enable_grad():
            aliases = [t.view_as(t) if t is not None and t.requires_grad else t
                       for t in ctx.saved_tensors]
        return aliases, ctx.recomputation.gradients_with_graph(aliases[:count], aliases[count:],
                                                               sorted(which))


# ---- the pass's second half in the layer's own node ----------------------------------------
# A gradient-penalty step (loss(output) + penalty(d loss2/d x, taken with create_graph=True))
# runs two backwards of the layer in one: the pass (_FusedGradients' node) and the layer's own
# first-order backward of the output's gradient (the layer's Function's node). The pass's
# second half is the first-order backward's tangent, linear in the output gradients' tangents,
# so the layer's backward can ride in it (second_order.py): the layer's node, which the engine
# runs after the pass (it was made earlier, and each node the pass's gradients pass through was
# made later), then finishes the pass with its output gradients, and its own backward costs no
# product. Where the engine will not run the layer's node after the pass, the pass runs whole.
def _running_task():
    return torch._C._current_graph_task_id()


def _leave_to_layer(node, key):
    """Whether the layer's node (its Function's ctx) will run later in the running backward,
    and no other pass has left it direction `key`'s second half already."""
    task = _running_task()
    if getattr(node, "ran_in_task", None) == task:
        return False
    if not hasattr(node, "left_passes"):
        node.left_passes = {}
    if (task, key) in node.left_passes:
        return False
    try:  # a C++ layer node's context names its node (_NodeContext)
        return torch._C._will_engine_execute_node(getattr(node, "graph_node", node))
    except RuntimeError:  # the engine refuses to say: run the pass whole
        return False


def _left_pass(ctx, key):
    """-> the pass's second half left to this node for direction `key` in the running
    backward (None if none): f(grad_outputs, needs) -> the gradients of the direction's inputs,
    its own backward of grad_outputs included. Notes that the node has run in this backward.
    A compiler tracing the backward runs no pass."""
    if torch.compiler.is_compiling():
        return None
    task = _running_task()
    ctx.ran_in_task = task
    left = getattr(ctx, "left_passes", None)
    return left.pop((task, key), None) if left else None


def _check_not_packed(batch_sizes):
    if batch_sizes is not None:
        raise NotImplementedError(
            "fusedrnn: torch.func transforms and forward-mode AD through PackedSequence input "
            "are not supported; pad the batch, or take gradients with torch.autograd")


def _reference_jvp(ctx, reference, primals, tangents, options):
    """Forward-mode derivatives of the outputs of `reference(*primals, *options)`: forward AD
    (torch.autograd.forward_ad, torch.func.jvp) runs through the plain-PyTorch layer, as the
    fused kernels have no forward-mode form (three passes of it: a forward and two reverse).
    tangents: one per primal, None where it has none."""
    _check_not_packed(ctx.batch_sizes)
    wanted = [i for i, (p, t) in enumerate(zip(primals, tangents))
              if p is not None and t is not None]
    if not wanted:
        return tuple(None for _ in reference(*primals, *options))
    # J t as the reverse derivative of the (linear) map u -> J^T u: forward AD cannot nest here.
    outputs, pullback = torch.func.vjp(_of_some(reference, primals, options, wanted),
                                       *(primals[i] for i in wanted))
    _, pullback_of_pullback = torch.func.vjp(
        pullback, tuple(torch.zeros_like(out) for out in outputs))
    return pullback_of_pullback(tuple(tangents[i] for i in wanted))[0]


def _needed_by_engine(ctx, arguments, weights):
    """-> (ctx.needs_input_grad with the weights' and biases' entries off where the running
    backward will use none of their gradients, whether it will use any of them). `weights`:
    their positions among the Function's `arguments`, past the end where an optional one was not
    passed.
    needs_input_grad is fixed when the layer runs; a backward that asks for some gradients only
    (`autograd.grad(loss, x)`, `backward(inputs=...)`, a gradient penalty's create_graph
    backward) never runs the nodes the others flow to, and the backward ops then skip the
    weights' products (they take all the weights' gradients or none). Under functorch or a
    compiler every gradient counts as needed."""
    needed = ctx.needs_input_grad
    asked = [i for i in weights if i < len(needed) and needed[i]]
    if not asked:
        return needed, False
    if torch.compiler.is_compiling() or any(
            isinstance(a, torch.Tensor) and not _plain(a) for a in arguments):
        return needed, True
    if any(_C.engine_uses_gradient(arguments[i]) for i in asked):
        return needed, True
    return tuple(need and i not in weights for i, need in enumerate(needed)), False


# ---- autograd ------------------------------------------------------------------------------
# The backward ops' results as the gradients of a one-direction layer's inputs, in the order of
# the Functions' arguments (one tensor serves both biases). `weights`: whether the op computed
# the weights' and biases' gradients (its weight_grads; None for each otherwise).
def _lstm_grads(results, has_bias, has_projection, weights):
    """-> the gradients of input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr."""
    grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr = results
    if not weights:
        return (grad_input, grad_h0, grad_c0) + (None,) * 5
    grad_bias = grad_bias if has_bias else None
    return (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_bias,
            grad_w_hr if has_projection else None)


def _h0_if_needed(grads, needed):
    """`grads` (input's, h0's, ...) with None for h0 where its gradient is not `needed` (the ops
    then skip the product that gives it, and return it empty: at T=1 a quarter of the backward's
    products)."""
    return grads if needed else (grads[0], None, *grads[2:])


def _gru_grads(results, has_bias, weights):
    """-> the gradients of input, h0, w_ih, w_hh, b_ih, b_hh."""
    if not weights:
        return (*results[:2], None, None, None, None)
    return (*results[:4], *(results[4:6] if has_bias else (None, None)))


def _rnn_grads(results, has_bias, weights):
    """-> the gradients of input, h0, w_ih, w_hh, b_ih, b_hh."""
    if not weights:
        return (*results[:2], None, None, None, None)
    grad_bias = results[4] if has_bias else None
    return (*results[:4], grad_bias, grad_bias)


# Each backward runs the fused backward op, with grad mode off as the engine leaves it for a
# first-order backward. Grad mode on means create_graph=True or a torch.func transform: then the
# gradients must be differentiable, and _differentiable_backward makes them so (the fused op's
# gradients, recomputed in plain ops only when differentiated; or torch.func's vjp).
# The backward reads the layer's output (each step's h_{t-1}, and the RNN's activation), so it
# keeps a copy of its own: the caller may edit the output in place before the backward
# (ReLU(inplace=True), zeroing padded steps), as torch.nn allows.
class LSTMFunction(torch.autograd.Function):
    """-> output, h_n, c_n, then what the backward keeps (see _keep)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes, w_hr=None):
        output, hn, cn, gates, cells, unprojected = _ops.lstm_forward(
            input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, True, batch_sizes, w_hr)
        return output, hn, cn, output.clone(), gates, cells, unprojected

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes, *w_hr = inputs
        w_hr = w_hr[0] if w_hr else None
        _keep(ctx, (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), outputs[3:], batch_sizes)
        ctx.reverse = reverse

    @staticmethod
    def backward(ctx, grad_output, grad_hn, grad_cn, *_):
        input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, output, gates, cells, unprojected = \
            ctx.saved_tensors
        inputs = (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
        needed, weights = _needed_by_engine(
            ctx, (*inputs[:7], ctx.reverse, ctx.batch_sizes, w_hr), (3, 4, 5, 6, 9))
        needed = needed[:7] + (len(needed) > 9 and needed[9],)
        left = _left_pass(ctx, 0)

        def fused():
            has_bias = b_ih is not None
            return _h0_if_needed(_lstm_grads(_ops.lstm_backward(
                grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output, gates, cells,
                has_bias, ctx.reverse, ctx.batch_sizes, w_hr, unprojected, weights, needed[1]),
                has_bias, w_hr is not None, weights), needed[1])

        if torch.is_grad_enabled():
            grads = _differentiable_backward(
                _lstm_reference, inputs, (ctx.reverse,), (grad_output, grad_hn, grad_cn),
                needed, fused, output, (gates, cells, unprojected), (ctx, 0), ctx.batch_sizes)
        elif left:
            grads = left((grad_output, grad_hn, grad_cn), needed)
        else:
            grads = fused()
        return (*grads[:7], None, None, grads[7])


class GRUFunction(torch.autograd.Function):
    """-> output, h_n, then what the backward keeps (see _keep)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes):
        output, hn, saved = _ops.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, True,
                                             batch_sizes)
        return output, hn, output.clone(), saved

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes = inputs
        _keep(ctx, (input, h0, w_ih, w_hh, b_ih, b_hh), outputs[2:], batch_sizes)
        ctx.reverse = reverse

    @staticmethod
    def backward(ctx, grad_output, grad_hn, *_):
        input, h0, w_ih, w_hh, b_ih, b_hh, output, saved = ctx.saved_tensors
        inputs = (input, h0, w_ih, w_hh, b_ih, b_hh)
        needed, weights = _needed_by_engine(ctx, (*inputs, ctx.reverse, ctx.batch_sizes),
                                            range(2, 6))
        left = _left_pass(ctx, 0)

        def fused():
            has_bias = b_ih is not None
            return _h0_if_needed(_gru_grads(_ops.gru_backward(
                grad_output, grad_hn, input, h0, w_ih, w_hh, output, saved, has_bias,
                ctx.reverse, ctx.batch_sizes, weights, needed[1]), has_bias, weights), needed[1])

        if torch.is_grad_enabled():
            grads = _differentiable_backward(_gru_reference, inputs, (ctx.reverse,),
                                             (grad_output, grad_hn), needed[:6], fused,
                                             output, (saved,), (ctx, 0), ctx.batch_sizes)
        elif left:
            grads = left((grad_output, grad_hn), needed[:6])
        else:
            grads = fused()
        return (*grads, None, None)


class RNNFunction(torch.autograd.Function):
    """-> output, h_n, then what the backward keeps (see _keep)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes):
        output, hn = _ops.rnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
                                      batch_sizes)
        return output, hn, output.clone()

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes = inputs
        _keep(ctx, (input, h0, w_ih, w_hh, b_ih, b_hh), outputs[2:], batch_sizes)
        ctx.relu, ctx.reverse = relu, reverse

    @staticmethod
    def backward(ctx, grad_output, grad_hn, *_):
        input, h0, w_ih, w_hh, b_ih, b_hh, output = ctx.saved_tensors
        inputs = (input, h0, w_ih, w_hh, b_ih, b_hh)
        needed, weights = _needed_by_engine(
            ctx, (*inputs, ctx.relu, ctx.reverse, ctx.batch_sizes), range(2, 6))
        left = _left_pass(ctx, 0)

        def fused():
            has_bias = b_ih is not None
            return _h0_if_needed(_rnn_grads(_ops.rnn_backward(
                grad_output, grad_hn, input, h0, w_ih, w_hh, output, has_bias, ctx.relu,
                ctx.reverse, ctx.batch_sizes, weights, needed[1]), has_bias, weights), needed[1])

        if torch.is_grad_enabled():
            grads = _differentiable_backward(_rnn_reference, inputs, (ctx.relu, ctx.reverse),
                                             (grad_output, grad_hn), needed[:6], fused,
                                             output, (), (ctx, 0), ctx.batch_sizes)
        elif left:
            grads = left((grad_output, grad_hn), needed[:6])
        else:
            grads = fused()
        return (*grads, None, None, None)


# Both directions of a bidirectional layer: one op forward and one op backward, so that the CPU
# runs the directions side by side (csrc/layer/bidirectional.cpp, both_directions).
# forward(input, batch_sizes, [options,] *directions): the forward direction's per-direction
# inputs, then the reverse's, k each; returns the forward direction's results, then the
# reverse's, then what the backward keeps (see _keep).
def _lists(directions, k):
    """[forward's k inputs..., reverse's k...] -> k lists [forward's, reverse's]."""
    return [[directions[i], directions[k + i]] for i in range(k)]


def _keep(ctx, inputs, kept, batch_sizes):
    """Saves the Function's tensor inputs and the outputs it returns for its backward alone
    (`kept`: its copy of the layer's output, which the caller may then edit in place, and the
    activations), which are not differentiable."""
    ctx.mark_non_differentiable(*kept)
    ctx.save_for_backward(*inputs, *kept)
    ctx.save_for_forward(*inputs)  # for jvp
    ctx.batch_sizes = batch_sizes
    ctx.set_materialize_grads(False)  # an unused output costs nothing in the backward


def _pair_backward(ctx, needs, reference, input, directions, options, grads, k, leading,
                   fused, outputs, saved, left):
    """The gradients of all the Function's inputs: input's two summed. Each direction's come
    from fused(d) (the gradients of input and that direction's k tensors), from left[d] where a
    double backward's pass left its second half to this node (_left_pass), and under grad mode
    through _differentiable_backward. `needs`: _pair_needs's, which of each direction's inputs
    need a gradient; `leading`: the Function's inputs before the directions; `outputs`, `saved`:
    each direction's output and saved activations. A direction's gradient of h0 is None where it
    needs none (the ops then skip the product that gives it)."""
    def fused_direction(d):
        return _h0_if_needed(fused(d), needs[d][1])

    if torch.is_grad_enabled():
        per = [_differentiable_backward(
            reference, (input, *directions[d * k:(d + 1) * k]), (*options, d == 1), grads[d],
            needs[d], lambda d=d: fused_direction(d), outputs[d], saved[d], (ctx, d),
            ctx.batch_sizes) for d in range(2)]
    else:
        per = [left[d](grads[d], needs[d]) if left[d] else fused_direction(d) for d in range(2)]
    return (_sum_defined(per[0][0], per[1][0]), *(None,) * (leading - 1), *per[0][1:],
            *per[1][1:])


def _pair_needs(needed, leading, k):
    """Which of each direction's inputs need a gradient, input first, from `needed` (a pair
    Function's, `leading` arguments before the directions' k each)."""
    return [(needed[0], *needed[leading + d * k:leading + (d + 1) * k]) for d in range(2)]


def _pair_jvp(ctx, reference, tangents, options, k, leading):
    """Both directions' forward-mode derivatives (as _reference_jvp). tangents: the Function's,
    `leading` before the directions' k each. -> the tangents of both directions' outputs."""
    primals = ctx.saved_tensors[:1 + 2 * k]
    input, directions = primals[0], primals[1:]
    return tuple(t for d in range(2) for t in _reference_jvp(
        ctx, reference, (input, *directions[d * k:(d + 1) * k]),
        (tangents[0], *tangents[leading + d * k:leading + (d + 1) * k]), (*options, d == 1)))


def _legacy_batched(grads):
    """Whether the backward runs under autograd's own vmap (autograd.grad(is_grads_batched=True),
    jacobian(vectorize=True)), whose for-loop fallback cannot batch ops that return lists: the
    pair ops then run as their two one-direction ops."""
    if torch.compiler.is_compiling():  # Dynamo cannot trace the check; it does not batch
        return False
    return any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g) for g in grads)


def _pair_weights(leading, k, states):
    """The positions of a pair Function's weights and biases among its arguments: each
    direction's k after the `leading` ones are `states` states, then weights."""
    return [leading + d * k + i for d in range(2) for i in range(states, k)]


def _sum_defined(a, b):
    return b if a is None else a if b is None else a + b


class LSTMPairFunction(torch.autograd.Function):
    """directions: h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr of each."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, batch_sizes, *directions):
        h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = _lists(directions, 7)
        results = _ops.lstm_forward_pair(input, h0, c0, w_ih, w_hh, b_ih, b_hh, True,
                                         batch_sizes, w_hr)
        kept = [t for d in (0, 6) for t in (results[d].clone(), *results[d + 3:d + 6])]
        return (*results[:3], *results[6:9], *kept)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, batch_sizes, *directions = inputs
        _keep(ctx, (input, *directions), outputs[6:], batch_sizes)

    @staticmethod
    def backward(ctx, *grads):
        input, *saved = ctx.saved_tensors
        directions, kept = saved[:14], saved[14:]
        h0, c0, w_ih, w_hh, b_ih, _, w_hr = _lists(directions, 7)
        output, gates, cells, unprojected = _lists(kept, 4)
        has_bias = b_ih[0] is not None
        grad_output, grad_hn, grad_cn = [grads[0], grads[3]], [grads[1], grads[4]], \
            [grads[2], grads[5]]
        needed, weights = _needed_by_engine(ctx, (input, ctx.batch_sizes, *directions),
                                            _pair_weights(2, 7, 2))
        needs = _pair_needs(needed, 2, 7)
        h0_needed = [direction[1] for direction in needs]
        left = [_left_pass(ctx, d) for d in range(2)]
        if torch.is_grad_enabled() or _legacy_batched(grads) or any(left):
            def results(d):
                return _ops.lstm_backward(
                    grad_output[d], grad_hn[d], grad_cn[d], input, h0[d], c0[d], w_ih[d],
                    w_hh[d], output[d], gates[d], cells[d], has_bias, d == 1, ctx.batch_sizes,
                    w_hr[d], unprojected[d], weights, h0_needed[d])
        else:
            both = _ops.lstm_backward_pair(
                grad_output, grad_hn, grad_cn, input, h0, c0, w_ih, w_hh, output, gates, cells,
                has_bias, ctx.batch_sizes, w_hr, unprojected, weights, any(h0_needed))

            def results(d):
                return both[7 * d:7 * d + 7]

        return _pair_backward(
            ctx, needs, _lstm_reference, input, directions, (), (grads[:3], grads[3:6]), 7, 2,
            lambda d: _lstm_grads(results(d), has_bias, w_hr[d] is not None, weights), output,
            list(zip(gates, cells, unprojected)), left)


class GRUPairFunction(torch.autograd.Function):
    """directions: h0, w_ih, w_hh, b_ih, b_hh of each."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, batch_sizes, *directions):
        h0, w_ih, w_hh, b_ih, b_hh = _lists(directions, 5)
        results = _ops.gru_forward_pair(input, h0, w_ih, w_hh, b_ih, b_hh, True, batch_sizes)
        return (*results[:2], *results[3:5],
                results[0].clone(), results[2], results[3].clone(), results[5])

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, batch_sizes, *directions = inputs
        _keep(ctx, (input, *directions), outputs[4:], batch_sizes)

    @staticmethod
    def backward(ctx, *grads):
        input, *saved = ctx.saved_tensors
        directions = saved[:10]
        h0, w_ih, w_hh, b_ih, _ = _lists(directions, 5)
        output, kept = [saved[10], saved[12]], [saved[11], saved[13]]
        has_bias = b_ih[0] is not None
        grad_output, grad_hn = [grads[0], grads[2]], [grads[1], grads[3]]
        needed, weights = _needed_by_engine(ctx, (input, ctx.batch_sizes, *directions),
                                            _pair_weights(2, 5, 1))
        needs = _pair_needs(needed, 2, 5)
        h0_needed = [direction[1] for direction in needs]
        left = [_left_pass(ctx, d) for d in range(2)]
        if torch.is_grad_enabled() or _legacy_batched(grads) or any(left):
            def results(d):
                return _ops.gru_backward(grad_output[d], grad_hn[d], input, h0[d], w_ih[d],
                                         w_hh[d], output[d], kept[d], has_bias, d == 1,
                                         ctx.batch_sizes, weights, h0_needed[d])
        else:
            both = _ops.gru_backward_pair(grad_output, grad_hn, input, h0, w_ih, w_hh, output,
                                          kept, has_bias, ctx.batch_sizes, weights,
                                          any(h0_needed))

            def results(d):
                return both[6 * d:6 * d + 6]

        return _pair_backward(
            ctx, needs, _gru_reference, input, directions, (), (grads[:2], grads[2:4]), 5, 2,
            lambda d: _gru_grads(results(d), has_bias, weights), output, [(kept[0],), (kept[1],)],
            left)


class RNNPairFunction(torch.autograd.Function):
    """directions: h0, w_ih, w_hh, b_ih, b_hh of each."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, batch_sizes, relu, *directions):
        h0, w_ih, w_hh, b_ih, b_hh = _lists(directions, 5)
        results = _ops.rnn_forward_pair(input, h0, w_ih, w_hh, b_ih, b_hh, relu, batch_sizes)
        return (*results, results[0].clone(), results[2].clone())

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, batch_sizes, relu, *directions = inputs
        _keep(ctx, (input, *directions), outputs[4:], batch_sizes)
        ctx.relu = relu

    @staticmethod
    def backward(ctx, *grads):
        input, *saved = ctx.saved_tensors
        directions = saved[:10]
        h0, w_ih, w_hh, b_ih, _ = _lists(directions, 5)
        has_bias = b_ih[0] is not None
        grad_output, grad_hn, output = [grads[0], grads[2]], [grads[1], grads[3]], saved[10:12]
        needed, weights = _needed_by_engine(
            ctx, (input, ctx.batch_sizes, ctx.relu, *directions), _pair_weights(3, 5, 1))
        needs = _pair_needs(needed, 3, 5)
        h0_needed = [direction[1] for direction in needs]
        left = [_left_pass(ctx, d) for d in range(2)]
        if torch.is_grad_enabled() or _legacy_batched(grads) or any(left):
            def results(d):
                return _ops.rnn_backward(grad_output[d], grad_hn[d], input, h0[d], w_ih[d],
                                         w_hh[d], output[d], has_bias, ctx.relu, d == 1,
                                         ctx.batch_sizes, weights, h0_needed[d])
        else:
            both = _ops.rnn_backward_pair(grad_output, grad_hn, input, h0, w_ih, w_hh, output,
                                          has_bias, ctx.relu, ctx.batch_sizes, weights,
                                          any(h0_needed))

            def results(d):
                return both[5 * d:5 * d + 5]

        return _pair_backward(
            ctx, needs, _rnn_reference, input, directions, (ctx.relu,), (grads[:2], grads[2:4]),
            5, 3, lambda d: _rnn_grads(results(d), has_bias, weights), output, [(), ()], left)


# ---- forward-mode AD ------------------------------------------------------------------------
# Each Function's jvp, through the plain-PyTorch layer (_reference_jvp). Dynamo refuses to trace
# a Function that defines one, so only the eager calls take the subclasses that have it.
def _lstm_jvp(ctx, *tangents):
    primals = ctx.saved_tensors[:8]
    input_tangents = (*tangents[:7], tangents[9] if len(tangents) > 9 else None)
    return (*_reference_jvp(ctx, _lstm_reference, primals, input_tangents, (ctx.reverse,)),
            None, None, None, None)


def _gru_jvp(ctx, *tangents):
    return (*_reference_jvp(ctx, _gru_reference, ctx.saved_tensors[:6], tangents[:6],
                            (ctx.reverse,)), None, None)


def _rnn_jvp(ctx, *tangents):
    return (*_reference_jvp(ctx, _rnn_reference, ctx.saved_tensors[:6], tangents[:6],
                            (ctx.relu, ctx.reverse)), None)


def _lstm_pair_jvp(ctx, *tangents):
    return (*_pair_jvp(ctx, _lstm_reference, tangents, (), 7, 2), *(None,) * 8)


def _gru_pair_jvp(ctx, *tangents):
    return (*_pair_jvp(ctx, _gru_reference, tangents, (), 5, 2), *(None,) * 4)


def _rnn_pair_jvp(ctx, *tangents):
    return (*_pair_jvp(ctx, _rnn_reference, tangents, (ctx.relu,), 5, 3), None, None)


def _with_jvp(function, jvp):
    return type(function.__name__, (function,),
                {"jvp": staticmethod(jvp), "__doc__": function.__doc__})


# On every apply in grad mode torch binds the arguments to forward's signature for setup_context
# (inspect.signature, then bind: 30 us a call on the development VM). The Functions are called
# with positional arguments alone, so a bare *args signature binds the same tuple in 4 us.
_POSITIONAL = inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])
for _function in (LSTMFunction, GRUFunction, RNNFunction, LSTMPairFunction, GRUPairFunction,
                  RNNPairFunction, _FusedGradients):
    _function.forward.__signature__ = _POSITIONAL

_EAGER = {function: _with_jvp(function, jvp) for function, jvp in (
    (LSTMFunction, _lstm_jvp), (GRUFunction, _gru_jvp), (RNNFunction, _rnn_jvp),
    (LSTMPairFunction, _lstm_pair_jvp), (GRUPairFunction, _gru_pair_jvp),
    (RNNPairFunction, _rnn_pair_jvp))}


def _apply(function, *args):
    """function.apply, with forward-mode AD where Dynamo is not tracing."""
    return (function if torch.compiler.is_compiling() else _EAGER[function]).apply(*args)


# ---- one layer, one direction --------------------------------------------------------------
# While exporting (torch.export), a layer takes the call without a gradient: its op alone,
# saving nothing. The op's autograd, registered in C++ (csrc/layer/op_autograd.cpp), makes a
# node where the exported program runs with a gradient, and saves what its backward needs then.
def transform_active():
    """Whether a forward-mode AD level or a torch.func transform is active (eager only)."""
    return forward_ad._current_level >= 0 or torch._C._functorch.maybe_current_level() is not None


def _needs_grad(*tensors):
    """Whether a call must go through its autograd.Function: a tensor requires grad, or a
    forward-mode AD level or a torch.func transform is active (their tensors need not)."""
    if not torch.compiler.is_compiling() and transform_active():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _layer_node(mode, input, states, weights, reverse, batch_sizes, w_hr=None):
    """A one-direction layer's CPU call that may need a gradient, as one autograd node in C++
    (csrc/layer/direct.h, direct_layer_node): a Python autograd.Function costs a few hundred
    microseconds a training step, more than a small layer's math (a cell stepped in a loop, nn.LSTM
    stepped one step at a time in a decoder, a batch of one). Any T in the forward direction,
    padded or packed (batch_sizes), the LSTM's with or without a projection (w_hr); at T=1
    either direction, the same step. -> the results, or None where the node does not apply
    (then the Function runs, and raises any error)."""
    packed = batch_sizes is not None
    weights = [w for w in (*weights, w_hr) if w is not None]
    if (input.dim() != (2 if packed else 3)
            or (reverse and (packed or input.size(0) != 1))
            or torch.compiler.is_compiling() or transform_active()
            or torch._C._has_torch_function((input, *states, *weights))):
        return None
    try:
        return _C.direct_layer_node(mode, input, states, weights, batch_sizes)
    except (RuntimeError, ValueError):
        return None


def _layer_pair_node(mode, input, directions, batch_sizes):
    """Both directions of a layer's CPU call that may need a gradient as one autograd node in C++
    (direct_layer_pair_node), as _layer_node does for one direction. directions: each
    direction's states, then w_ih, w_hh, b_ih, b_hh (and the LSTM's w_hr), as the pair Functions
    take them. -> both directions' results, or None where the node does not apply."""
    states = 2 if mode == "LSTM" else 1
    forward, reverse = directions
    if (input.dim() != (3 if batch_sizes is None else 2)
            or torch.compiler.is_compiling() or transform_active()
            or torch._C._has_torch_function((input, *forward, *reverse))):
        return None
    hx = [*forward[:states], *reverse[:states]]
    weights = [w for direction in (forward, reverse) for w in direction[states:]
               if w is not None]
    try:
        return _C.direct_layer_pair_node(mode, input, hx, weights, batch_sizes)
    except (RuntimeError, ValueError):
        return None


class _NodeContext:
    """A Function's ctx as its backward reads it, for a C++ layer node whose backward runs the
    Function's (_layer_node_backward). `graph_node`: the node, which the second-order pass asks
    the engine about (_leave_to_layer)."""

    def __init__(self, graph_node):
        self.graph_node = graph_node


# The contexts of the layer nodes whose create_graph backward ran in Python, by node: the
# second-order pass of their gradients may leave its second half on one (_leave_to_layer), which
# the node's next backward takes up. Held by that pass's graph alone (_Recomputation.layer).
_node_contexts = weakref.WeakValueDictionary()


def _function_slots(cell, given, projection):
    """Where each of a direction's node inputs (its states, w_ih, w_hh, then b_ih, b_hh where it
    has them, then the LSTM's w_hr where `projection`), `given` of them, go among the
    Function's per direction: its states, w_ih, w_hh, b_ih, b_hh, and the LSTM's w_hr last.
    -> the slots, and how many the Function takes a direction."""
    size = (2 if cell == "LSTM" else 1) + 4 + (cell == "LSTM")
    slots = list(range(given - projection))
    if projection:
        slots.append(size - 1)
    return slots, size


def _placed(values, slots, size, absent):
    """values put at `slots` of a list of `size`, `absent` elsewhere."""
    placed = [absent] * size
    for slot, value in zip(slots, values):
        placed[slot] = value
    return placed


def _layer_node_backward(cell, pair, node, saved, grads, needed, batch_sizes):
    """The backward of a C++ layer node over a sequence where the fused op cannot give it alone
    (grad mode on: create_graph or torch.func; batched gradients), and every backward of it after
    a create_graph one: the Function's own (the pair Function's where `pair`), on a ctx built
    from what the node saved (its inputs, then per direction its copy of the output and the
    activations: the LSTM's gates, cells and, with a projection, its unprojected output).
    `needed`: one per input; batch_sizes: packed input's, else None. -> a gradient or None per
    input."""
    ctx = _node_contexts.get(node)
    if ctx is None:
        ctx = _NodeContext(node)
        if torch.is_grad_enabled():
            _node_contexts[node] = ctx
    count = len(needed)
    inputs, kept = list(saved[:count]), [k.detach() for k in saved[count:]]
    ctx.batch_sizes = batch_sizes
    directions = 2 if pair else 1
    each = (count - 1) // directions
    # The LSTM keeps its output, gates, cells, and its unprojected output with a projection.
    projection = cell == "LSTM" and len(kept) == 4 * directions
    if cell == "LSTM" and not projection:  # the unprojected output empty, as the op gives it
        per = len(kept) // directions
        kept = [t for d in range(directions)
                for t in (*kept[d * per:(d + 1) * per], kept[d * per + 1].new_empty(0))]
    slots, k = _function_slots(cell, each, projection)
    if pair:
        return _pair_node_backward(ctx, cell, inputs, kept, grads, needed, slots, k)
    function_inputs = [inputs[0], *_placed(inputs[1:], slots, k, None)]
    needs = [needed[0], *_placed(needed[1:], slots, k, False)]
    ctx.reverse = False
    if cell == "LSTM":  # the Function's inputs: ..., b_hh, reverse, batch_sizes, w_hr
        ctx.saved_tensors = (*function_inputs, *kept)
        ctx.needs_input_grad = (*needs[:7], False, False, needs[7])
        results = LSTMFunction.backward(ctx, *grads)
        results = (*results[:7], results[9])
    elif cell == "GRU":
        ctx.saved_tensors = (*function_inputs, *kept)
        ctx.needs_input_grad = (*needs, False, False)
        results = GRUFunction.backward(ctx, *grads)
    else:
        ctx.relu = cell == "RNN_RELU"
        ctx.saved_tensors = (*function_inputs, *kept)
        ctx.needs_input_grad = (*needs, False, False, False)
        results = RNNFunction.backward(ctx, *grads)
    return [results[0], *(results[1 + slot] for slot in slots)]


def _pair_node_backward(ctx, cell, inputs, kept, grads, needed, slots, k):
    """_layer_node_backward's for a pair node: x, then each direction's node inputs, which go to
    `slots` of the pair Function's k a direction; kept: each direction's output, then its
    activations, as the Function keeps them."""
    each = len(slots)
    directions, needs = [], [needed[0]]
    for d in range(2):
        directions += _placed(inputs[1 + d * each:1 + (d + 1) * each], slots, k, None)
        needs += _placed(needed[1 + d * each:1 + (d + 1) * each], slots, k, False)
    # The Function's arguments before the directions: input, batch_sizes (and the RNN's relu).
    function, leading = {"LSTM": (LSTMPairFunction, 2), "GRU": (GRUPairFunction, 2)}.get(
        cell, (RNNPairFunction, 3))
    if function is RNNPairFunction:
        ctx.relu = cell == "RNN_RELU"
    ctx.saved_tensors = (inputs[0], *directions, *kept)
    ctx.needs_input_grad = (needs[0], *(False,) * (leading - 1), *needs[1:])
    results = function.backward(ctx, *grads)
    per_direction = [[results[leading + d * k + slot] for slot in slots] for d in range(2)]
    return [results[0], *per_direction[0], *per_direction[1]]


_C.set_python_layer_backward(_layer_node_backward)


def lstm_layer(input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False,
               batch_sizes=None, w_hr=None):
    """-> output [T, B, P], h_n [B, P], c_n [B, H], where P is w_hr's projection size (H without
    one). Saves nothing when no gradient is needed."""
    if (_needs_grad(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
            and not torch.compiler.is_exporting()):
        node = _layer_node("LSTM", input, (h0, c0), (w_ih, w_hh, b_ih, b_hh), reverse,
                           batch_sizes, w_hr)
        if node is not None:
            return tuple(node)
        return _apply(LSTMFunction, input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes,
                      w_hr)[:3]
    output, hn, cn, _, _, _ = _ops.lstm_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
                                                False, batch_sizes, w_hr)
    return output, hn, cn


def gru_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, reverse=False, batch_sizes=None):
    """-> output [T, B, H], h_n [B, H]."""
    if _needs_grad(input, h0, w_ih, w_hh, b_ih, b_hh) and not torch.compiler.is_exporting():
        node = _layer_node("GRU", input, (h0,), (w_ih, w_hh, b_ih, b_hh), reverse, batch_sizes)
        if node is not None:
            return tuple(node)
        return _apply(GRUFunction, input, h0, w_ih, w_hh, b_ih, b_hh, reverse, batch_sizes)[:2]
    output, hn, _ = _ops.gru_forward(input, h0, w_ih, w_hh, b_ih, b_hh, reverse, False,
                                     batch_sizes)
    return output, hn


def rnn_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, relu=False, reverse=False,
              batch_sizes=None):
    """Elman RNN, tanh (or relu). -> output [T, B, H], h_n [B, H]."""
    if _needs_grad(input, h0, w_ih, w_hh, b_ih, b_hh) and not torch.compiler.is_exporting():
        node = _layer_node("RNN_RELU" if relu else "RNN_TANH", input, (h0,),
                           (w_ih, w_hh, b_ih, b_hh), reverse, batch_sizes)
        if node is not None:
            return tuple(node)
        return _apply(RNNFunction, input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
                      batch_sizes)[:2]
    return _ops.rnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, batch_sizes)


# ---- one layer, both directions ------------------------------------------------------------
# While exporting, as one direction's: the call without a gradient, the pair op alone
# (op_autograd.cpp runs it as the two directions' ops where the program runs with a gradient).
# directions: two tuples of per-direction tensors, the forward direction's and the reverse's,
# in the order of the one-direction functions above. -> two tuples of results, likewise.
def lstm_layer_pair(input, directions, batch_sizes=None):
    """directions: (h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr) each. -> (output, h_n, c_n) each."""
    flat = (*directions[0], *directions[1])
    if _needs_grad(input, *flat) and not torch.compiler.is_exporting():
        results = _layer_pair_node("LSTM", input, directions, batch_sizes)
        if results is None:
            results = _apply(LSTMPairFunction, input, batch_sizes, *flat)[:6]
    else:
        *per_direction, w_hr = _lists(flat, 7)
        results = _ops.lstm_forward_pair(input, *per_direction, False, batch_sizes, w_hr)
        results = (*results[:3], *results[6:9])
    return results[:3], results[3:]


def gru_layer_pair(input, directions, batch_sizes=None):
    """directions: (h0, w_ih, w_hh, b_ih, b_hh) each. -> (output, h_n) each."""
    flat = (*directions[0], *directions[1])
    if _needs_grad(input, *flat) and not torch.compiler.is_exporting():
        results = _layer_pair_node("GRU", input, directions, batch_sizes)
        if results is None:
            results = _apply(GRUPairFunction, input, batch_sizes, *flat)[:4]
    else:
        results = _ops.gru_forward_pair(input, *_lists(flat, 5), False, batch_sizes)
        results = (*results[:2], *results[3:5])
    return results[:2], results[2:]


def rnn_layer_pair(input, directions, relu=False, batch_sizes=None):
    """directions: (h0, w_ih, w_hh, b_ih, b_hh) each. -> (output, h_n) each."""
    flat = (*directions[0], *directions[1])
    if _needs_grad(input, *flat) and not torch.compiler.is_exporting():
        results = _layer_pair_node("RNN_RELU" if relu else "RNN_TANH", input, directions,
                                   batch_sizes)
        if results is None:
            results = _apply(RNNPairFunction, input, batch_sizes, relu, *flat)[:4]
    else:
        results = _ops.rnn_forward_pair(input, *_lists(flat, 5), relu, batch_sizes)
    return tuple(results[:2]), tuple(results[2:])
