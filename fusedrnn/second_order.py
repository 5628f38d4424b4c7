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
out.
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


def _previous(first, sequence):
    """[first, sequence[0], ..., sequence[T-2]]: the state each step starts from (a None first
    is zeros)."""
    first = torch.zeros_like(sequence[0]) if first is None else first
    return torch.cat([first[None], sequence[:-1]])


def _in_order(x, reverse):
    return None if x is None else x.flip(0) if reverse else x


def _output_grads(reverse, y, u_y, u_y_dot):
    """The output's gradient u_y (zeros if absent) and its tangent, in step order."""
    u_y = torch.zeros_like(y) if u_y is None else _in_order(u_y, reverse).contiguous()
    return u_y, _in_order(u_y_dot, reverse)


def double_backward(cell, inputs, options, output, saved, grad_outputs, grad_grads, needs):
    """The whole pass of `cell` (lstm, gru, rnn) -> the gradients of (*inputs, *grad_outputs),
    None where not in `needs`."""
    count = len(inputs)
    of_grad_outputs, backward = cell(inputs, options, output, saved, grad_grads, needs[count:])
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


def _shared_grads(need, reverse, x, dot_x, w_ih, dot_w_ih, x_gates, h_prev, h_prev_dot,
                  h_gates):
    """{name: gradient} of what every cell's pass returns alike: x, w_ih, w_hh, b_ih, b_hh from
    the pre-activations' gradients and their tangents (x_gates: (d, d') of the input
    projection's, h_gates: of the recurrent product's; the same pair but in the GRU).
    `need`: {name: bool}."""
    (d_x, d_x_tan), (d_h, d_h_tan) = x_gates, h_gates
    grads = {}
    if need["x"]:
        grads["x"] = _in_order(_input_grad(d_x_tan, w_ih, d_x, dot_w_ih), reverse)
    if need["w_ih"]:
        grads["w_ih"] = _weight_grad(d_x_tan, x, d_x, dot_x)
    if need["w_hh"]:
        grads["w_hh"] = _weight_grad(d_h_tan, h_prev, d_h, h_prev_dot)
    if need["b_ih"]:
        grads["b_ih"] = d_x_tan.sum((0, 1))
    if need["b_hh"]:
        grads["b_hh"] = grads["b_ih"].clone() if x_gates is h_gates and need["b_ih"] \
            else d_h_tan.sum((0, 1))
    return grads


def _of_grad_outputs(needs, reverse, h_dot, *last):
    """The gradients of the grad_outputs: of the output's, its tangent h_dot; of the final
    states', `last` (the states' tangents at the last step). None where not in needs."""
    of_output = _in_order(h_dot, reverse) if needs[0] else None
    return (of_output, *(t if need else None for need, t in zip(needs[1:], last)))


def lstm(inputs, options, output, saved, grad_grads, needs):
    """The pass's tangents -> (the gradients of the grad_outputs (of output, h_n, c_n; None
    where not in `needs`), backward): backward(grad_outputs, grad_outputs_dot, needs) -> the
    gradients of the inputs (None where not in its `needs`), given the grad_outputs u and their
    tangents (of None: zero).
    inputs: x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr; options: (reverse,); output: the layer's
    output; saved: the forward's gates, cells and unprojected cell outputs (ops.LSTMFunction's);
    grad_grads: one per input, None for zero."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    (reverse,) = options
    dot_x, dot_h0, dot_c0, dot_w_ih, dot_w_hh, dot_b_ih, dot_b_hh, dot_w_hr = grad_grads
    x, y, dot_x = (_in_order(t, reverse) for t in (x, output, dot_x))
    gates, cells, m = (_in_order(t, reverse).contiguous() for t in saved)
    T, B = x.shape[:2]
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    h_prev = _previous(h0, y)
    tanh_cells = cells.tanh()

    # Tangents along v, forward in time: pre_dot gains h_dot_prev W_hh^T a step.
    pre_dot = _linear(x, (T, B, 4 * H), [(dot_x, w_ih), (x, dot_w_ih), (h_prev, dot_w_hh)],
                      [dot_b_ih, dot_b_hh]).contiguous()
    m_w_hr_dot = None if w_hr is None or dot_w_hr is None \
        else (_flat(m) @ dot_w_hr.t()).view(T, B, P)
    c_dot, m_dot = torch.empty_like(cells), torch.empty_like(cells)
    h_dot = m_dot if w_hr is None else torch.empty_like(y)
    _C.lstm_tangent_steps(pre_dot, gates, cells, tanh_cells, c0, w_hh, dot_h0, dot_c0, w_hr,
                          m_w_hr_dot, c_dot, m_dot, h_dot)

    def backward(grad_outputs, grad_outputs_dot, needs):
        # The first-order backward with u and its tangent, backward in time: grads[:, t] holds
        # the gate gradients dz and their tangent dz' of step t.
        (u_y, u_hn, u_cn), (u_y_dot, u_hn_dot, u_cn_dot) = grad_outputs, grad_outputs_dot
        u_y, u_y_dot = _output_grads(reverse, y, u_y, u_y_dot)
        grads = x.new_empty(2, T, B, 4 * H)
        dh_all = None if w_hr is None else x.new_empty(2, T, B, P)  # for W_hr's gradient
        dc_first = x.new_empty(2, B, H)
        _C.lstm_backward_tangent_steps(u_y, u_hn, u_cn, u_y_dot, u_hn_dot, u_cn_dot, gates,
                                       pre_dot, cells, tanh_cells, c0, c_dot, dot_c0, w_hh,
                                       dot_w_hh, w_hr, dot_w_hr, grads, dh_all, dc_first)

        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
        need = dict(zip(names, needs))
        results = _shared_grads(need, reverse, x, dot_x, w_ih, dot_w_ih, grads, h_prev,
                                _previous(dot_h0, h_dot), grads)
        if need["h0"]:
            results["h0"] = _backward_product(grads[:, 0], w_hh, dot_w_hh)[1]
        if need["c0"]:  # dc_0' = dc_1' f_1 + dc_1 f_dot_1
            dc, dc_tan = dc_first
            f = gates[0, :, H:2 * H]
            f_dot = pre_dot[0, :, H:2 * H] * f * (1 - f)
            results["c0"] = dc_tan * f + dc * f_dot
        if need["w_hr"]:
            results["w_hr"] = _weight_grad(dh_all[1], m, dh_all[0], m_dot)
        return tuple(map(results.get, names))

    return _of_grad_outputs(needs, reverse, h_dot, h_dot[-1], c_dot[-1]), backward


# The GRU's and the Elman RNN's inputs by name.
NAMES = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")


def gru(inputs, options, output, saved, grad_grads, needs):
    """As lstm(), for inputs x, h0, w_ih, w_hh, b_ih, b_hh, saved (the forward's r, z, n, hn:
    ops.GRUFunction's) and grad_outputs of output, h_n."""
    x, h0, w_ih, w_hh, b_ih, b_hh = inputs
    (reverse,) = options
    dot_x, dot_h0, dot_w_ih, dot_w_hh, dot_b_ih, dot_b_hh = grad_grads
    x, y, dot_x = (_in_order(t, reverse) for t in (x, output, dot_x))
    (activations,) = (_in_order(t, reverse).contiguous() for t in saved)
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    h_prev = _previous(h0, y)

    # Tangents along v, forward in time: h_gates_dot gains h_dot_prev W_hh^T a step.
    x_gates_dot = _linear(x, (T, B, 3 * H), [(dot_x, w_ih), (x, dot_w_ih)], [dot_b_ih])
    h_gates_dot = _linear(x, (T, B, 3 * H), [(h_prev, dot_w_hh)], [dot_b_hh]).contiguous()
    rz_dot, n_dot, h_dot = x.new_empty(T, B, 2 * H), torch.empty_like(y), torch.empty_like(y)
    _C.gru_tangent_steps(x_gates_dot.contiguous(), h_gates_dot, activations, h_prev, w_hh,
                         dot_h0, rz_dot, n_dot, h_dot)
    h_prev_dot = _previous(dot_h0, h_dot)

    def backward(grad_outputs, grad_outputs_dot, needs):
        # The first-order backward and its tangent, backward in time: grads[:, t] holds the
        # gradients of [r pre, z pre, hn, n pre] of step t and their tangents; their first 3H
        # are the h gates'.
        (u_y, u_hn), (u_y_dot, u_hn_dot) = grad_outputs, grad_outputs_dot
        u_y, u_y_dot = _output_grads(reverse, y, u_y, u_y_dot)
        grads, dh_first = x.new_empty(2, T, B, 4 * H), x.new_empty(2, B, H)
        _C.gru_backward_tangent_steps(u_y, u_hn, u_y_dot, u_hn_dot, activations, h_prev,
                                      rz_dot, n_dot, h_gates_dot, h_prev_dot, w_hh, dot_w_hh,
                                      grads, dh_first)

        need = dict(zip(NAMES, needs))
        results = _shared_grads(need, reverse, x, dot_x, w_ih, dot_w_ih,
                                torch.cat([grads[..., :2 * H], grads[..., 3 * H:]], -1), h_prev,
                                h_prev_dot, grads[..., :3 * H])
        if need["h0"]:
            # dh_0' = d(h gates)_1' W_hh + d(h gates)_1 W_hh_dot + dh_1' z_1 + dh_1 z_dot_1
            dh, dh_tan = dh_first
            z, z_dot = activations[0, :, H:2 * H], rz_dot[0, :, H:]
            results["h0"] = _backward_product(grads[:, 0, :, :3 * H], w_hh, dot_w_hh)[1] \
                .addcmul_(dh_tan, z).addcmul_(dh, z_dot)
        return tuple(map(results.get, NAMES))

    return _of_grad_outputs(needs, reverse, h_dot, h_dot[-1]), backward


def rnn(inputs, options, output, saved, grad_grads, needs):
    """As lstm(), for inputs x, h0, w_ih, w_hh, b_ih, b_hh, options (relu, reverse), saved ()
    (the output is all it reads) and grad_outputs of output, h_n."""
    x, h0, w_ih, w_hh, b_ih, b_hh = inputs
    relu, reverse = options
    dot_x, dot_h0, dot_w_ih, dot_w_hh, dot_b_ih, dot_b_hh = grad_grads
    x, y, dot_x = (_in_order(t, reverse) for t in (x, output, dot_x))
    T, B = x.shape[:2]
    H = w_hh.shape[1]

    h_prev = _previous(h0, y)
    # The activation's derivative from its output, as the fused backward takes it.
    d_act = (y > 0).to(y.dtype) if relu else torch.mul(y, y).neg_().add_(1)

    # Tangents along v, forward in time: pre_dot gains h_dot_prev W_hh^T a step.
    pre_dot = _linear(x, (T, B, H), [(dot_x, w_ih), (x, dot_w_ih), (h_prev, dot_w_hh)],
                      [dot_b_ih, dot_b_hh])
    h_dot = torch.empty_like(y)
    _C.rnn_tangent_steps(pre_dot.contiguous(), d_act, w_hh, dot_h0, h_dot)
    d_act_dot = None if relu else torch.mul(y, h_dot).mul_(-2)

    def backward(grad_outputs, grad_outputs_dot, needs):
        # The first-order backward and its tangent: grads[:, t], the gradient of step t's
        # pre-activation and its tangent.
        (u_y, u_hn), (u_y_dot, u_hn_dot) = grad_outputs, grad_outputs_dot
        u_y, u_y_dot = _output_grads(reverse, y, u_y, u_y_dot)
        grads = x.new_empty(2, T, B, H)
        _C.rnn_backward_tangent_steps(u_y, u_hn, u_y_dot, u_hn_dot, d_act, d_act_dot, w_hh,
                                      dot_w_hh, grads)

        need = dict(zip(NAMES, needs))
        results = _shared_grads(need, reverse, x, dot_x, w_ih, dot_w_ih, grads, h_prev,
                                _previous(dot_h0, h_dot), grads)
        if need["h0"]:
            results["h0"] = _backward_product(grads[:, 0], w_hh, dot_w_hh)[1]
        return tuple(map(results.get, NAMES))

    return _of_grad_outputs(needs, reverse, h_dot, h_dot[-1]), backward
