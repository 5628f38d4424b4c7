"""The fused CPU recurrence (csrc/cpu/recurrence.h) against torch.nn, on the shapes that reach
its corners: the hidden units split across threads, a last panel that is partly padding (H not
a multiple of the SIMD width), batch rows left over after the row tiles, one row alone, packed
batches whose rows change from step to step, and one thread doing every panel; float16/bfloat16,
which run through it as float32; and GEMMs on oneDNN and on at::mm. Under every CPU ISA this
machine runs: where an ISA has no vector kernels, the step backend takes these calls."""
import copy

import pytest
import torch

import fusedrnn

from conftest import (CELLS, GATES, TOLERANCE, assert_close_by_name, assert_half_rule,
                      assert_matches, half_rule_draws, make_pair, num_threads, random_state,
                      rel_err, run_and_grad, run_packed_and_grad)

pytestmark = pytest.mark.usefixtures("isa")

# (T, B, I, H, options)
SHAPES = [
    (6, 16, 9, 70, {}),  # two threads; H = 8 * 8 + 6
    (5, 7, 4, 37, {"num_layers": 2, "bidirectional": True}),  # rows after the tiles
    (4, 2, 3, 130, {}),  # rows one at a time
    (3, 1, 5, 260, {"bias": False}),  # one row, two threads
    # Single-gate products (the RNN's, every backward's onto h) narrower than two panels of
    # four vectors take narrower panels, one per thread: of two vectors (float32) at H = 20,
    # of one at H = 16.
    (6, 64, 9, 20, {}),
    (10, 64, 5, 16, {}),
]
LENGTHS = [9, 3, 12, 1, 7, 12, 5, 2, 8, 11, 4, 6, 10, 12, 3, 9]


@pytest.fixture(params=[None, 1], ids=["threads-default", "threads-1"])
def threads(request):
    saved = torch.get_num_threads()
    if request.param:
        torch.set_num_threads(request.param)
    yield
    torch.set_num_threads(saved)


def _id(shape):
    T, B, I, H, options = shape
    return f"T{T}-B{B}-I{I}-H{H}" + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_torch_nn(cell, shape, dtype, threads):
    T, B, I, H, options = shape
    ref, fused = make_pair(cell, I, H, "cpu", dtype, **options)
    gen = torch.Generator().manual_seed(T * B + H)
    x = torch.randn(T, B, I, generator=gen, dtype=dtype)
    assert_matches(cell, fused, ref, x, random_state(cell, ref, B, "cpu", dtype, gen), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 13, 32, 33, 64, 65])
@pytest.mark.parametrize("cell", list(CELLS))
def test_single_steps_on_unpacked_weights(cell, batch, dtype, isa):
    """T=1: the forward's products (the input's and the recurrent one, in w^T) run on the
    small-product kernels straight from the unpacked weights (cpu/recurrence.h, SmallProduct):
    up to 64 rows under AVX2, under AVX-512 32 in float32 and 4 in float64, in tiles of 4 rows
    and 3, 2 or 1 left. In the backward the products through w (the gradients reaching the
    input and h0) take them up to 4 rows. Sizes that fill no whole vector (I=9, H=37), and one
    whose columns split between two threads (I=70, H=130); a row past the limit takes the BLAS
    again, unless the product is tiny (up to 4096 multiply-adds: plain loops, layer/gemm.cpp)."""
    limit = {"scalar": 0, "avx2": 64}.get(isa, 32 if dtype == torch.float32 else 4)
    for I, H in [(9, 37), (70, 130)]:
        ref, fused = make_pair(cell, I, H, "cpu", dtype, seed=batch + H)
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(1, batch, I, generator=gen, dtype=dtype)
        hx = random_state(cell, ref, batch, "cpu", dtype, gen)
        assert_matches(cell, fused, ref, x, hx, dtype)
        expected = any(batch > limit and batch * GATES[cell] * H * depth > 4096
                       for depth in (I, H))  # the input's product and the recurrent one
        assert bool(blas_calls(fused, x, hx)) == expected, (I, H)


@pytest.mark.parametrize("batch", [16, 5])
@pytest.mark.parametrize("cell", list(CELLS))
def test_single_steps_on_weights_past_l2(cell, batch, isa):
    """A single step whose weights outgrow a core's L2 (float64 I=515 H=509: 2-8 MB a matrix,
    1-4 MB a thread): the small-product kernels then request the next block of columns while
    they multiply one (cpu/vectorized_product.h, `ahead`). The same numbers as torch.nn, with
    the columns' and the depth's tails."""
    dtype = torch.float64
    ref, fused = make_pair(cell, 515, 509, "cpu", dtype, seed=batch)
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(1, batch, 515, generator=gen, dtype=dtype)
    assert_matches(cell, fused, ref, x, random_state(cell, ref, batch, "cpu", dtype, gen), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_packed_matches_torch_nn(cell, dtype, threads):
    ref, fused = make_pair(cell, 6, 70, "cpu", dtype, bidirectional=True)
    gen = torch.Generator().manual_seed(3)
    padded = torch.randn(max(LENGTHS), len(LENGTHS), 6, generator=gen, dtype=dtype)
    hx = random_state(cell, ref, len(LENGTHS), "cpu", dtype, gen)
    assert_close_by_name(run_packed_and_grad(fused, padded, LENGTHS, False, hx),
                         run_packed_and_grad(ref, padded, LENGTHS, False, hx), TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_half_types_compute_in_float32(cell, dtype):
    """A half-precision layer on the CPU is the float32 layer on the same (exactly widened)
    numbers, rounded once at the end, bit for bit; except a bfloat16 layer on an ISA with
    bfloat16 products, whose products round the state (next test). (Its accuracy against
    torch.nn: the half-precision rule in test_modules.py.)"""
    if dtype == torch.bfloat16 and _bf16_products():
        pytest.skip("bfloat16 products round a bfloat16 layer's state: test_bfloat16_products")
    _, fused = make_pair(cell, 9, 70, "cpu", dtype, bidirectional=True)
    wide = copy.deepcopy(fused).float()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, 5, 9, generator=gen).to(dtype)
    hx = random_state(cell, fused, 5, "cpu", dtype, gen)
    widened = tuple(s.float() for s in hx) if cell == "lstm" else hx.float()
    with torch.no_grad():
        output, final = fused(x, hx)
        wide_output, wide_final = wide(x.float(), widened)
    finals = final if cell == "lstm" else (final,)
    wide_finals = wide_final if cell == "lstm" else (wide_final,)
    assert output.dtype == dtype
    for ours, expected in zip((output, *finals), (wide_output, *wide_finals)):
        assert torch.equal(ours, expected.to(dtype))


def _bf16_products():
    return fusedrnn.backends.cpu_isa()[1] in ("avx512_bf16", "amx")


def _forward_in_float64(cell, layer, x, h0, c0, round_state):
    """The layer's output computed in float64, with the state rounded to bfloat16 where the
    recurrent product reads it when `round_state`."""
    w_ih, w_hh, b_ih, b_hh = (getattr(layer, name + "_l0").double() for name in
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    h, c, outputs = h0.double(), None if c0 is None else c0.double(), []
    for x_t in x.double():
        h_read = h.bfloat16().double() if round_state else h
        from_x, from_h = x_t @ w_ih.T + b_ih, h_read @ w_hh.T + b_hh
        if cell == "lstm":
            i, f, g, o = (from_x + from_h).chunk(4, 1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
        elif cell == "gru":
            (x_r, x_z, x_n), (h_r, h_z, h_n) = from_x.chunk(3, 1), from_h.chunk(3, 1)
            r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
            h = (1 - z) * (x_n + r * h_n).tanh() + z * h
        else:
            h = (from_x + from_h).relu() if cell == "rnn_relu" else (from_x + from_h).tanh()
        outputs.append(h)
    return torch.stack(outputs)


@pytest.mark.parametrize("shape", [(7, 5, 9, 70), (13, 6, 9, 70), (6, 16, 24, 130),
                                   (4, 37, 40, 70), (2, 300, 1000, 1000)],
                         ids=["35-rows", "78-rows", "96-rows-2-threads", "37-rows-a-step",
                              "steps-rounded-in-chunks"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_bfloat16_products(cell, shape):
    """On an ISA with bfloat16 products (avx512_bf16, amx), a bfloat16 layer's products take the
    state rounded to bfloat16 (cpu/kernels_avx512_bf16.cpp), as torch.nn's oneDNN path does: its
    output is a float64 run that rounds the state where the product reads it, rounded once at
    the end (some results one bfloat16 step off, where float32 and float64 round differently:
    up to 4e-6 with bfloat16 products, 2.6e-4 without, measured). Elsewhere it is the run that
    does not round (the previous test). The two runs differ by 8e-4 to 2e-3 here. Odd sizes for
    the panels' padding, below and above the 64 rows from which the input projection runs on
    the same kernels, and two threads; on AMX, steps of 16 and 37 rows (one tile's rows, and
    two and a part). A thread rounds a step's rows once for all the panels it runs, except
    where they pass 1 MB (the last shape), which it rounds a chunk at a time."""
    T, B, I, H = shape
    _, fused = make_pair(cell, I, H, "cpu", torch.bfloat16)
    gen = torch.Generator().manual_seed(T + H)
    x = torch.randn(T, B, I, generator=gen).to(torch.bfloat16)
    h0 = (0.5 * torch.randn(B, H, generator=gen)).to(torch.bfloat16)
    c0 = torch.randn(B, H, generator=gen).to(torch.bfloat16) if cell == "lstm" else None
    with torch.no_grad():
        output, _ = fused(x, (h0[None], c0[None]) if cell == "lstm" else h0[None])
    expected = _forward_in_float64(cell, fused, x, h0, c0, round_state=_bf16_products())
    other = _forward_in_float64(cell, fused, x, h0, c0, round_state=not _bf16_products())
    near, far = (rel_err(output, run.to(torch.bfloat16)) for run in (expected, other))
    assert near < 4e-4 and far > 2 * near, (near, far)


@pytest.mark.parametrize("cell", list(CELLS))
def test_bfloat16_tiles_match_dot_products(cell, isa):
    """On AMX, bfloat16 products from 2 rows run on tiles (kernels_avx512_bf16.cpp): the same
    rounded operands as avx512_bf16's dot products, summed in another order, so every result of
    a training step agrees with theirs within 2e-3 (measured: 1.1e-3 at most, where a float32
    difference tips the state's rounding to bfloat16 a step; a wrong tile, 0.1 to 0.9). Rows
    from 1 to 37 a step (packed, and row blocks with a part), odd depths, both directions, and a
    second layer of 2H inputs."""
    if "amx" not in fusedrnn.backends.cpu_isas():
        pytest.skip("this CPU has no AMX tiles for the process")
    if isa != "amx":
        pytest.skip("runs both ISAs itself: once, under amx")
    ref, fused = make_pair(cell, 45, 70, "cpu", torch.bfloat16, num_layers=2, bidirectional=True)
    gen = torch.Generator().manual_seed(9)
    lengths = sorted(int(n) for n in torch.randint(1, 12, (37,), generator=gen))[::-1]
    padded = torch.randn(max(lengths), 37, 45, generator=gen).to(torch.bfloat16)
    hx = random_state(cell, ref, 37, "cpu", torch.bfloat16, gen)
    runs = {}
    for isa in ("avx512_bf16", "amx"):
        with fusedrnn.backends.force_cpu_isa(isa):
            runs[isa] = {"padded": run_and_grad(fused, padded, hx),
                         "packed": run_packed_and_grad(fused, padded, lengths, True, hx)}
    for how in ("padded", "packed"):
        assert_close_by_name(runs["amx"][how], runs["avx512_bf16"][how], 2e-3)


@pytest.mark.parametrize("cell", list(CELLS))
def test_bfloat16_training_of_packed_and_reverse_rows(cell):
    """bfloat16 training with the weight gradients on bfloat16 GEMMs (from 64 rows, on
    avx512_bf16), whose h_{t-1} rows are gathered for packed batches and for the reverse
    direction (projections.cpp, states_before): every result within the half-precision rule of
    torch.nn's bfloat16 against float64, under every ISA."""
    runs = []
    for seed in range(half_rule_draws(cell)):
        ref, fused = make_pair(cell, 6, 70, "cpu", torch.bfloat16, bidirectional=True, seed=seed)
        ref64 = copy.deepcopy(ref).double()
        gen = torch.Generator().manual_seed(seed)
        padded = torch.randn(max(LENGTHS), len(LENGTHS), 6, generator=gen).to(torch.bfloat16)
        hx = random_state(cell, ref, len(LENGTHS), "cpu", torch.bfloat16, gen)
        hx64 = tuple(s.double() for s in hx) if cell == "lstm" else hx.double()
        runs.append(tuple(run_packed_and_grad(model, x, LENGTHS, False, h) for model, x, h in
                          ((fused, padded, hx), (ref, padded, hx),
                           (ref64, padded.double(), hx64))))
    assert_half_rule(runs)


@pytest.mark.parametrize("cell", list(CELLS))
def test_bfloat16_weight_gradients_of_wide_gates(cell, isa):
    """From 768 gate columns, a bfloat16 layer's weight gradients on bfloat16 GEMMs take the gate
    gradients rounded into a transposed copy (projections.cpp, rounded_columns; on AVX512-BF16
    CPUs): 75 rows and 788-789 columns (771 for the RNN), so that the copy's blocks of 32 rows by
    16 columns end part-way both ways, and a reverse direction. Every result within the
    half-precision rule of torch.nn's bfloat16 against float64, under every ISA."""
    H = {"lstm": 197, "gru": 263}.get(cell, 771)
    runs = []
    for seed in range(half_rule_draws(cell)):
        ref, fused = make_pair(cell, 9, H, "cpu", torch.bfloat16, bidirectional=True, seed=seed)
        ref64 = copy.deepcopy(ref).double()
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(5, 15, 9, generator=gen).to(torch.bfloat16)
        hx = random_state(cell, ref, 15, "cpu", torch.bfloat16, gen)
        hx64 = tuple(s.double() for s in hx) if cell == "lstm" else hx.double()
        runs.append(tuple(run_and_grad(model, inputs, state) for model, inputs, state in
                          ((fused, x, hx), (ref, x, hx), (ref64, x.double(), hx64))))
    assert_half_rule(runs)


# torch.backends.mkldnn.flags also sets oneDNN's TF32 switch, which warns on CPU-only builds.
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkl"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_large_gemms_match_torch_nn(cell, onednn):
    """float32 layers whose GEMMs are large enough for oneDNN (8M multiply-adds and up: here the
    input projection and the weight gradients), and the same with oneDNN switched off, where
    they run on at::mm."""
    T, B, I, H = 12, 24, 200, 180
    ref, fused = make_pair(cell, I, H, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, I, generator=gen)
    with torch.backends.mkldnn.flags(enabled=onednn):
        assert_matches(cell, fused, ref, x, random_state(cell, ref, B, "cpu", torch.float32, gen),
                       torch.float32)


@pytest.mark.parametrize("cell", list(CELLS))
def test_input_projection_on_panels(cell, isa):
    """float32 input projections of up to 64 features and from 64 rows run on the fused
    product's kernels under AVX2 (projections.cpp, projects_on_panels), with no BLAS call; one
    feature more, or another ISA, and they run on the BLAS; one row fewer, and under AVX2 on the
    small-product kernels (layer/gemm.cpp), elsewhere on the BLAS. Each against torch.nn,
    gradients included (the GRU's biases start its product), and a stacked bidirectional layer,
    whose second layer (74 features) takes the BLAS. Batches of 7 rows, too few for the loop to
    project the input itself (test_input_projection_in_loop)."""
    avx2 = isa == "avx2"
    # (T, B, I, options, whether the forward calls the BLAS)
    cases = [(10, 7, 64, {}, not avx2), (10, 7, 65, {}, True), (9, 7, 64, {}, not avx2),
             (9, 7, 5, {"num_layers": 2, "bidirectional": True}, None)]
    for T, B, I, options, blas in cases:
        ref, fused = make_pair(cell, I, 37, "cpu", torch.float32, seed=I + B, **options)
        gen = torch.Generator().manual_seed(T * B + I)
        x = torch.randn(T, B, I, generator=gen)
        assert_matches(cell, fused, ref, x, random_state(cell, ref, B, "cpu", torch.float32, gen),
                       torch.float32)
        if blas is not None:
            assert bool(blas_calls(fused, x)) == blas, (T, B, I)


def blas_calls(model, x, hx=None):
    """The BLAS products a forward of `model` on `x` calls through ATen, by the profiler. With
    oneDNN off: large float32 products otherwise go to torch's oneDNN matmul where it takes
    float32 (AVX-512 CPUs), which the profiler does not list."""
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), \
            torch.profiler.profile() as profile:
        model(x, hx)
    return {e.key for e in profile.key_averages()} & {"aten::mm", "aten::addmm_"}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_input_projection_in_loop(cell, dtype, isa):
    """Under AVX2 the LSTM's and the Elman RNN's fused loops project each step's input
    themselves, from 8 rows a step and up to 256 input features and units (projections.cpp,
    projects_in_loop): no BLAS call in the forward; under AVX-512, float32 layers from 16 rows
    and up to 64 features and units, and the LSTM's inference from 32 rows up to 128. A row
    fewer, a feature or unit more, or another ISA, and a BLAS GEMM projects the whole sequence
    first (the GRU always: its new gate keeps the two products apart). Each against torch.nn
    with every gradient and in inference, including a stacked bidirectional layer (the second
    layer's 2H input features) and a packed batch."""
    avx2 = isa == "avx2" and cell != "gru"
    avx512 = isa in ("avx512", "avx512_bf16", "amx") and cell != "gru" and dtype == torch.float32
    avx512_inference = avx512 and cell == "lstm"  # the LSTM's gates kept in training only
    # (T, B, I, H, options, whether the loop projects the input)
    # More than 64 rows in all, which the small-product kernels would take (layer/gemm.cpp).
    cases = [(9, 8, 65, 37, {}, avx2), (10, 7, 65, 37, {}, False),
             (8, 9, 257, 19, {}, False), (9, 8, 70, 257, {}, False),
             (7, 10, 256, 256, {"bias": False}, avx2),
             (6, 12, 66, 20, {"num_layers": 2, "bidirectional": True}, avx2),
             (5, 16, 64, 64, {}, avx2 or avx512), (5, 15, 64, 64, {}, avx2),
             (5, 16, 65, 64, {}, avx2), (5, 16, 64, 65, {}, avx2),
             (3, 32, 128, 128, {}, avx2 or avx512_inference), (3, 31, 128, 128, {}, avx2),
             (3, 32, 129, 128, {}, avx2), (3, 32, 128, 129, {}, avx2)]
    for T, B, I, H, options, projected_in_loop in cases:
        ref, fused = make_pair(cell, I, H, "cpu", dtype, seed=I + B, **options)
        gen = torch.Generator().manual_seed(T * B + I)
        x = torch.randn(T, B, I, generator=gen, dtype=dtype)
        hx = random_state(cell, ref, B, "cpu", dtype, gen)
        assert_matches(cell, fused, ref, x, hx, dtype)
        with torch.no_grad():
            assert rel_err(fused(x, hx)[0], ref(x, hx)[0]) <= TOLERANCE[dtype], (T, B, I, H)
        # Otherwise AVX2 projects float32 of up to 64 features on the panels, also without BLAS
        # (test_input_projection_on_panels).
        on_panels = isa == "avx2" and dtype == torch.float32 and I <= 64
        assert bool(blas_calls(fused, x)) != (projected_in_loop or on_panels), (T, B, I, H)
    # A packed batch of 16 sequences, the first steps of 16 rows and the last of 2.
    ref, fused = make_pair(cell, 70, 21, "cpu", dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    padded = torch.randn(max(LENGTHS), len(LENGTHS), 70, generator=gen, dtype=dtype)
    hx = random_state(cell, ref, len(LENGTHS), "cpu", dtype, gen)
    assert_close_by_name(run_packed_and_grad(fused, padded, LENGTHS, False, hx),
                         run_packed_and_grad(ref, padded, LENGTHS, False, hx), TOLERANCE[dtype])


def test_single_row_products_past_the_onednn_size():
    """A batch of one at H=1500: each step's h W_hh^T is one row by 6000 by 1500, past the size
    from which float32 GEMMs go to oneDNN (layer/gemm.cpp). torch 2.14.1's oneDNN matmul
    corrupted the heap for one row (the process aborted under the scalar ISA); such products
    stay on at::mm or the small-product kernels."""
    ref, fused = make_pair("lstm", 3, 1500, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(2)
    for T in (1, 3):
        x = torch.randn(T, 1, 3, generator=gen)
        hx = random_state("lstm", ref, 1, "cpu", torch.float32, gen)
        with torch.no_grad():
            for _ in range(3):
                output, (h_n, c_n) = fused(x, hx)
            expected, (h_ref, c_ref) = ref(x, hx)
        for ours, theirs in ((output, expected), (h_n, h_ref), (c_n, c_ref)):
            assert rel_err(ours, theirs) < 1e-5


@pytest.mark.parametrize("cell", list(CELLS))
def test_temporaries_from_the_kept_buffer(cell):
    """Temporaries of 1 MB and more (the GRU's input projection, the gate gradients) come from
    the pool kept between calls (scratch.h). A larger call after a smaller one takes new blocks,
    a smaller one after it reuses them: each still matches torch.nn, and a call repeated after
    others gives the same results bit for bit."""
    calls = []
    # Every temporary here is 1 MB (the RNN's gradient at T=16) to 6 MB (the LSTM's at T=24).
    for T, B, H in [(16, 32, 512), (24, 32, 512), (16, 32, 512)]:
        ref, fused = make_pair(cell, H, H, "cpu", torch.float32, seed=T + H)
        gen = torch.Generator().manual_seed(T * B + H)
        x = torch.randn(T, B, H, generator=gen)
        hx = random_state(cell, ref, B, "cpu", torch.float32, gen)
        assert_matches(cell, fused, ref, x, hx, torch.float32)
        calls.append((fused, x, hx, run_and_grad(fused, x, hx)))
    fused, x, hx, first = calls[0]
    for name, value in run_and_grad(fused, x, hx).items():
        assert torch.equal(value, first[name]), name


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_large_gemms_leave_at_mm_for_onednn(isa):
    """No silent fallback: with oneDNN on, a float32 input projection of 8M multiply-adds and
    more does not reach ATen's mm (a plain mm here: the fused loop adds the biases itself),
    where torch's oneDNN matmul takes float32 on this CPU (backends.cpu_gemm(); torch 2.14
    refuses it without AVX-512). On one thread: on two, the projection runs beside the loop,
    in chunks that go to at::mm on purpose (layer/gemm.cpp, tests/layer/test_beside_loop.py)."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    if "avx512" in fusedrnn.backends.cpu_isas():
        assert fusedrnn.backends.cpu_gemm() == "onednn"
    if isa == "scalar":
        pytest.skip("without vector kernels the step backend's per-step products use addmm_")
    # 288 x 300 x 720: 62M multiply-adds, too many features for the loop to project them
    _, fused = make_pair("lstm", 300, 180, "cpu", torch.float32)
    x = torch.randn(12, 24, 300)

    def gemm_ops(onednn):
        with torch.backends.mkldnn.flags(enabled=onednn), torch.no_grad(), num_threads(1):
            fused(x)  # the first call checks oneDNN once, with a 2x2 at::mm
            with torch.profiler.profile() as profile:
                fused(x)
        return {e.key for e in profile.key_averages()} & {"aten::addmm_", "aten::mm"}
    assert gemm_ops(True) == (set() if fusedrnn.backends.cpu_gemm() == "onednn" else {"aten::mm"})
    assert gemm_ops(False) == {"aten::mm"}
    with torch.backends.mkldnn.flags(enabled=False):
        assert fusedrnn.backends.cpu_gemm() == "aten"


@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no-biases"])
@pytest.mark.parametrize("cell", ["lstm", "rnn_tanh"])
def test_biases_added_in_the_loop(cell, biases):
    """The fused loop adds the LSTM's and RNN's biases in its product (recurrence.h,
    adds_biases), against the plain PyTorch layer of ops.py, in float64. H = 37: the last panel
    partly padding."""
    from fusedrnn import ops
    gen = torch.Generator().manual_seed(4)
    T, B, I, H = 5, 7, 6, 37
    G = 4 if cell == "lstm" else 1
    x, h0, c0 = (torch.randn(*shape, generator=gen, dtype=torch.float64)
                 for shape in ((T, B, I), (B, H), (B, H)))
    w_ih, w_hh = (torch.randn(G * H, n, generator=gen, dtype=torch.float64) for n in (I, H))
    b_ih, b_hh = ((torch.randn(G * H, generator=gen, dtype=torch.float64) for _ in range(2))
                  if biases else (None, None))
    if cell == "lstm":
        ours = ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        theirs = ops._lstm_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, False)
    else:
        ours = ops.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh)
        theirs = ops._rnn_reference(x, h0, w_ih, w_hh, b_ih, b_hh, False, False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
