"""The value rules of a run's config: each numeric setting's valid range and the checks that tie
keys together (`validate`), apart from how the config is layered and resolved (`config`), which
re-exports them. Only types that TOML cannot express are left to these rules."""

from __future__ import annotations

import math
import re
from typing import Any

from lra_bench.errors import UserError

SECTIONS = ("data", "model", "mixer", "train")
# the experiment trackers a run may log to besides TensorBoard (train.log_to, `--log-to`)
TRACKERS = ("wandb", "mlflow")
# keys added after runs were saved with config.json: a saved config without one takes this value
ADDED_KEYS = {("train", "log_to"): []}


# The valid range of every numeric setting that has one, in interval notation ("[" and "]"
# include the bound, "(" and ")" exclude it). A key a config does not have is not checked, so
# loader- and mixer-specific keys can live here too. Rules that tie two keys together are in
# `validate`; a mixer checks its own option choices (see lra_bench.mixers).
# A count or size is at most 2147483647 (2**31 - 1) below: what 32-bit indexing (XLA's, the int32
# tokens) can address, far beyond what any device holds, so a typo of many digits is refused here
# and not by an overflow (or hours of training) later.
RANGES: dict[str, str] = {
    "model.emb_dim": "[1, 2147483647]",
    "model.qkv_dim": "[1, 2147483647]",
    "model.mlp_dim": "[1, 2147483647]",
    "model.num_layers": "[1, 2147483647]",
    "model.num_heads": "[1, 2147483647]",
    "model.dropout": "[0, 1)",
    "model.attention_dropout": "[0, 1)",
    "train.batch_size": "[1, 2147483647]",
    "train.steps": "[1, 2147483647]",
    "train.eval_every": "[1, 2147483647]",
    "train.eval_batches": "[0, 2147483647]",
    "train.log_every": "[1, 2147483647]",
    "train.learning_rate": "(0, inf)",
    "train.warmup_steps": "[0, 2147483647]",
    "train.weight_decay": "[0, inf)",
    "train.b1": "[0, 1)",
    "train.b2": "[0, 1)",
    "train.eps": "[0, inf)",
    "train.grad_clip": "[0, inf)",
    "train.checkpoint_every": "[0, 2147483647]",
    "train.grad_accum": "[1, 2147483647]",
    "model.norm_eps": "(0, inf)",
    "data.max_length": "[1, 2147483647]",
    "data.vocab_size": "[2, inf)",
    "data.num_classes": "[2, inf)",
    "data.num_train": "[0, 2147483647]",
    "data.num_val": "[0, 2147483647]",
    "data.num_test": "[0, 2147483647]",
    "data.num_images": "[0, 2147483647]",
    "data.holdout_fraction": "(0, 1)",
    "data.train_fraction": "(0, 1)",
    "data.min_length": "[1, inf)",
    "data.gen_max_length": "[1, inf)",
    "data.max_depth": "[1, inf)",
    "data.downsample": "[1, inf)",
    "data.max_args": "[1, inf)",
    "mixer.keep_ratio": "(0, 1]",
    "mixer.num_landmarks": "[1, inf)",
    "mixer.pinv_iterations": "[1, inf)",
    "mixer.eps": "(0, inf)",
    "mixer.init_std": "(0, inf)",
}

_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def in_range(value: Any, interval: str) -> bool:
    opening, low, high, closing = _INTERVAL.fullmatch(interval).groups()
    low, high = float(low), float(high)
    above = value >= low if opening == "[" else value > low
    below = value <= high if closing == "]" else value < high
    return above and below


def range_errors(sections: dict[str, dict[str, Any]]) -> list[str]:
    """'section.key = value is outside [a, b)' for every value outside its RANGES entry."""
    out = []
    for key, interval in RANGES.items():
        section, name = key.split(".", 1)
        value = sections.get(section, {}).get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{key} must be a finite number, got {value}")
        elif not in_range(value, interval):
            out.append(f"{key} must be {_describe(interval, value)}, got {value}")
    return out


def type_problem(key: str, value: Any) -> str | None:
    """A value a layer declares (a task's [data], a model's [mixer]: no default to compare its
    type with) that cannot be what its RANGES entry bounds: a count that is not a whole number,
    another setting that is not a number. None when it can, or when the key has no range."""
    interval = RANGES.get(key)
    if interval is None:
        return None
    count = interval.endswith("2147483647]")
    if isinstance(value, bool) or not isinstance(value, int if count else (int, float)):
        return f"'{key}' must be {'a whole number' if count else 'a number'}, got {value!r}"
    return None


def _describe(interval: str, value: float | None = None) -> str:
    """'[1, inf)' -> '>= 1', '(0, inf)' -> '> 0', '[0, 1)' -> 'in [0, 1)'; a count's bound
    '[1, 2147483647]' names the side `value` is on: '>= 1', or '<= 2147483647 (2**31 - 1)'."""
    opening, low, high, _ = _INTERVAL.fullmatch(interval).groups()
    if high == "2147483647":
        if value is not None and value > float(high):
            return f"<= {high} (2**31 - 1, the most a 32-bit count holds)"
        high = "inf"
    if high == "inf":
        return f"{'>=' if opening == '[' else '>'} {low}"
    return f"in {interval}"


def validate(rc) -> None:
    """Value checks that types alone cannot express, on a `config.RunConfig`."""
    m, t, d = rc.model, rc.train, rc.data
    bad = range_errors({s: getattr(rc, s) for s in SECTIONS})
    if bad:
        raise UserError(f"{rc.model_name}/{rc.task_name}: {bad[0]}; change it (--set "
                        f"{bad[0].split(' ')[0]}=...) or fix its TOML")
    checks = [
        (m["qkv_dim"] % m["num_heads"] == 0,
         f"model.qkv_dim ({m['qkv_dim']}) must be a multiple of model.num_heads ({m['num_heads']})"),
        (m["positional"] in ("sinusoidal", "learned", "none"),
         f"model.positional must be sinusoidal, learned or none, got '{m['positional']}'"),
        (m["pooling"] in ("cls", "mean", "first"),
         f"model.pooling must be cls, mean or first, got '{m['pooling']}'"),
        (m["pad_pooling"] in ("exclude", "include", "zero"),
         f"model.pad_pooling must be exclude, include or zero, got '{m['pad_pooling']}'"),
        (m["retrieval_head"] in ("nli", "lra"),
         f"model.retrieval_head must be nli or lra, got '{m['retrieval_head']}'"),
        (m["init"] in ("lecun", "lra"), f"model.init must be lecun or lra, got '{m['init']}'"),
        (m["embed_std"] > 0, f"model.embed_std must be > 0, got {m['embed_std']}"),
        (t["selection"] in ("best_val", "last"),
         f"train.selection must be best_val or last, got '{t['selection']}'"),
        (m["dtype"] in ("float32", "bfloat16"), f"model.dtype must be float32 or bfloat16, got '{m['dtype']}'"),
        (t["batch_size"] % t["grad_accum"] == 0,
         f"train.grad_accum ({t['grad_accum']}) must be > 0 and divide train.batch_size "
         f"({t['batch_size']})"),
        (t["steps"] > 0, f"train.steps must be > 0, got {t['steps']}"),
        (t["eval_every"] > 0 and t["log_every"] > 0, "train.eval_every and train.log_every must be > 0"),
        (t["schedule"] in ("rsqrt", "cosine", "constant", "onecycle"),
         f"train.schedule must be rsqrt, cosine, constant or onecycle, got '{t['schedule']}'"),
        (t["schedule"] != "onecycle" or 1 < t["warmup_steps"] < t["steps"],
         "train.schedule = onecycle needs 1 < train.warmup_steps < train.steps"),
        (not t["cycle_momentum"] or t["schedule"] == "onecycle",
         "train.cycle_momentum cycles b1 with the onecycle schedule; set train.schedule=onecycle "
         "or train.cycle_momentum=false"),
        (t["cosine_period"] in ("remaining", "total"),
         f"train.cosine_period must be remaining or total, got '{t['cosine_period']}'"),
        (m["gelu"] in ("tanh", "exact"), f"model.gelu must be tanh or exact, got '{m['gelu']}'"),
        (m["norm"] in ("layer", "batch"), f"model.norm must be layer or batch, got '{m['norm']}'"),
        (m["mlp"] in ("gelu", "glu", "none"),
         f"model.mlp must be gelu, glu or none, got '{m['mlp']}'"),
        (0.0 <= m["bn_momentum"] < 1.0, f"model.bn_momentum must be in [0, 1), got {m['bn_momentum']}"),
        # With the test split as validation, the best-validation parameters are chosen on test.
        (d.get("validation") != "test" or t["selection"] == "last",
         "data.validation = test makes the test split the validation split, so "
         "train.selection = best_val would select on test; set train.selection=last or "
         "data.validation=holdout"),
        (t["learning_rate"] > 0, "train.learning_rate must be > 0"),
        (t["checkpoint_every"] >= 0, "train.checkpoint_every must be >= 0 (0 = only at the end)"),
        (d.get("max_length", 1) > 0, "data.max_length must be > 0"),
        (all(x in TRACKERS for x in t["log_to"]) and len(set(t["log_to"])) == len(t["log_to"]),
         f"train.log_to must list each of {', '.join(TRACKERS)} at most once, got {t['log_to']}"),
    ]
    groups = param_group_problem(t["param_groups"])
    checks.append((groups is None, groups))
    downsample = downsample_problem(d)
    checks.append((downsample is None, downsample))
    for ok, msg in checks:
        if not ok:
            raise UserError(f"{rc.model_name}/{rc.task_name}: {msg}")


def param_group_problem(groups: list) -> str | None:
    """What is wrong with train.param_groups, or None (see defaults.toml)."""
    for i, g in enumerate(groups):
        where = f"train.param_groups[{i}]"
        if not isinstance(g, dict):
            return f"{where} must be a table {{match = [...], learning_rate = ..., weight_decay = ...}}"
        extra = sorted(set(g) - {"match", "learning_rate", "weight_decay"})
        if extra:
            return f"{where}: unknown keys {extra}; a group has match, learning_rate, weight_decay"
        match = g.get("match")
        if not (isinstance(match, list) and match and all(isinstance(p, str) for p in match)):
            return f"{where}.match must be a non-empty list of parameter path patterns"
        lr, wd = g.get("learning_rate", 1.0), g.get("weight_decay", 0.0)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
            return f"{where}.learning_rate must be a number >= 0, got {lr!r}"
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
            return f"{where}.weight_decay must be a number >= 0, got {wd!r}"
    return None


def downsample_problem(data: dict[str, Any]) -> str | None:
    """An image task's `data.downsample = k` averages k x k pixel blocks: k must divide the image
    side, and the sequence length and grid must be those of the smaller image, so that a config
    which does not add up stops before any data is drawn or prepared."""
    k = data.get("downsample", 1)
    if k == 1 or not isinstance(k, int) or k < 1:  # off, or a type / range error named elsewhere
        return None
    side = data.get("resolution", 32)  # Pathfinder names its side; CIFAR-10 (Image) is 32 x 32
    if side % k:
        return f"data.downsample ({k}) must divide the image side ({side})"
    n = side // k
    sets = f"--set data.max_length={n * n} --set 'data.grid=[{n}, {n}]'"
    if data.get("max_length") != n * n or list(data.get("grid", [n, n])) != [n, n]:
        return (f"data.downsample = {k} makes {side} x {side} images {n} x {n} = {n * n} tokens; "
                f"data.max_length ({data.get('max_length')}) and data.grid "
                f"({data.get('grid')}) must match: {sets}")
    return None


def check_generated_length(data: dict[str, Any]) -> None:
    """A generator must not make sequences longer than the model reads: they would be cut.
    (Checked by `lra data prepare` before it generates: only a generating loader reads
    data.gen_max_length; the synthetic loader, say, does not.)"""
    if data.get("gen_max_length", 0) > data["max_length"]:
        raise UserError(f"data.gen_max_length ({data['gen_max_length']}) exceeds data.max_length "
                        f"({data['max_length']}): generated sequences would be cut; also set "
                        f"data.gen_max_length={data['max_length']}")
