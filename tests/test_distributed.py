"""DistributedDataParallel and FSDP2 (fully_shard) over a fused LSTM: two CPU processes (gloo),
each on half of a batch, end one training step with the gradients and parameters of one process
on the whole batch."""
import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from conftest import assert_close_by_name, make_pair

WORLD_SIZE = 2
BATCH = 4
TIMEOUT_S = 60


def _model_and_batch():
    _, model = make_pair("lstm", 4, 5, dtype=torch.float64, num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, BATCH, 4, generator=gen, dtype=torch.float64)
    probe = torch.randn(6, BATCH, 10, generator=gen, dtype=torch.float64)
    return model, x, probe


def _whole(tensor):
    """A parameter or gradient whole: FSDP2 shards them as DTensors."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach().clone()


def _train_step(model, module, x, probe):
    """One SGD step on the batch mean of a random projection of the output; -> the gradients
    and the updated parameters, by name."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    output, _ = module(x)
    ((output * probe).sum() / x.size(1)).backward()
    grads = {f"grad_{name}": _whole(p.grad) for name, p in model.named_parameters()}
    optimizer.step()
    return {**grads, **{name: _whole(p) for name, p in model.named_parameters()}}


def _distributed(model, kind):
    """model wrapped for data parallelism: DDP, or sharded in place by FSDP2."""
    if kind == "ddp":
        return DistributedDataParallel(model)
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD_SIZE,)))
    return model


def _worker(rank, store, results, kind):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        model, x, probe = _model_and_batch()
        rows = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        # Both average the ranks' gradients: the mean of the half-batch means.
        result = _train_step(model, _distributed(model, kind), x[:, rows], probe[:, rows])
        torch.save(result, f"{results}{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_data_parallel_step_equals_single_process_step(kind, tmp_path):
    context = mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path / "rank"), kind),
                       nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            raise TimeoutError(f"the {kind} workers did not finish within {TIMEOUT_S} s")
    model, x, probe = _model_and_batch()
    expected = _train_step(model, model, x, probe)
    for rank in range(WORLD_SIZE):
        assert_close_by_name(torch.load(tmp_path / f"rank{rank}.pt"), expected, 1e-10)
