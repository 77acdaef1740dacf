"""FLOPs with loops counted as often as they run (`lra_bench.hlo_flops`, `measure.cost_flops`):
XLA's cost analysis counts a loop's body once."""

import jax
import jax.numpy as jnp
import pytest

from lra_bench import hlo_flops, measure
from lra_bench.mixers import _attention

N = 32
PRODUCT = 2 * N**3


def compiled(f, *args):
    return jax.jit(f).lower(*args).compile()


def scan_of_products(x, w, k=8):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=k)[0].sum()


def test_a_scan_of_k_products_counts_k_times():
    x = w = jnp.ones((N, N))
    c = compiled(scan_of_products, x, w)
    assert measure.xla_cost_flops(c) < 2 * PRODUCT  # XLA: the body once
    assert measure.cost_flops(c) == pytest.approx(8 * PRODUCT, rel=0.01)


def test_nested_loops_multiply():
    x = w = jnp.ones((N, N))

    def f(x, w):
        return jax.lax.scan(lambda c, _: (scan_of_products(c, w, 3) * c, None), x, None,
                            length=5)[0].sum()

    assert measure.cost_flops(compiled(f, x, w)) == pytest.approx(15 * PRODUCT, rel=0.02)


def test_a_program_without_loops_is_counted_as_xla_counts_it():
    x = w = jnp.ones((N, N))
    c = compiled(jax.grad(lambda x, w: jnp.sum(jnp.exp(x @ w) * 2 + x)), x, w)
    repeated, once = hlo_flops.loop_flops(c.as_text())
    assert repeated == once == pytest.approx(measure.xla_cost_flops(c), rel=0.01)
    assert measure.cost_flops(c) == measure.xla_cost_flops(c)


def test_cpu_attention_blocks_count_their_products():
    # forward + backward of (2, 512, 2, 16): 4 products of (n x n x d) per (row, head) in the
    # algorithm, 5 with the backward's recomputed logits; XLA's figure saw one block of queries
    b, n, h, d = 2, 512, 2, 16
    q = jnp.ones((b, n, h, d))
    mask = jnp.ones((b, n), bool)
    c = compiled(jax.grad(lambda q: jnp.sum(_attention.attention(q, q, q, mask))), q)
    hand = 12 * b * h * n * n * d  # 2 products forward, 4 backward, 2 n^2 d FLOPs each
    assert measure.xla_cost_flops(c) < 0.5 * hand
    assert hand < measure.cost_flops(c) < 1.5 * hand


def test_instruction_classes_name_what_a_profile_times():
    # benchmarks/profile_ops.py joins a trace's operation names to these classes: the product
    # (fused or not) is "products" with its 2 n^3 FLOPs, the exp is "transcendental", the loop a
    # container (its operations are instructions of their own)
    x = w = jnp.ones((N, N))
    c = compiled(lambda x, w: jnp.exp(scan_of_products(x, w, 4) + x @ w), x, w)
    classes = hlo_flops.instruction_classes(c.as_text())
    kinds = {kind for kind, _ in classes.values()}
    assert {"products", "transcendental", "container"} <= kinds
    products = [f for kind, f in classes.values() if kind == "products"]
    assert sorted(products)[-1] == pytest.approx(PRODUCT, rel=0.05)
    assert all(f == 0 for kind, f in classes.values() if kind == "container")
