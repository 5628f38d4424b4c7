"""PackedSequence input against torch.nn: outputs, final states and every gradient."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

from conftest import (CELLS, DEVICES, TOLERANCE, Without, assert_close_by_name, assert_half_rule,
                      half_rule_draws, make_pair, random_state, refuse, run_packed_and_grad)
from fusedrnn import ops

# (lengths, enforce_sorted): sorted and unsorted batches, a batch of one, equal lengths, and
# lengths that drop by more than one row between steps.
BATCHES = [
    ([6, 4, 4, 1], True),
    ([3, 7, 1, 5, 5], False),
    ([5], True),
    ([4, 4, 4], False),
    ([9, 2, 6, 2, 1, 7], False),
]
OPTIONS = [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"bidirectional": True, "bias": False},
    {"num_layers": 3, "bidirectional": True, "batch_first": True},
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in
                                                                  o.items()) or "plain")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"{b[0]}-sorted={b[1]}")
@pytest.mark.parametrize("cell", list(CELLS))
def test_packed_matches_torch_nn(cell, batch, options, dtype, device, backend):
    lengths, enforce_sorted = batch
    ref, fused = make_pair(cell, 3, 5, device, dtype, **options)
    gen = torch.Generator().manual_seed(len(lengths))
    T, B = max(lengths), len(lengths)
    shape = (B, T, 3) if options.get("batch_first") else (T, B, 3)
    padded = torch.randn(shape, generator=gen).to(device, dtype)
    for hx in (None, random_state(cell, ref, B, device, dtype, gen)):
        assert_close_by_name(run_packed_and_grad(fused, padded, lengths, enforce_sorted, hx),
                             run_packed_and_grad(ref, padded, lengths, enforce_sorted, hx), TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_pack_sequence_and_inference(cell, device):
    ref, fused = make_pair(cell, 4, 6, device, torch.float64, num_layers=2, bidirectional=True)
    seqs = [torch.randn(n, 4, dtype=torch.float64, device=device) for n in (2, 7, 5)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    with torch.no_grad():
        ours, theirs = fused(packed), ref(packed)
    assert torch.equal(ours[0].batch_sizes, theirs[0].batch_sizes)
    assert torch.equal(ours[0].unsorted_indices, theirs[0].unsorted_indices)
    torch.testing.assert_close(ours[0].data, theirs[0].data, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", BATCHES[:2], ids=lambda b: f"{b[0]}-sorted={b[1]}")
def test_packed_projected_lstm(batch, device):
    lengths, enforce_sorted = batch
    ref, fused = make_pair("lstm", 3, 5, device, torch.float64, proj_size=2, num_layers=2,
                           bidirectional=True)
    padded = torch.randn(max(lengths), len(lengths), 3, dtype=torch.float64, device=device)
    assert_close_by_name(run_packed_and_grad(fused, padded, lengths, enforce_sorted, None),
                         run_packed_and_grad(ref, padded, lengths, enforce_sorted, None), 1e-10)


def test_ops_check_batch_sizes():
    args = dict(h0=torch.randn(3, 5), c0=torch.randn(3, 5), w_ih=torch.randn(20, 4),
                w_hh=torch.randn(20, 5), b_ih=None, b_hh=None)
    lstm = torch.ops.fusedrnn.lstm_forward
    with pytest.raises(RuntimeError, match="non-increasing"):
        lstm(torch.randn(6, 4), *args.values(), False, False, torch.tensor([1, 2, 3]))
    with pytest.raises(RuntimeError, match="add up to 6 rows, but input has 7"):
        lstm(torch.randn(7, 4), *args.values(), False, False, torch.tensor([3, 2, 1]))
    with pytest.raises(RuntimeError, match="packed input must be 2-D"):
        lstm(torch.randn(3, 2, 4), *args.values(), False, False, torch.tensor([3, 2, 1]))
    with pytest.raises(RuntimeError, match="int64 CPU tensor"):
        lstm(torch.randn(6, 4), *args.values(), False, False, torch.tensor([3., 2., 1.]))


def _packed_penalty_step(model, padded, lengths, enforce_sorted, hx,
                         before_backward=lambda: None):
    """loss(output) plus the penalty of a gradient of the input taken with create_graph=True,
    through packed input -> the gradients of the input and every parameter, by name."""
    padded = padded.detach().requires_grad_()
    packed = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    output = model(packed, hx)[0].data
    (grad_x,) = torch.autograd.grad(output.pow(2).sum(), padded, create_graph=True)
    before_backward()
    names, parameters = zip(*model.named_parameters())
    grads = torch.autograd.grad(output.sum() + grad_x.pow(2).sum(), (padded, *parameters))
    return dict(zip(("input", *names), grads))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True},
                                     {"bidirectional": True, "bias": False}],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("cell", list(CELLS))
def test_double_backward_through_packed_input(cell, options, device, monkeypatch):
    """A gradient penalty through packed input, as torch.nn takes it. On the CPU its backward
    is the second-order pass on the packed rows, the layer's own backward riding in it: neither
    torch.nn's recurrence nor a fused backward op runs there (both made to raise). CUDA
    recomputes each layer through torch.nn's packed recurrence (ops._second_order_on)."""
    ref, fused = make_pair(cell, 3, 4, device, torch.float64, **options)

    def rule_out_all_but_the_pass():
        if device == "cpu":
            monkeypatch.setattr(ops, "_ops", Without(ops._ops, "backward"))
            for reference in list(ops._TORCH_NN):
                monkeypatch.setitem(ops._TORCH_NN, reference, refuse)

    for lengths, enforce_sorted in BATCHES[:2] + BATCHES[4:]:
        gen = torch.Generator().manual_seed(len(lengths))
        padded = torch.randn(max(lengths), len(lengths), 3, generator=gen,
                             dtype=torch.float64).to(device)
        hx = random_state(cell, ref, len(lengths), device, torch.float64, gen)
        expected = _packed_penalty_step(ref, padded, lengths, enforce_sorted, hx)
        actual = _packed_penalty_step(fused, padded, lengths, enforce_sorted, hx,
                                      rule_out_all_but_the_pass)
        monkeypatch.undo()
        assert_close_by_name(actual, expected, 1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_double_backward_through_packed_input_in_half_precision(cell, dtype):
    """A bfloat16/float16 gradient penalty through packed input (the pass on the packed rows in
    the layer's dtype, its carried gradients in float32): within the half rule of torch.nn's
    own error against float64."""
    lengths, enforce_sorted = BATCHES[1]
    runs = []
    for draw in range(half_rule_draws(cell)):
        ref, fused = make_pair(cell, 6, 8, "cpu", torch.float64, seed=draw, bidirectional=True)
        gen = torch.Generator().manual_seed(30 + draw)
        padded = torch.randn(max(lengths), len(lengths), 6, generator=gen, dtype=torch.float64)
        exact = _packed_penalty_step(ref, padded, lengths, enforce_sorted, None)
        theirs, ours = (_packed_penalty_step(model.to(dtype), padded.to(dtype), lengths,
                                             enforce_sorted, None) for model in (ref, fused))
        runs.append(({k: v.double() for k, v in ours.items()},
                     {k: v.double() for k, v in theirs.items()}, exact))
    assert_half_rule(runs)


def test_double_backward_through_packed_projected_lstm():
    ref, fused = make_pair("lstm", 3, 5, "cpu", torch.float64, proj_size=2,
                           bidirectional=True)
    lengths, enforce_sorted = BATCHES[1]
    padded = torch.randn(max(lengths), len(lengths), 3, dtype=torch.float64)
    assert_close_by_name(_packed_penalty_step(fused, padded, lengths, enforce_sorted, None),
                         _packed_penalty_step(ref, padded, lengths, enforce_sorted, None), 1e-10)


def test_packed_rows_reversed_in_time():
    """second_order.reversed_rows, on which a reverse layer's pass and recomputation run: each
    sequence reversed along its own length, a permutation that is its own inverse."""
    from fusedrnn import second_order
    lengths = [5, 2, 4, 1, 4]
    padded = torch.randn(5, len(lengths), 3)
    flipped = torch.stack([torch.cat([padded[:n, b].flip(0), padded[n:, b]])
                           for b, n in enumerate(lengths)], 1)
    packed, expected = (pack_padded_sequence(t, torch.tensor(lengths), enforce_sorted=False)
                        for t in (padded, flipped))
    rows = second_order.reversed_rows(packed.batch_sizes, "cpu")
    assert torch.equal(packed.data[rows], expected.data)
    assert torch.equal(rows[rows], torch.arange(len(rows)))
