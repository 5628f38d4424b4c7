"""The ops' rules under torch.vmap (torch.func.vmap, jacrev, per-sample gradients, batched
gradients): each maps a call over the vmapped dimension as a loop of ordinary calls, one per
slice, and stacks the results. Correct for any mix of batched and unbatched arguments (per-sample
weights included); a batch of N slices costs N calls."""
import torch

from . import _extension  # noqa: F401  (loading _C registers torch.ops.fusedrnn)

_OPS = [f"{cell}_{kind}{pair}" for cell in ("lstm", "gru", "rnn")
        for kind in ("forward", "backward") for pair in ("", "_pair")]


def _slice(arg, dim, index):
    if dim is None:
        return arg
    if isinstance(arg, (list, tuple)):  # a per-direction list of the pair ops
        return [a if d is None else a.select(d, index) for a, d in zip(arg, dim)]
    return arg.select(dim, index)


def _loop_rule(op):
    def rule(info, in_dims, *args):
        results = [op(*(_slice(a, d, i) for a, d in zip(args, in_dims)))
                   for i in range(info.batch_size)]
        stacked = [torch.stack(parts) for parts in zip(*results)]
        if isinstance(results[0], list):
            return stacked, [0] * len(stacked)
        return tuple(stacked), (0,) * len(stacked)
    return rule


for _name in _OPS:
    torch.library.register_vmap(f"fusedrnn::{_name}",
                                _loop_rule(getattr(torch.ops.fusedrnn, _name).default))
