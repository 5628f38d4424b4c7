"""The double backward of one layer in one direction, as a pass of its own.

A layer's first-order backward maps the gradients of its outputs, u, to the gradients of its
inputs P (x, h0, [c0], the weights): g(P, u) = J(P)^T u. Differentiating g once more with
incoming gradients v (one per input gradient) asks for the gradients of s = <v, g(P, u)>:
- with respect to u: J(P) v, the forward-mode derivative of the layer along v;
- with respect to P: the derivative of g(P, u) along v, with u held fixed.
So one pass computes both: the layer's tangents along v, forward in time (a linear recurrence
through W_hh), then the first-order backward together with its own tangent, backward in time.
What is parallel in time (the tangents' input projections, the weight gradients) is computed
here for all steps at once; the two loops over time run in C++ (csrc/layer/second_order.cpp:
per step one or two matrix products and one pass over the units, a loop on the CPU or a kernel
on CUDA, whose math, csrc/core/second_order_steps.h, reads the activations the forward saved).
The alternative, autograd over the layer recomputed in plain ops (ops._FusedGradients), records
and replays a graph of dozens of nodes a step. ops._Recomputation.second_order decides where
this runs (on CUDA only where switched on: ops._second_order_on).

Each cell's pass comes in two halves: the tangents, which give the gradients of u, and a
`backward` closure, which gives those of the inputs. The first-order backward is linear in u,
so its tangent along u_dot is the first-order backward of u_dot: given the gradients of the
layer's outputs from elsewhere as u_dot, the second half also computes the layer's own
first-order backward of them, at no matrix product of its own (ops._Recomputation defers it to
the layer's node for that).

Notation follows csrc/core/gates.h: x [T, B, I], h [T, B, P] (P = H without a projection),
gates in torch.nn's order. `dot_w` (an incoming gradient) and `c_dot` are tangents along v of
an input and of a forward quantity; `dc_tan` is the tangent of a first-order backward quantity.
Steps run in the layer's own order: a reverse layer's sequences are flipped on the way in and
out. With batch_sizes (a PackedSequence's), sequences are its rows [rows, W] instead, steps
having fewer rows as sequences end (_Steps), and the final states' gradients enter at each
sequence's last step.
"""
import torch

from ._extension import _C


def _flat(x):
    return x.reshape(-1, x.shape[-1])


def _linear(like, shape, products, biases):
    """sum of a @ w^T over `products` (a [..., K], w [N, K]) plus `biases`, as a new tensor of
    `shape` [..., N] and `like`'s dtype; terms with a None are left out, and all of them gone
    gives zeros."""
    total = None
    for a, w in products:
        if a is not None and w is not None:
            total = _flat(a) @ w.t() if total is None else total.addmm_(_flat(a), w.t())
    total = None if total is None else total.view(shape)
    for b in biases:
        if b is not None:
            total = b.expand(shape).clone() if total is None else total.add_(b)
    return like.new_zeros(shape) if total is None else total


def _packed_steps(batch_sizes):
    """A PackedSequence's [T, B] mask of the steps each sequence has, each sequence's length
    and each step's first row."""
    present = torch.arange(int(batch_sizes[0]))[None, :] < batch_sizes[:, None]
    return present, present.sum(0), batch_sizes.cumsum(0) - batch_sizes


def reversed_rows(batch_sizes, device):
    """A PackedSequence's rows with each sequence reversed in time, as indices into them: row
    offsets[t] + b holds step lengths[b] - 1 - t of sequence b (a permutation that is its own
    inverse, which keeps batch_sizes)."""
    present, lengths, offsets = _packed_steps(batch_sizes)
    t_from = (lengths[None, :] - 1 - torch.arange(len(batch_sizes))[:, None]).clamp_(min=0)
    return (offsets[t_from] + torch.arange(len(lengths))[None, :])[present].to(device)


class _Steps:
    """Where a direction's steps lie in its sequence tensors, in its own order: a padded batch
    [T, B, W] (flipped in time for a reverse layer), or a PackedSequence's rows [rows, W]
    (batch_sizes; each sequence reversed along its own length for a reverse layer), whose steps
    have fewer rows as sequences end. `batch`: B, the first step's rows."""

    def __init__(self, x, batch_sizes, reverse):
        self.batch_sizes, self.reverse = batch_sizes, reverse
        if batch_sizes is None:
            self.batch = x.shape[1]
            return
        self.batch = B = int(batch_sizes[0])
        self.reversed = reversed_rows(batch_sizes, x.device) if reverse else None
        _, lengths, offsets = _packed_steps(batch_sizes)
        self.last_rows = (offsets[lengths - 1] + torch.arange(B)).to(x.device)
        # Row r of step t starts from row r - batch_sizes[t-1] of step t-1, or from the first
        # state's row r: as indices into [first; sequence].
        before = torch.cat([batch_sizes.new_tensor([B]), batch_sizes[:-1]])
        self.previous_rows = (torch.arange(len(x)) + B -
                              before.repeat_interleave(batch_sizes)).to(x.device)

    def in_order(self, t):
        """A sequence tensor in the layer's order, or back (its own inverse); None, or an empty
        one (an LSTM's unprojected outputs, without a projection), stays."""
        if t is None or not self.reverse or not t.numel():
            return t
        return t.flip(0) if self.batch_sizes is None else t[self.reversed]

    def previous(self, first, sequence):
        """The state each step starts from: `first` (None: zeros) at step 0, else the
        sequence's at the step before."""
        first = sequence.new_zeros(self.batch, sequence.shape[-1]) if first is None else first
        if self.batch_sizes is None:
            return torch.cat([first[None], sequence[:-1]])
        return torch.cat([first, sequence])[self.previous_rows]

    def first(self, sequence, dim=0):
        """The first step's rows [B, W] (of `dim`, the steps' dimension)."""
        return sequence.select(dim, 0) if self.batch_sizes is None \
            else sequence.narrow(dim, 0, self.batch)

    def last(self, sequence):
        """Each sequence's last step [B, W]: the final state."""
        return sequence[-1] if self.batch_sizes is None else sequence[self.last_rows]

    def output_grads(self, y, u_y, u_y_dot):
        """The output's gradient u_y (zeros if absent) and its tangent, in step order."""
        u_y = torch.zeros_like(y) if u_y is None else self.in_order(u_y).contiguous()
        return u_y, self.in_order(u_y_dot)


def double_backward(cell, inputs, options, output, saved, grad_outputs, grad_grads, needs,
                    batch_sizes=None):
    """The whole pass of `cell` (lstm, gru, rnn) -> the gradients of (*inputs, *grad_outputs),
    None where not in `needs`."""
    count = len(inputs)
    of_grad_outputs, backward = cell(inputs, options, output, saved, grad_grads, needs[count:],
                                     batch_sizes)
    if not any(needs[:count]):  # the gradients of u alone: the backward loop has nothing to do
        return (None,) * count + of_grad_outputs
    return (*backward(grad_outputs, (None,) * len(grad_outputs), needs[:count]),
            *of_grad_outputs)


def _weight_grad(a, b, c, d):
    """a^T b + c^T d, each summed over steps and batch rows; the second term only where d is
    not None (a weight gradient's tangent: d(grad)^T input + grad^T d(input))."""
    total = _flat(a).t() @ _flat(b)
    return total if d is None else total.addmm_(_flat(c).t(), _flat(d))


def _input_grad(grads, w, grads_other, w_dot):
    """grads @ w + grads_other @ w_dot (the second term where w_dot is not None)."""
    total = _flat(grads) @ w
    if w_dot is not None:
        total.addmm_(_flat(grads_other), w_dot)
    return total.view(*grads.shape[:-1], w.shape[1])


def _backward_product(d, w, w_dot):
    """d = [d, d'] [2, B, K] -> [d w, d' w + d w_dot] [2, B, N]: a backward step's product
    through w [K, N] and its tangent, both in one matrix product."""
    product = torch.matmul(d, w)
    if w_dot is not None:
        product[1].addmm_(d[0], w_dot)
    return product


def _sum_rows(t):
    return t.sum(tuple(range(t.dim() - 1)))


def _shared_grads(need, steps, x, dot_x, w_ih, dot_w_ih, x_gates, h_prev, h_prev_dot,
                  h_gates):
    """{name: gradient} of what every cell's pass returns alike: x, w_ih, w_hh, b_ih, b_hh from
    the pre-activations' gradients and their tangents (x_gates: (d, d') of the input
    projection's, h_gates: of the recurrent product's; the same pair but in the GRU).
    `need`: {name: bool}."""
    (d_x, d_x_tan), (d_h, d_h_tan) = x_gates, h_gates
    grads = {}
    if need["x"]:
        grads["x"] = steps.in_order(_input_grad(d_x_tan, w_ih, d_x, dot_w_ih))
    if need["w_ih"]:
        grads["w_ih"] = _weight_grad(d_x_tan, x, d_x, dot_x)
    if need["w_hh"]:
        grads["w_hh"] = _weight_grad(d_h_tan, h_prev, d_h, h_prev_dot)
    if need["b_ih"]:
        grads["b_ih"] = _sum_rows(d_x_tan)
    if need["b_hh"]:
        grads["b_hh"] = grads["b_ih"].clone() if x_gates is h_gates and need["b_ih"] \
            else _sum_rows(d_h_tan)
    return grads


def _of_grad_outputs(needs, steps, h_dot, *states_dot):
    """The gradients of the grad_outputs: of the output's, its tangent h_dot; of the final
    states', those of `states_dot` (the states' tangents) at each sequence's last step. None
    where not in needs."""
    of_output = steps.in_order(h_dot) if needs[0] else None
    return (of_output, *(steps.last(t) if need else None
                         for need, t in zip(needs[1:], states_dot)))


def lstm(inputs, options, output, saved, grad_grads, needs, batch_sizes=None):
    """The pass's tangents -> (the gradients of the grad_outputs (of output, h_n, c_n; None
    where not in `needs`), backward): backward(grad_outputs, grad_outputs_dot, needs) -> the
    gradients of the inputs (None where not in its `needs`), given the grad_outputs u and their
    tangents (of None: zero).
    inputs: x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr; options: (reverse,); output: the layer's
    output; saved: the forward's gates, cells and unprojected cell outputs (ops.LSTMFunction's);
    grad_grads: one per input, None for zero; batch_sizes: a packed input's (x, output and
    saved are then its rows)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    (reverse,) = options
    dot_x, dot_h0, dot_c0, dot_w_ih, dot_w_hh, dot_b_ih, dot_b_hh, dot_w_hr = grad_grads
    steps = _Steps(x, batch_sizes, reverse)
    x, y, dot_x = map(steps.in_order, (x, output, dot_x))
    # The CPU keeps a half-precision layer's activations in float32 (LayerCall::workspace_like);
    # the pass's loops take the layer's dtype throughout.
    gates, cells, m = (steps.in_order(t).to(y.dtype).contiguous() for t in saved)
    rows, B = x.shape[:-1], steps.batch
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    h_prev = steps.previous(h0, y)
    tanh_cells = cells.tanh()

    # Tangents along v, forward in time: pre_dot gains h_dot_prev W_hh^T a step.
    pre_dot = _linear(x, (*rows, 4 * H), [(dot_x, w_ih), (x, dot_w_ih), (h_prev, dot_w_hh)],
                      [dot_b_ih, dot_b_hh]).contiguous()
    m_w_hr_dot = None if w_hr is None or dot_w_hr is None \
        else (_flat(m) @ dot_w_hr.t()).view(*rows, P)
    c_dot, m_dot = torch.empty_like(cells), torch.empty_like(cells)
    h_dot = m_dot if w_hr is None else torch.empty_like(y)
    _C.lstm_tangent_steps(pre_dot, gates, cells, tanh_cells, c0, w_hh, dot_h0, dot_c0, w_hr,
                          m_w_hr_dot, c_dot, m_dot, h_dot, batch_sizes)

    def backward(grad_outputs, grad_outputs_dot, needs):
        # The first-order backward with u and its tangent, backward in time: grads[:, t] holds
        # the gate gradients dz and their tangent dz' of step t.
        (u_y, u_hn, u_cn), (u_y_dot, u_hn_dot, u_cn_dot) = grad_outputs, grad_outputs_dot
        u_y, u_y_dot = steps.output_grads(y, u_y, u_y_dot)
        grads = x.new_empty(2, *rows, 4 * H)
        dh_all = None if w_hr is None else x.new_empty(2, *rows, P)  # for W_hr's gradient
        dc_first = x.new_empty(2, B, H)
        _C.lstm_backward_tangent_steps(u_y, u_hn, u_cn, u_y_dot, u_hn_dot, u_cn_dot, gates,
                                       pre_dot, cells, tanh_cells, c0, c_dot, dot_c0, w_hh,
                                       dot_w_hh, w_hr, dot_w_hr, grads, dh_all, dc_first,
                                       batch_sizes)

        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
        need = dict(zip(names, needs))
        results = _shared_grads(need, steps, x, dot_x, w_ih, dot_w_ih, grads, h_prev,
                                steps.previous(dot_h0, h_dot), grads)
        if need["h0"]:
            results["h0"] = _backward_product(steps.first(grads, 1), w_hh, dot_w_hh)[1]
        if need["c0"]:  # dc_0' = dc_1' f_1 + dc_1 f_dot_1
            dc, dc_tan = dc_first
            f = steps.first(gates)[:, H:2 * H]
            f_dot = steps.first(pre_dot)[:, H:2 * H] * f * (1 - f)
            results["c0"] = dc_tan * f + dc * f_dot
        if need["w_hr"]:
            results["w_hr"] = _weight_grad(dh_all[1], m, dh_all[0], m_dot)
        return tuple(map(results.get, names))

    return _of_grad_outputs(needs, steps, h_dot, h_dot, c_dot), backward


# The GRU's and the Elman RNN's inputs by name.
NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def gru(inputs, options, output, saved, grad_grads, needs, batch_sizes=None):
    """As lstm(), for inputs x, h0, w_ih, w_hh, b_ih, b_hh, saved (the forward's r, z, n, hn:
    ops.GRUFunction's) and grad_outputs of output, h_n."""
    x, h0, w_ih, w_hh, b_ih, b_hh = inputs
    (reverse,) = options
    dot_x, dot_h0, dot_w_ih, dot_w_hh, dot_b_ih, dot_b_hh = grad_grads
    steps = _Steps(x, batch_sizes, reverse)
    x, y, dot_x = map(steps.in_order, (x, output, dot_x))
    (activations,) = (steps.in_order(t).to(y.dtype).contiguous() for t in saved)  # as lstm()
    rows, B = x.shape[:-1], steps.batch
    H = w_hh.shape[1]
    h_prev = steps.previous(h0, y)

    # Tangents along v, forward in time: h_gates_dot gains h_dot_prev W_hh^T a step.
    x_gates_dot = _linear(x, (*rows, 3 * H), [(dot_x, w_ih), (x, dot_w_ih)], [dot_b_ih])
    h_gates_dot = _linear(x, (*rows, 3 * H), [(h_prev, dot_w_hh)], [dot_b_hh]).contiguous()
    rz_dot, n_dot, h_dot = x.new_empty(*rows, 2 * H), torch.empty_like(y), torch.empty_like(y)
    _C.gru_tangent_steps(x_gates_dot.contiguous(), h_gates_dot, activations, h_prev, w_hh,
                         dot_h0, rz_dot, n_dot, h_dot, batch_sizes)
    h_prev_dot = steps.previous(dot_h0, h_dot)

    def backward(grad_outputs, grad_outputs_dot, needs):
        # The first-order backward and its tangent, backward in time: grads[:, t] holds the
        # gradients of [r pre, z pre, hn, n pre] of step t and their tangents; their first 3H
        # are the h gates'.
        (u_y, u_hn), (u_y_dot, u_hn_dot) = grad_outputs, grad_outputs_dot
        u_y, u_y_dot = steps.output_grads(y, u_y, u_y_dot)
        grads, dh_first = x.new_empty(2, *rows, 4 * H), x.new_empty(2, B, H)
        _C.gru_backward_tangent_steps(u_y, u_hn, u_y_dot, u_hn_dot, activations, h_prev,
                                      rz_dot, n_dot, h_gates_dot, h_prev_dot, w_hh, dot_w_hh,
                                      grads, dh_first, batch_sizes)

        need = dict(zip(NAMES, needs))
        results = _shared_grads(need, steps, x, dot_x, w_ih, dot_w_ih,
                                torch.cat([grads[..., :2 * H], grads[..., 3 * H:]], -1), h_prev,
                                h_prev_dot, grads[..., :3 * H])
        if need["h0"]:
            # dh_0' = d(h gates)_1' W_hh + d(h gates)_1 W_hh_dot + dh_1' z_1 + dh_1 z_dot_1
            dh, dh_tan = dh_first
            z, z_dot = steps.first(activations)[:, H:2 * H], steps.first(rz_dot)[:, H:]
            results["h0"] = _backward_product(steps.first(grads, 1)[..., :3 * H], w_hh,
                                              dot_w_hh)[1] \
                .addcmul_(dh_tan, z).addcmul_(dh, z_dot)
        return tuple(map(results.get, NAMES))

    return _of_grad_outputs(needs, steps, h_dot, h_dot), backward


def rnn(inputs, options, output, saved, grad_grads, needs, batch_sizes=None):
    """As lstm(), for inputs x, h0, w_ih, w_hh, b_ih, b_hh, options (relu, reverse), saved ()
    (the output is all it reads) and grad_outputs of output, h_n."""
    x, h0, w_ih, w_hh, b_ih, b_hh = inputs
    relu, reverse = options
    dot_x, dot_h0, dot_w_ih, dot_w_hh, dot_b_ih, dot_b_hh = grad_grads
    steps = _Steps(x, batch_sizes, reverse)
    x, y, dot_x = map(steps.in_order, (x, output, dot_x))
    rows = x.shape[:-1]
    H = w_hh.shape[1]

    h_prev = steps.previous(h0, y)
    # The activation's derivative from its output, as the fused backward takes it.
    d_act = (y > 0).to(y.dtype) if relu else torch.mul(y, y).neg_().add_(1)

    # Tangents along v, forward in time: pre_dot gains h_dot_prev W_hh^T a step.
    pre_dot = _linear(x, (*rows, H), [(dot_x, w_ih), (x, dot_w_ih), (h_prev, dot_w_hh)],
                      [dot_b_ih, dot_b_hh])
    h_dot = torch.empty_like(y)
    _C.rnn_tangent_steps(pre_dot.contiguous(), d_act, w_hh, dot_h0, h_dot, batch_sizes)
    d_act_dot = None if relu else torch.mul(y, h_dot).mul_(-2)

    def backward(grad_outputs, grad_outputs_dot, needs):
        # The first-order backward and its tangent: grads[:, t], the gradient of step t's
        # pre-activation and its tangent.
        (u_y, u_hn), (u_y_dot, u_hn_dot) = grad_outputs, grad_outputs_dot
        u_y, u_y_dot = steps.output_grads(y, u_y, u_y_dot)
        grads = x.new_empty(2, *rows, H)
        _C.rnn_backward_tangent_steps(u_y, u_hn, u_y_dot, u_hn_dot, d_act, d_act_dot, w_hh,
                                      dot_w_hh, grads, batch_sizes)

        need = dict(zip(NAMES, needs))
        results = _shared_grads(need, steps, x, dot_x, w_ih, dot_w_ih, grads, h_prev,
                                steps.previous(dot_h0, h_dot), grads)
        if need["h0"]:
            results["h0"] = _backward_product(steps.first(grads, 1), w_hh, dot_w_hh)[1]
        return tuple(map(results.get, NAMES))

    return _of_grad_outputs(needs, steps, h_dot, h_dot), backward
