"""The fused attention path (cuDNN on a GPU) against the explicit form.

The fused path passes the key mask to the kernel as lengths after moving each row's real keys to
the front. On CPU the same call runs through JAX's XLA implementation, which checks that
rearrangement (any mask, empty rows, gradients); on a GPU the cuDNN kernel itself is checked
(`JAX_PLATFORMS=cuda python -m pytest tests/test_attention_fused.py` there, as
`benchmarks/device_check.sh` does).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lra_bench.mixers import _attention

ON_GPU = jax.default_backend() == "gpu"  # tests/conftest.py picks CPU unless JAX_PLATFORMS is set


def inputs(dtype, b=3, n=40, h=2, d=16):
    q, k, v = (jax.random.normal(jax.random.key(i), (b, n, h, d), dtype) for i in range(3))
    rng = np.random.default_rng(0)
    mask = np.ones((b, n), bool)
    mask[0, 25:] = False                      # padding at the end
    mask[1] = rng.random(n) < 0.6             # scattered pads (black pixels as padding)
    mask[2] = False                           # no real key: uniform weights
    return q, k, v, jnp.asarray(mask)


def explicit(q, k, v, mask):
    return _attention._explicit(q, k, v, mask[:, None, None, :], q.shape[-1] ** -0.5)


def fused(q, k, v, mask, implementation):
    return _attention._fused(q, k, v, mask, q.shape[-1] ** -0.5, implementation)


def loss(f):
    # weights on the output so that every element's gradient differs
    return lambda q, k, v, mask: jnp.sum(f(q, k, v, mask).astype(jnp.float32)
                                         * jnp.cos(jnp.arange(q.shape[1]))[None, :, None, None])


@pytest.mark.parametrize("d", [16, 4])  # 4: padded with zero features to 8 for the kernel
def test_fused_call_with_keys_moved_to_the_front_equals_the_masked_explicit_form(d):
    q, k, v, mask = inputs(jnp.float32, d=d)
    want = explicit(q, k, v, mask)
    got = fused(q, k, v, mask, "xla")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grads_want = jax.grad(loss(explicit), argnums=(0, 1, 2))(q, k, v, mask)
    grads_got = jax.grad(loss(lambda *a: fused(*a, "xla")), argnums=(0, 1, 2))(q, k, v, mask)
    for g, w in zip(grads_got, grads_want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_attention_routes_bf16_through_the_fused_path_where_it_applies(monkeypatch):
    q, k, v, mask = inputs(jnp.bfloat16)
    calls = []
    real = _attention._fused
    monkeypatch.setattr(_attention, "_fused_applies", lambda q, dropout: not dropout)
    monkeypatch.setattr(_attention, "FUSED_IMPLEMENTATION", "cudnn" if ON_GPU else "xla")
    monkeypatch.setattr(_attention, "_fused", lambda *a: calls.append(1) or real(*a))
    got = _attention.attention(q, k, v, mask, query_mask=mask)
    assert calls, "the fused path was not taken"
    want = _attention.attention(q.astype(jnp.float32), k.astype(jnp.float32),
                                v.astype(jnp.float32), mask, query_mask=mask)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-2)
    calls.clear()  # attention dropout is not fused
    _attention.attention(q, k, v, mask, dropout_rate=0.1, dropout_rng=jax.random.key(0))
    assert not calls


@pytest.mark.skipif(not ON_GPU, reason="cuDNN needs a GPU")
@pytest.mark.parametrize("n, d", [(1000, 64), (4096, 64), (1025, 4)])  # 1025: CLS; 4: padded
def test_cudnn_kernel_matches_the_explicit_form_and_keeps_no_n_squared_array(n, d):
    q, k, v, mask = inputs(jnp.bfloat16, b=3, n=n, h=4, d=d)
    step = jax.jit(jax.value_and_grad(loss(lambda *a: fused(*a, "cudnn")), argnums=(0, 1, 2)))
    compiled = step.lower(q, k, v, mask).compile()
    assert "cudnn" in compiled.as_text().lower()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 3 * 4 * n * n, f"temp {temp} bytes: an N x N array is kept"
    f32 = [t.astype(jnp.float32) for t in (q, k, v)]
    value, grads = compiled(q, k, v, mask)
    value_want, grads_want = jax.value_and_grad(loss(explicit), argnums=(0, 1, 2))(*f32, mask)
    np.testing.assert_allclose(value, value_want, rtol=2e-2, atol=1.0)
    for g, w in zip(grads, grads_want):
        g = np.asarray(g.astype(jnp.float32))
        assert np.abs(g - w).max() <= 0.05 * np.abs(w).max() + 1e-3


def test_a_rejected_fused_call_falls_back_to_the_explicit_form_and_says_why(monkeypatch, caplog):
    q, k, v, mask = inputs(jnp.bfloat16)
    monkeypatch.setattr(_attention, "_fused_applies", lambda q, dropout: False)
    unfused = _attention.attention(q, k, v, mask)  # what this backend runs without the kernel
    monkeypatch.setattr(_attention, "_fused_applies", lambda q, dropout: True)
    monkeypatch.setattr(_attention, "_warned", set())

    def reject(*a):
        raise NotImplementedError("head dim 16 not supported")

    monkeypatch.setattr(_attention, "_fused", reject)
    with caplog.at_level("WARNING", logger="lra_bench"):
        got = _attention.attention(q, k, v, mask)
        _attention.attention(q, k, v, mask)
    assert [r.getMessage() for r in caplog.records if "fused attention" in r.getMessage()] == [
        f"fused attention rejected for q {q.shape} bfloat16 (NotImplementedError: head dim 16 "
        "not supported); using the explicit form"]
    np.testing.assert_array_equal(got, unfused)
