"""Top-k pooling by successive halving: a float64 reference, padding, schedules, a smoke run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from lra_bench import cli, config, data, report
from lra_bench.data import listops
from lra_bench.errors import UserError
from lra_bench.mixers import MixerSpec, topk
from lra_bench.mixers.softmax import softmax_attention
from lra_bench.run import execute

halving = jax.jit(topk.successive_halving_topk, static_argnames=("rounds", "base", "flip_right",
                                                                 "sort_back"))


def reference_halving(embs, scores, mask, rounds, base=20.0, flip_right=True, sort_back=False):
    """One example, float64, pair by pair: the rounds as the paper and the issue state them,
    with pads ranked last and given no weight next to a real token."""
    e = np.where(mask[:, None], embs, 0.0).astype(np.float64)
    s = np.where(mask, scores, 0.0).astype(np.float64)
    m = [bool(v) for v in mask]
    for _ in range(rounds):
        order = sorted(range(len(s)), key=lambda i: -s[i] if m[i] else math.inf)  # stable
        left, right = order[: len(s) // 2], order[len(s) // 2:]
        pairs = list(zip(left, right[::-1] if flip_right else right))
        if sort_back:
            pairs.sort(key=lambda p: p[0])
        new_e, new_s, new_m = [], [], []
        for a, b in pairs:
            if m[a] and m[b]:
                za, zb = math.exp(base ** s[a]), math.exp(base ** s[b])
                wa, wb = za / (za + zb), zb / (za + zb)
            else:
                wa, wb = (float(m[a]), float(m[b])) if m[a] or m[b] else (0.5, 0.5)
            new_e.append(wa * e[a] + wb * e[b])
            new_s.append(wa * s[a] + wb * s[b])
            new_m.append(m[a] or m[b])
        e, s, m = np.array(new_e), np.array(new_s), new_m
    return e, s, np.array(m)


def example_batch(n=16, dim=3, valid=(16, 11, 5), seed=0):
    rng = np.random.default_rng(seed)
    embs = rng.normal(size=(len(valid), n, dim)).astype(np.float32)
    scores = (rng.uniform(size=(len(valid), n)) + topk.SCORE_EPS).astype(np.float32)
    mask = np.arange(n)[None] < np.asarray(valid)[:, None]
    return embs, scores, mask


@pytest.mark.parametrize("flip_right,sort_back", [(True, False), (False, True)])
def test_successive_halving_equals_float64_reference(flip_right, sort_back):
    embs, scores, mask = example_batch()
    out, out_scores, out_mask = halving(embs, scores, mask, rounds=2, flip_right=flip_right,
                                        sort_back=sort_back)
    assert out.shape == (3, 4, 3)
    for b in range(3):
        e, s, m = reference_halving(embs[b], scores[b], mask[b], 2, flip_right=flip_right,
                                    sort_back=sort_back)
        np.testing.assert_allclose(out[b], e, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out_scores[b], s, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out_mask[b], m)


def test_well_separated_scores_approach_hard_top_k():
    embs, _, _ = example_batch(valid=(16,))
    top = np.array([2, 5, 11, 14])
    scores = np.full((1, 16), 0.01, np.float32)
    scores[0, top] = [0.99, 0.98, 0.97, 0.96]
    out, _, _ = halving(embs, scores, np.ones((1, 16), bool), rounds=2)
    np.testing.assert_allclose(out[0], embs[0, top], atol=1e-6)  # best first without sort_back
    # and what it is not: with scores close together the pooled tokens are blends
    blend, _, _ = halving(embs, np.where(scores > 0.5, 0.55, 0.45).astype(np.float32),
                          np.ones((1, 16), bool), rounds=2)
    assert np.abs(np.asarray(blend[0]) - embs[0, top]).max() > 0.1


def test_batch_vectorised_equals_per_example():
    embs, scores, mask = example_batch(valid=(16, 9, 1), seed=1)
    batched = halving(embs, scores, mask, rounds=2)
    for b in range(3):
        single = halving(embs[b:b + 1], scores[b:b + 1], mask[b:b + 1], rounds=2)
        for got, want in zip(batched, single):
            np.testing.assert_array_equal(got[b], want[0])


def test_pads_are_never_selected_even_with_the_best_scores():
    embs, scores, mask = example_batch(valid=(11, 5, 2), seed=2)
    out, _, out_mask = halving(embs, scores, mask, rounds=2)
    noisy, _, noisy_mask = halving(np.where(mask[..., None], embs, 1e6).astype(np.float32),
                                   np.where(mask, scores, 1.0).astype(np.float32), mask, rounds=2)
    np.testing.assert_array_equal(out_mask.sum(1), [4, 4, 2])  # min(k, real tokens)
    np.testing.assert_array_equal(out_mask, noisy_mask)
    m = np.asarray(out_mask)
    np.testing.assert_array_equal(np.asarray(out)[m], np.asarray(noisy)[m])
    assert np.abs(np.asarray(noisy)).max() < 10.0  # no pad content anywhere, even in pad slots


def test_permute_gradient_is_the_inverse_permutation():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 2, 6, 3)).astype(np.float32)
    perm = np.stack([rng.permutation(6), rng.permutation(6)])

    @jax.jit
    def both(x):
        plain = jax.grad(lambda x: (jnp.take_along_axis(x, perm[..., None], axis=1) * w).sum())
        return jax.grad(lambda x: (topk.permute(x, perm) * w).sum())(x), plain(x)

    ours, plain = both(x)
    np.testing.assert_array_equal(ours, plain)


def spec(**kw):
    base = dict(dim=8, num_heads=2, qkv_dim=8, attention_dropout=0.0, max_length=17, has_cls=True,
                dtype=jnp.float32, layer=0, num_layers=2)
    return MixerSpec(**{**base, **kw})


def test_scorer_gets_gradients_and_cls_stays_outside_the_pooler():
    mixer = topk.Mixer(spec(), rngs=nnx.Rngs(0), pool_lengths=[8, 4], chunk_size=8)
    x = jax.random.normal(jax.random.key(1), (2, 17, 8))  # CLS + 16 tokens
    mask = jnp.arange(17)[None] < jnp.array([[17], [12]])
    target = jax.random.normal(jax.random.key(2), (2, 9, 8))

    @nnx.jit
    def loss_and_grads(m):
        def loss(m):
            y, short = m.after_block(x, mask)
            return ((y - target) ** 2 * short[..., None]).sum(), (y, short)
        return nnx.value_and_grad(loss, has_aux=True)(m)

    (_, (y, short)), grads = loss_and_grads(mixer)
    assert y.shape == (2, 9, 8) and short[:, 0].all()
    np.testing.assert_array_equal(y[:, 0], x[:, 0])  # the CLS token is not pooled
    assert short.sum() == 2 * 9
    assert np.abs(grads.scorer.kernel[...]).min() > 0 and np.abs(grads.scorer.bias[...]).min() > 0
    last = topk.Mixer(spec(layer=1), rngs=nnx.Rngs(0), pool_lengths=[8])
    assert last.scorer is None and last.after_block(x, mask)[0] is x


def test_blockwise_attention_is_attention_within_chunks():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 20, 2, 4)) for i in range(3))
    mask = jnp.arange(20)[None] < jnp.array([[20], [13]])
    got = jax.jit(topk.blockwise_attention, static_argnums=4)(q, k, v, mask, 8)
    attention = jax.jit(softmax_attention)
    for start in range(0, 20, 8):
        c = slice(start, start + 8)
        want = attention(q[:, c], k[:, c], v[:, c], mask[:, c])
        real = np.asarray(mask[:, c])
        np.testing.assert_allclose(np.asarray(got[:, c])[real], np.asarray(want)[real], atol=1e-5)


def test_pooling_plan_and_bad_schedules():
    assert topk.pooling_plan(2000, [512, 128], 4) == [512, 128, None, None]
    assert topk.pooling_plan(2000, [0, 1000, 250], 3) == [None, 1000, 250]
    assert topk.pooling_plan(2000, [512, 128, 64], 1) == [512]  # steps without a layer dropped
    assert topk.halving_rounds(2000, 512) == 2 and topk.halving_rounds(512, 512) == 0
    for bad, words in [([4096], "longer"), ([512, 96], "power-of-two"),
                       ([512, 1024], "longer"), ([-1], "int")]:
        with pytest.raises(UserError, match=words):
            topk.pooling_plan(2000, bad, 2)


def test_factor_schedule_resolves_against_length_and_layers():
    assert topk.factor_plan(8192, [4, 4], 4) == [2048, 512, None, None]  # the official 8K
    assert topk.factor_plan(1000, [4, 4], 2) == [250, 63]  # 250 pads to 63 * 4 = 252
    assert topk.factor_plan(1000, [4, 4], 1) == [250]
    assert topk.factor_plan(3, [4, 1, 2], 3) == [1, None, 1]  # never below one token
    for n, k in [(1000, 250), (250, 63), (3, 1)]:
        assert k << topk.halving_rounds(n, k) >= n
    for bad in ([3], [0], [4, 6], [2.0]):
        with pytest.raises(UserError, match="power of two"):
            topk.factor_plan(1000, bad, 2)


def test_factor_schedule_pools_a_cls_model_to_the_resolved_lengths():
    x = jax.random.normal(jax.random.key(1), (2, 17, 8))  # CLS + 16 tokens
    mask = jnp.arange(17)[None] < jnp.array([[17], [12]])
    for layer, want in [(0, 1 + 4), (1, 1 + 1)]:
        m = topk.Mixer(spec(layer=layer), rngs=nnx.Rngs(0), pool_factors=[4, 4], chunk_size=8)
        y, short = m.after_block(x[:, :1 + 16 // 4 ** layer], mask[:, :1 + 16 // 4 ** layer])
        assert y.shape[1] == short.shape[1] == want and short[:, 0].all()


def test_bad_schedule_is_one_line_error_before_anything_runs(tmp_path):
    result = CliRunner().invoke(cli.app, [
        "run", "--model", "topk", "--task", "listops", "--set", "mixer.pool_lengths=[64, 24]",
        "--data-dir", str(tmp_path / "no-data"), "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "pool_lengths" in lines[0] and "power-of-two" in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert not (tmp_path / "results").exists() and not (tmp_path / "no-data").exists()


def test_topk_trains_in_a_smoke_run_and_is_reported(tmp_path, fast_compile):
    small = ["data.num_train=64", "data.num_val=32", "data.num_test=32", "train.batch_size=16"]
    rc = config.resolve("topk", "listops", "smoke", overrides=small, steps=3)
    listops.generate_files(tmp_path / "data" / "listops" / rc.data["variant"], rc.data)
    assert data.load(rc, tmp_path / "data")["train"]["inputs"].shape == (64, 128)
    summary = execute(rc, tmp_path / "data", tmp_path / "results", interactive=False)
    assert summary["status"] == "completed" and math.isfinite(summary["final_train_loss"])
    assert model_in_report("topk", tmp_path / "results")


def model_in_report(model, results_dir):
    return model in set(report.accuracy_table(report.load_runs(results_dir)[0])["model"])
