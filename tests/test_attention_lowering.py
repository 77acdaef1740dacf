"""Whole train steps lowered for CUDA on a CPU host: every softmax attention is cuDNN's fused call
and no N x N array is left.

JAX lowers a program for another platform without its device (`lowering_platforms`), which gives
the StableHLO a GPU would compile. The cuDNN wrapper asks the device for its cuDNN version and
compute capability at trace time; those two queries are answered as an H100/H200 with cuDNN 9
would. The routing, the padding and JAX's own shape checks run as they do on a GPU: a Transformer
step on the text task at 4K lowered this way at 45043c4 held (2, 4, 4097, 4097) arrays, the
explicit form, because JAX refuses odd lengths in training and the CLS token made 4097 (the GPU
sweep's 57 GiB, docs/gpu.md). What this cannot check is cuDNN's own compile and numbers: the
device check's `tests/test_attention_fused.py` run does that on a GPU.
"""

import re

import jax
import pytest

from lra_bench import config, preflight
from lra_bench.mixers import _attention
from lra_bench.trainer import build

fused_attention = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")

LENGTH = 256  # + CLS = 257: odd, as LRA's 4K text with its CLS token


@pytest.fixture
def as_if_on_a_gpu(monkeypatch):
    queries = ("check_cudnn_version", "check_compute_capability",
               "is_cuda_compute_capability_equal")
    if not all(hasattr(fused_attention, name) for name in queries):
        pytest.skip("this JAX's cuDNN wrapper queries the device differently")
    monkeypatch.setattr(fused_attention, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(fused_attention, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(fused_attention, "is_cuda_compute_capability_equal", lambda c: False)
    monkeypatch.setattr(_attention, "backend", lambda: "gpu")


def cuda_program(model: str, *overrides: str) -> str:
    rc = config.resolve(model, "text", "smoke", overrides=[
        'model.dtype="bfloat16"', "model.attention_dropout=0", "model.num_layers=2",
        f"data.max_length={LENGTH}", "train.batch_size=2", *overrides])
    built = {}

    def init():
        built["steps"] = build(rc)
        return built["steps"].init_state

    state = jax.eval_shape(init)
    batch = preflight.abstract_batch(rc, "train")
    traced = built["steps"].train_step.trace(state, batch)
    return traced.lower(lowering_platforms=("cuda",)).as_text()


def square_arrays(text: str, n: int) -> set[str]:
    """Array types whose last two dimensions are both at least n (n x n weights or logits)."""
    found = set()
    for shape in re.findall(r"tensor<((?:\d+x)+)[a-z]+\d*>", text):
        dims = [int(d) for d in shape.rstrip("x").split("x")]
        if len(dims) >= 2 and min(dims[-2:]) >= n:
            found.add(shape.rstrip("x"))
    return found


def long_arrays(text: str, n: int) -> set[str]:
    """Array types with at least two dimensions of n or more, in any order."""
    found = set()
    for shape in re.findall(r"tensor<((?:\d+x)+)[a-z]+\d*>", text):
        if sum(int(d) >= n for d in shape.rstrip("x").split("x")) >= 2:
            found.add(shape.rstrip("x"))
    return found


def calls(text: str, target: str) -> int:
    return len(re.findall(rf'custom_call @{re.escape(target)}\(|call_target_name = "{re.escape(target)}"', text))


@pytest.mark.parametrize("model, per_layer", [("transformer", 1), ("fourier", 1), ("topk", 1)])
@pytest.mark.parametrize("heads", ["2 heads of 16", "4 heads of 4"])
def test_every_softmax_attention_of_a_train_step_is_the_fused_cudnn_call(
        as_if_on_a_gpu, model, per_layer, heads):
    # 4 features per head are Pathfinder's LRA heads: padded to 8 for the kernel
    sets = ["model.qkv_dim=32", "model.num_heads=2"] if heads.startswith("2") else \
        ["model.qkv_dim=16", "model.num_heads=4"]
    text = cuda_program(model, *sets)
    assert calls(text, "__cudnn$fmhaSoftmax") == 2 * per_layer  # forward, each layer
    assert calls(text, "__cudnn$fmhaSoftmaxBackward") == 2 * per_layer
    assert not square_arrays(text, LENGTH // 2), "an N x N array is left"


def test_the_explicit_form_shows_up_in_the_same_check(as_if_on_a_gpu, monkeypatch):
    # what the test above would see if the fused call were refused (or switched off)
    monkeypatch.setenv("LRA_ATTENTION", "explicit")
    text = cuda_program("transformer")
    assert calls(text, "__cudnn$fmhaSoftmax") == 0
    assert "2x2x257x257" in square_arrays(text, LENGTH // 2)


def test_preflight_says_which_form_each_attention_takes(as_if_on_a_gpu):
    from lra_bench.preflight import describe_attention

    with _attention.recording() as forms:
        cuda_program("transformer")
    assert describe_attention(forms) == "fused cuDNN x 2"
    with _attention.recording() as forms:
        cuda_program("transformer", "model.attention_dropout=0.1")
    assert describe_attention(forms).startswith("explicit x 2 (attention dropout: ")
    with _attention.recording() as forms:
        cuda_program("transformer", 'model.dtype="float32"')
    assert describe_attention(forms).startswith("explicit x 2 (float32: the fused kernel takes ")
    with _attention.recording() as forms:
        cuda_program("linear")
    assert describe_attention(forms).startswith("none")


def test_a_train_step_with_attention_dropout_at_4k_holds_no_n_squared_array(as_if_on_a_gpu):
    # LRA's GPU presets train with attention dropout 0.1, which cuDNN's kernel does not take: the
    # attention runs over blocks of keys (online softmax, the mask drawn again in the backward)
    from lra_bench.preflight import describe_attention

    dropout = ("data.max_length=4096", "model.attention_dropout=0.1")
    with _attention.recording() as forms:
        text = cuda_program("transformer", *dropout)
    assert describe_attention(forms).startswith("key blocks x 2 (attention dropout: ")
    assert calls(text, "__cudnn$fmhaSoftmax") == 0
    assert not long_arrays(text, 4097 // 2), "an N x N array is left"
    # the same check sees the explicit form's arrays
    with pytest.MonkeyPatch.context() as m:
        m.setenv("LRA_ATTENTION", "explicit")
        assert "2x2x4097x4097" in long_arrays(cuda_program("transformer", *dropout), 4097 // 2)
