"""The whole-sequence GEMMs beside the loop (csrc/layer/beside_loop.cpp): on two threads, one
runs the loop while the other projects the forward's input ahead of it, or computes the
backward's gradients (the input's, the weights', the biases') from chunks of finished steps."""
import pytest
import torch

from conftest import GATES, TOLERANCE, apply_layer, assert_matches, layer_args, make_pair, \
    num_threads, random_state

CHUNK_ROWS = 128  # kChunkRows


def _contained(cell, args):
    """layer_args with a recurrent weight of spectral radius about 1. At layer_args' scale (about
    4 at these sizes) the Elman RNN is chaotic: over 131-300 steps its gradients grow to 1e13
    and its states part at the first rounding that differs, so that one thread's loop and two
    threads' (their products split otherwise, rounded otherwise on AVX2's tiles) disagree by
    1e-4 in float32."""
    w_hh = 4 if cell == "lstm" else 3
    H = args[w_hh].size(1)
    return [*args[:w_hh], args[w_hh] / (0.5 * H ** 0.5), *args[w_hh + 1:]]


def _gradients(cell, args, reverse):
    args = [a.detach().requires_grad_() if a is not None else None for a in args]
    outputs = apply_layer(cell, args, reverse)
    gen = torch.Generator().manual_seed(7)
    probes = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]
    inputs = [a for a in args if a is not None]
    with torch.profiler.profile() as profile:
        grads = torch.autograd.grad(outputs, inputs, probes)
    gemms = _gemm_events(profile)
    return grads, len(gemms), {e.thread for e in gemms}


def _gemm_events(profile):
    return [e for e in profile.events() if e.name in ("aten::mm", "aten::addmm_")]


# (T, B, I, H): chunks of several steps with a shorter last one, of one step (B > 128 rows),
# of many steps at a small batch.
# Each above the work below which the GEMMs stay after the loop, for every cell.
SHAPES = [(17, 33, 64, 96), (5, 300, 40, 64), (131, 7, 65, 63), (48, 32, 128, 128)]
MIN_WORK = 1 << 20  # multiply-adds of the GEMMs, kMinWork


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_matches_the_gemms_after_the_loop(cell, reverse, bias, dtype):
    """Every gradient as one thread computes it (the loop, then each GEMM over the whole
    sequence), in one GEMM call per chunk and gradient, the same on a second run to the bit."""
    for T, B, I, H in SHAPES:
        assert T * B * H * (I + H) >= MIN_WORK
        args = _contained(cell, layer_args(cell, T, B, I, H, "cpu", dtype, bias=bias,
                                           seed=T + B))
        with num_threads(1):
            after, after_gemms, _ = _gradients(cell, args, reverse)
        with num_threads(2):
            beside, gemms, _ = _gradients(cell, args, reverse)
            again, _, _ = _gradients(cell, args, reverse)
        steps = max(1, CHUNK_ROWS // B)
        chunks = -(-T // steps)
        # Per chunk: the input's gradient and both weight gradients; the first step's pairs with
        # h0 in a GEMM of its own, apart from the other steps of its chunk.
        paired_apart = T - (chunks - 1) * steps > 1
        assert gemms == 3 * chunks + paired_apart and after_gemms <= 5, (T, B, gemms, after_gemms)
        for name, a, b, c in zip(range(len(after)), beside, after, again):
            assert torch.equal(a, c), (T, B, name)
            err = ((a - b).norm() / b.norm()).item()
            assert err <= TOLERANCE[dtype], (T, B, name, err)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_matches_torch_nn(cell):
    """Against torch.nn, every output and gradient, at shapes where the path runs."""
    for T, B, I, H in SHAPES[:3]:
        ref, fused = make_pair(cell, I, H, "cpu", torch.float64, seed=B)
        gen = torch.Generator().manual_seed(T)
        x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
        hx = random_state(cell, ref, B, "cpu", torch.float64, gen)
        with num_threads(2):
            assert_matches(cell, fused, ref, x, hx, torch.float64)


def test_not_below_its_work_or_rows():
    """Too little work (1M multiply-adds) or too few rows (two chunks) keeps the GEMMs after the
    loop: a handful of calls over the whole sequence."""
    for T, B, I, H in [(3, 64, 40, 40), (48, 32, 8, 8), (100, 2, 128, 128)]:
        args = layer_args("lstm", T, B, I, H, "cpu", torch.float64)
        work = T * B * GATES["lstm"] * H * (I + H)
        assert T * B < 2 * CHUNK_ROWS or work < MIN_WORK
        with num_threads(2):
            _, gemms, _ = _gradients("lstm", args, False)
        assert gemms <= 5, (T, B, gemms)


# torch.backends.mkldnn.flags also sets oneDNN's TF32 switch, which warns on CPU-only builds.
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
def test_not_for_a_single_chunk(cell):
    """A call of one chunk (here a single step of 256 rows, a cell's call at a large batch)
    overlaps nothing: its GEMMs stay on the calling thread, each on torch's threads, rather than
    one thread projecting or differentiating while the other waits for it. oneDNN off, so that
    each GEMM is an at::mm the profiler sees (on AVX-512 CPUs fusedrnn's float32 GEMMs call
    oneDNN's matmul directly, which it does not record)."""
    args = layer_args(cell, 1, 256, 128, 128, "cpu", torch.float32)
    assert 256 * GATES[cell] * 128 * 256 >= MIN_WORK
    with num_threads(2), torch.backends.mkldnn.flags(enabled=False):
        _, gemms, threads = _forward(cell, args, False)
        assert gemms >= 2 and len(threads) == 1, (gemms, threads)
        _, gemms, threads = _gradients(cell, args, False)
        assert gemms >= 2 and len(threads) == 1, (gemms, threads)


def _forward(cell, args, reverse):
    """-> the outputs, the number of GEMMs, the threads that ran them."""
    with torch.profiler.profile() as profile:
        outputs = apply_layer(cell, args, reverse)
    gemms = _gemm_events(profile)
    return outputs, len(gemms), {e.thread for e in gemms}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_projection_beside_the_loop(cell, reverse):
    """A float32 forward on two threads, where its loop does not project the input itself:
    every output as one thread computes it, to rounding (the loop's steps are the same; the
    projection's GEMM runs in chunks). The GRU, whose loop never projects its input and whose
    W_hh here fits every L2 seen, projects in one GEMM per chunk: every chunk here has more than
    64 rows, which AVX2's small-product kernel would take instead of a GEMM. With many input
    features (I=1024, H=32) the projection outweighs the loop, whose thread then projects chunks
    too while it waits: each chunk once, on both threads."""
    for T, B, I, H in [(17, 33, 96, 64), (48, 32, 128, 128), (330, 1, 80, 64), (40, 32, 1024, 32)]:
        args = _contained(cell, layer_args(cell, T, B, I, H, "cpu", torch.float32, seed=T))
        with num_threads(1):
            alone, _, _ = _forward(cell, args, reverse)
        with num_threads(2):
            beside, gemms, threads = _forward(cell, args, reverse)
        for a, b in zip(beside, alone):
            err = ((a - b).norm() / b.norm()).item()
            assert err <= TOLERANCE[torch.float32], (T, B, err)
        if cell == "gru":
            assert gemms == -(-T // max(1, CHUNK_ROWS // B)), (T, B, gemms)
            if I > 8 * H:
                assert len(threads) == 2, (T, B, I, H, threads)
