"""The cuda-persistent backend without a GPU (csrc/core/persistent.h, csrc/layer/persistent.cpp):
its planner on the limit tables of real devices, its refusals, and its CPU model, which runs the
kernel's exact decomposition (the same blocks, weight slices, state chunks, per-lane sums and
butterfly, and the same pointwise steps), against torch.nn."""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import fusedrnn
from conftest import CELLS, TOLERANCE, make_pair, random_state, rel_err, run_and_grad

backends = fusedrnn.backends
_C = fusedrnn._extension._C

# (SMs, opt-in shared memory per block, per SM, reserved per block), as cudaDeviceProp gives them.
DEVICES = {
    "H200": backends.H200_LIMITS,
    "H100": (132, 232448, 233472, 1024),
    "A100": (108, 166912, 167936, 1024),
}
# A small device: several units per block and several batch chunks even at test sizes.
TINY = (3, 32000, 34000, 1024)


def plan(units, gates, K, batch, element_bytes=4, limits=backends.H200_LIMITS, cooperative=True):
    return _C.persistent_plan(units, gates, K, batch, element_bytes, *limits, cooperative)


def test_the_plan_of_the_flashrnn_lstm_on_an_h200():
    """LSTM T=1024 B=16 H=768 in float16 (held in float32 on chip): 128 blocks of 6 units."""
    forward = plan(768, 4, 768, 16)
    assert forward == {"refusal": "", "blocks": 128, "units_per_block": 6, "rows": 24,
                       "k_padded": 768, "batch_chunk": 16,
                       "shared_bytes": (24 + 16) * 768 * 4}
    backward = plan(768, 1, 4 * 768, 16)  # the gradient of h: K = 4H, 6 rows of 3072
    assert backward["blocks"] == 128 and backward["rows"] == 8
    assert backward["batch_chunk"] == 8  # 16 rows of 12 KiB would not fit beside 96 KiB of W
    assert backward["shared_bytes"] == (8 + 8) * 3072 * 4


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("gates", [1, 3, 4])
@pytest.mark.parametrize("element_bytes", [4, 8])
def test_every_plan_owns_each_unit_once_and_fits(device, gates, element_bytes):
    limits = DEVICES[device]
    budget = min(limits[1], limits[2] - limits[3])
    vector = 16 // element_bytes
    for units in (1, 2, 7, 64, 131, 132, 133, 257, 512, 768, 1000, 1024):
        for batch in (1, 3, 8, 17, 64, 256):
            for K in (units, gates * units):
                p = plan(units, gates, K, batch, element_bytes, limits)
                assert p == plan(units, gates, K, batch, element_bytes, limits)  # deterministic
                if p["refusal"]:
                    assert "exceed" in p["refusal"] and p["blocks"] <= limits[0]
                    continue
                U = p["units_per_block"]
                assert p["blocks"] <= limits[0]
                assert (p["blocks"] - 1) * U < units <= p["blocks"] * U
                assert p["rows"] % 4 == 0 and gates * U <= p["rows"] < gates * U + 4
                assert p["k_padded"] % vector == 0 and K <= p["k_padded"] < K + vector
                assert p["batch_chunk"] % 8 == 0 and p["batch_chunk"] <= -(-batch // 8) * 8
                assert p["shared_bytes"] == (p["rows"] + p["batch_chunk"]) * p["k_padded"] \
                    * element_bytes <= budget


def test_the_planner_refuses_what_cannot_fit_and_says_why():
    p = plan(2048, 4, 2048, 16)  # fp32 LSTM H=2048: 16 units x 4 gates x 2048 = 512 KiB a block
    assert p["refusal"].startswith("one block's slice of the recurrent weights (4 x 16 rows of "
                                   "2048, 512 KiB)")
    assert "exceed the 227 KiB" in p["refusal"]
    assert plan(1024, 4, 1024, 16)["refusal"] == ""  # fp32 LSTM H=1024: 128 KiB of weights
    # An A100's 108 SMs give each block 10 units: 160 KiB of weights, over its 163 KiB with a chunk
    assert "exceed the 163 KiB" in plan(1024, 4, 1024, 16, limits=DEVICES["A100"])["refusal"]
    assert plan(64, 4, 64, 8, cooperative=False)["refusal"] == \
        "the device cannot launch cooperative kernels"


@pytest.mark.parametrize("device, steps, options, refusal", [
    ("cpu", 10, {}, "runs on CUDA only"),
    ("cuda", 1, {}, "a single step (T=1"),
    ("cuda", 10, {"projection": True}, "LSTM with proj_size"),
    ("cuda", 10, {"cell": "GRU", "hidden": 64, "batch": 4, "uniform": False},
     "packed sequences of different lengths"),
])
def test_each_refusal_says_why(device, steps, options, refusal):
    why = backends.explain_call(device, torch.float32, steps, **options).refusals
    assert refusal in why["cuda-persistent"]


def test_it_is_off_unless_forced():
    """Until a GPU run verifies it, the choice never takes it, even where it would fit."""
    with backends.persistent_model():
        report = backends.explain_call("cpu", torch.float32, 10, cell="LSTM", hidden=32, batch=4)
        assert "off unless forced" in report.refusals["cuda-persistent"]
        assert report.backend != "cuda-persistent"
        with backends.force("cuda-persistent"):
            report = backends.explain_call("cpu", torch.float32, 10, cell="LSTM", hidden=32,
                                           batch=4)
            assert report.backend == "cuda-persistent"
            assert report.refusals["cuda-persistent"] is None


def test_a_forced_call_it_refuses_raises_with_the_reason():
    lstm = fusedrnn.LSTM(4, 6)
    with backends.force("cuda-persistent"):
        with pytest.raises(RuntimeError, match="'cuda-persistent' is forced .* runs on CUDA only"):
            lstm(torch.randn(3, 2, 4))
        with backends.persistent_model():
            packed = pack_sequence([torch.randn(5, 4), torch.randn(3, 4)])
            with pytest.raises(RuntimeError, match="packed sequences of different lengths"):
                lstm(packed)
            with pytest.raises(RuntimeError, match="exceed the 5 KiB"):
                with backends.persistent_model((3, 6000, 8000, 1024)):
                    fusedrnn.LSTM(4, 64)(torch.randn(3, 2, 4))


SHAPES = [  # T, B, I, H
    (2, 1, 3, 1),
    (9, 3, 5, 13),
    (6, 17, 7, 40),
    (40, 2, 4, 9),
]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("limits", ["H200", "tiny"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_model_matches_torch_nn(cell, limits, dtype):
    """Outputs, final states and every gradient, 2 layers, both directions, odd sizes; on an H200's
    plan (a unit or two a block) and on a tiny device's (several units a block, the batch in
    chunks)."""
    for index, (T, B, I, H) in enumerate(SHAPES):
        ref, fused = make_pair(cell, I, H, "cpu", dtype, seed=index, num_layers=2,
                               bidirectional=True)
        gen = torch.Generator().manual_seed(100 + index)
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(dtype)
        hx = random_state(cell, ref, B, "cpu", dtype, gen)
        expected = run_and_grad(ref, x, hx)
        with backends.persistent_model(DEVICES.get(limits, TINY)), \
                backends.force("cuda-persistent"):
            assert backends.explain(fused, x).backend == "cuda-persistent"
            actual = run_and_grad(fused, x, hx)
        errors = {k: rel_err(actual[k], expected[k]) for k in expected}
        assert max(errors.values()) <= TOLERANCE[dtype], (T, B, I, H, errors)


def test_the_tiny_device_splits_units_and_batches():
    """What the model tests run on TINY: blocks of several units, the state in several chunks."""
    backward = plan(40, 1, 4 * 40, 17, 8, TINY)
    assert backward["units_per_block"] == 14 and backward["batch_chunk"] == 8
    assert plan(13, 4, 13, 3, 8, TINY)["units_per_block"] == 5


def test_the_model_runs_inference_and_batch_first_without_bias():
    ref, fused = make_pair("lstm", 5, 11, "cpu", torch.float64, batch_first=True, bias=False)
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    with torch.no_grad(), backends.persistent_model(TINY), backends.force("cuda-persistent"):
        out, (h, c) = fused(x)
    ref_out, (ref_h, ref_c) = ref(x)
    assert max(rel_err(out, ref_out), rel_err(h, ref_h), rel_err(c, ref_c)) <= 1e-12
