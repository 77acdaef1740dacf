"""Softmax attention on CPU: which form runs (attention dropout's mask: test_dropout_mask.py).
The maths of each form is checked in float64 in test_mixers_float64.py."""

import jax
import jax.numpy as jnp
import pytest

from lra_bench.mixers import _attention, _blocks


def program(n, **kwargs):
    """The traced attention of (2, n, 4, 16) arrays, nested programs included, as text."""
    q = jnp.zeros((2, n, 4, 16))
    mask = jnp.ones((2, n), bool)
    return str(jax.make_jaxpr(lambda q: _attention.attention(q, q, q, mask, **kwargs))(q))


@pytest.mark.parametrize("dropout", [False, True])
def test_blocks_run_where_they_pay(monkeypatch, dropout):
    kwargs = dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)) if dropout else {}
    # 2 x 4 x 1024^2 float32 logits (32 MiB): blocks with their own backward pass
    assert "custom_vjp_call" in program(1024, **kwargs)
    # 2 x 4 x 64^2 (128 KiB): the explicit form, whose fixed costs are lower
    assert _blocks._logits_bytes(jnp.zeros((2, 64, 4, 16)), jnp.zeros((2, 64, 4, 16))) < \
        _blocks.SMALL_BYTES
    assert "custom_vjp_call" not in program(64, **kwargs)
    monkeypatch.setenv("LRA_ATTENTION", "explicit")
    assert "custom_vjp_call" not in program(1024, **kwargs)


def test_blocks_with_dropout_hold_no_queries_by_keys_mask(monkeypatch):
    """The blocks hash their part of the keep mask (forward and backward): no (batch, heads,
    queries, keys) array of any dtype appears in the gradient's program, as it does in the
    explicit form's."""
    q = jnp.zeros((2, 1024, 4, 16))
    mask = jnp.ones((2, 1024), bool)

    def loss(q):
        return _attention.attention(q, q, q, mask, dropout_rate=0.1,
                                    dropout_rng=jax.random.key(0)).sum()
    assert "custom_vjp_call" in str(jax.make_jaxpr(loss)(q))  # the blocks run
    assert "4,1024,1024]" not in str(jax.make_jaxpr(jax.grad(loss))(q))
    monkeypatch.setenv("LRA_ATTENTION", "explicit")
    assert "bool[2,4,1024,1024]" in str(jax.make_jaxpr(jax.grad(loss))(q))
