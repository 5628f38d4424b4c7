"""The packed weights kept between calls (csrc/layer/packed_weights.h): reused while the weights
hold the same bytes, repacked after every kind of change to them (optimizer steps,
load_state_dict, `param.data` edits, which leave the version counter alone), bounded by their
limit, and invisible in the results."""
import gc
import os
import subprocess
import sys
import threading

import pytest
import torch

import fusedrnn
from conftest import (CPU_ISAS, assert_close_by_name, layer_args, make_pair, rel_err,
                      run_and_grad)

MB = 1 << 20
# B=1: the loop packs W_hh; B=32 I=H=48: on AVX-512 the loop also packs W_ih (it projects the
# input in its product), on AVX2 the input projection runs on packed W_ih before the loop.
SHAPES = [(12, 1, 40, 64), (9, 32, 48, 48)]


@pytest.fixture(params=[isa for isa in CPU_ISAS if isa != "scalar"])
def vector_isa(request):
    """Each instruction set with vector kernels (the scalar one packs nothing)."""
    with fusedrnn.backends.force_cpu_isa(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with nothing kept and the default limit, and leaves it so."""
    saved = fusedrnn.packed_weights_memory()["limit"]
    fusedrnn.empty_cache()
    yield
    fusedrnn.set_packed_weights_limit(saved)
    fusedrnn.empty_cache()


def _stats():
    return fusedrnn.packed_weights_memory()


def _optimizer_step(model):
    for p in model.parameters():
        p.grad = 0.1 * torch.randn_like(p)
    torch.optim.SGD(model.parameters(), lr=0.1).step()


def _load_state_dict(model):
    other = type(model)(model.input_size, model.hidden_size, **_extra(model))
    model.load_state_dict(other.state_dict())


def _extra(model):
    return {"nonlinearity": model.nonlinearity} if isinstance(model, fusedrnn.RNN) else {}


# New weights of the magnitude of torch.nn's initialisation (larger ones saturate the gates, and
# float32 rounding then grows past the tolerance through T steps, fused or not).
def _data_copy(model):  # leaves p._version as it was
    for p in model.parameters():
        p.data.copy_(0.1 * torch.randn_like(p))


def _data_one_element(model):  # the last byte the comparison reads
    model.weight_hh_l0.data.view(-1)[-1] += 0.5


def _data_replaced(model):  # a new tensor, at a new address
    for p in model.parameters():
        p.data = 0.1 * torch.randn_like(p)


def _in_place_without_grad(model):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)


CHANGES = {"optimizer_step": _optimizer_step, "load_state_dict": _load_state_dict,
           "param_data_copy": _data_copy, "param_data_one_element": _data_one_element,
           "param_data_replaced": _data_replaced, "in_place_without_grad": _in_place_without_grad}


def _version_counters(model):
    return [p._version for p in model.parameters()]


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_changed_weights_take_effect_at_the_next_call(vector_isa, shape, cell, change):
    T, B, I, H = shape
    ref, fused = make_pair(cell, I, H, seed=T + B)
    x = torch.randn(T, B, I)
    with torch.inference_mode():
        first = fused(x)[0]
        again = fused(x)[0]
    assert torch.equal(first, again)
    assert _stats()["hits"] >= 1, "the second call found no packing kept"
    versions = _version_counters(fused)
    CHANGES[change](fused)
    if change.startswith("param_data"):
        assert _version_counters(fused) == versions  # what a version check would miss
    ref.load_state_dict(fused.state_dict())
    misses = _stats()["misses"]
    with torch.inference_mode():
        after = fused(x)[0]
        expected = ref(x)[0]
    assert _stats()["misses"] > misses
    assert not torch.equal(after, first)
    assert rel_err(after, expected) <= 1e-5
    fusedrnn.empty_cache()
    with torch.inference_mode():
        assert torch.equal(fused(x)[0], after)  # bit for bit what a fresh packing gives


@pytest.mark.parametrize("change", ["optimizer_step", "param_data_copy"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_half_precision_layers_compare_the_weights_they_were_given(cell, dtype, change):
    """A half-precision layer widens its weights into a new float32 buffer each call; the cache
    compares the caller's weights, so it serves these layers too, and sees their changes."""
    _, fused = make_pair(cell, 48, 64, dtype=dtype, seed=8)
    x = torch.randn(10, 16, 48).to(dtype)
    with torch.inference_mode():
        first = fused(x)[0]
        hits = _stats()["hits"]
        assert torch.equal(fused(x)[0], first)
    assert _stats()["hits"] > hits
    assert _stats()["entries"] <= 2  # W_hh, and W_ih where the loop projects the input
    CHANGES[change](fused)
    with torch.inference_mode():
        after = fused(x)[0]
        fusedrnn.empty_cache()
        assert torch.equal(fused(x)[0], after)
    assert not torch.equal(after, first)


def test_weights_not_contiguous_are_packed_for_the_call_alone():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = layer_args("lstm", 9, 4, 32, 64, "cpu", torch.float32)
    strided = w_hh.t().contiguous().t()  # the same values, column-major
    assert not strided.is_contiguous()
    lib = torch.ops.fusedrnn
    for _ in range(2):
        got = lib.lstm_forward(x, h0, c0, w_ih, strided, b_ih, b_hh, False, False)[0]
    assert _stats()["entries"] == 0
    expected = lib.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, False, False)[0]
    assert _stats()["entries"] == 1
    assert torch.equal(got, expected)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_training_steps_match_torch_nn_through_optimizer_steps(cell):
    """Training forwards keep their packing too: every step after an optimizer step repacks,
    and gradients and outputs follow torch.nn's step after step."""
    ref, fused = make_pair(cell, 24, 32, seed=3)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=1e-3)
    opt_fused = torch.optim.SGD(fused.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(3)
    for step in range(4):
        x = torch.randn(10, 4, 24, generator=gen)
        expected = run_and_grad(ref, x, None, probe_seed=step)
        misses = _stats()["misses"]
        got = run_and_grad(fused, x, None, probe_seed=step)
        assert _stats()["misses"] > misses  # changed weights: packed anew
        assert_close_by_name(got, expected, 1e-5)
        for model, opt in ((ref, opt_ref), (fused, opt_fused)):
            for p, (name, _) in zip(model.parameters(), model.named_parameters()):
                p.grad = (expected if model is ref else got)[f"grad_{name}"].clone()
            opt.step()


def test_unchanged_weights_reuse_the_packing_and_it_is_reported():
    _, fused = make_pair("lstm", 64, 64, seed=5)
    x = torch.randn(20, 1, 64)
    with torch.inference_mode():
        fused(x)
        kept = _stats()
        for _ in range(3):
            fused(x)
    now = _stats()
    assert kept["entries"] >= 1 and kept["held"] >= 2 * 4 * 64 * 64 * 4  # the packing and copy
    assert now["hits"] - kept["hits"] == 3 * kept["entries"]
    assert now["misses"] == kept["misses"]
    assert now["limit"] == 64 * MB


def test_limit_bounds_what_is_kept_and_results_do_not_change():
    _, fused = make_pair("gru", 64, 128, seed=6)
    x = torch.randn(15, 2, 64)
    with torch.inference_mode():
        expected = fused(x)[0]
        for limit in (0, 100_000, 64 * MB):
            fusedrnn.set_packed_weights_limit(limit)
            for _ in range(2):
                assert torch.equal(fused(x)[0], expected)
                assert _stats()["held"] <= limit
    fusedrnn.set_packed_weights_limit(0)
    assert _stats()["held"] == 0 and _stats()["entries"] == 0
    with pytest.raises(RuntimeError, match="at least 0 bytes"):
        fusedrnn.set_packed_weights_limit(-1)


def _kept_models(count, limit_in_models):
    """`count` small RNNs, the limit set to hold `limit_in_models` of their packings."""
    models = [make_pair("rnn_tanh", 32, 64, seed=s)[1] for s in range(count)]
    x = torch.randn(8, 1, 32)
    with torch.inference_mode():
        models[0](x)
    one = _stats()["held"]
    fusedrnn.set_packed_weights_limit(limit_in_models * one)
    return models, x


def _hits(model, x):
    before = _stats()["hits"]
    with torch.inference_mode():
        model(x)
    return _stats()["hits"] - before


def test_weights_beyond_the_limit_do_not_thrash_it():
    """Three models called in turn, room for two: the two kept first keep hitting; the third is
    packed per call and kept nowhere (plain LRU dropped, at every call, the packing the next
    call needed)."""
    models, x = _kept_models(3, 2)
    with torch.inference_mode():
        expected = [m(x)[0] for m in models]
        kept = _stats()
        for _ in range(5):
            assert [_hits(m, x) > 0 for m in models] == [True, True, False]
            assert _stats()["held"] == kept["held"] and _stats()["entries"] == kept["entries"]
            for m, e in zip(models, expected):
                assert torch.equal(m(x)[0], e)


def test_packings_left_unused_give_way_least_recently_used_first():
    models, x = _kept_models(3, 2)
    with torch.inference_mode():
        models[1](x)
        models[0](x)  # models[1]'s is now the least recently used
        calls = 0
        while _hits(models[2], x) == 0:  # kept once the others have gone unused a while
            calls += 1
            assert calls < 5000
            models[0](x)
        assert calls >= 10  # not at once: models[1]'s was used a moment ago
        assert _hits(models[0], x) > 0 and _hits(models[1], x) == 0


def test_freed_weights_free_their_packing():
    models, x = _kept_models(2, 1)
    first, second = models
    del models
    assert _hits(second, x) == 0 and _hits(second, x) == 0  # no room: first's is kept
    del first
    gc.collect()
    assert _hits(second, x) == 0  # packed once more, now kept in the freed one's place
    assert _hits(second, x) > 0


def test_threads_with_their_own_models_get_their_own_results():
    """Concurrent calls on models of one shape (their packings have equal keys but for the
    address) each get their own weights' results."""
    pairs = [make_pair("lstm", 48, 48, seed=s) for s in range(4)]
    x = torch.randn(12, 3, 48)
    with torch.inference_mode():
        expected = [ref(x)[0] for ref, _ in pairs]
    errors = []

    def run(i):
        with torch.inference_mode():
            for _ in range(20):
                err = rel_err(pairs[i][1](x)[0], expected[i])
                if not err <= 1e-5:
                    errors.append((i, err))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_limit_from_the_environment():
    code = "import fusedrnn; print(fusedrnn.packed_weights_memory()['limit'])"
    env = {**os.environ, "FUSEDRNN_PACKED_WEIGHTS_LIMIT_MB": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == 3 * MB
