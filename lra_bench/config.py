"""Configs are data: a run's config is the merge of TOML layers, validated key by key.

Layers, later wins:
  1. lra_bench/defaults.toml              declares every [model] and [train] key
  2. tasks/<task>.toml                    declares [data]; overrides [model] / [train]
  3. tasks/<task>.toml [presets.<p>]      per-preset overrides (e.g. `lra`, `smoke`)
  4. models/<model>.toml                  declares [mixer]; may override [model] / [train]
  5. models/<model>.toml [presets.<p>], [tasks.<task>], [tasks.<task>.presets.<p>]
  6. --set section.key=value              from the command line

Only the declaring layer may add keys to a section; every later layer may only change them, and
only with a value of the same type. That makes a typo anywhere an error that names the valid keys.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from lra_bench import paths, plugins
from lra_bench.errors import UserError

SECTIONS = ("data", "model", "mixer", "train")


@dataclass(frozen=True)
class RunConfig:
    model_name: str
    task_name: str
    preset: str
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]
    mixer: dict[str, Any]
    train: dict[str, Any]
    overrides: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "task_name": self.task_name,
            "preset": self.preset,
            "seed": self.seed,
            "overrides": list(self.overrides),
            **{s: copy.deepcopy(getattr(self, s)) for s in SECTIONS},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(
            model_name=d["model_name"],
            task_name=d["task_name"],
            preset=d["preset"],
            seed=d["seed"],
            overrides=tuple(d.get("overrides", ())),
            **{s: dict(d[s]) for s in SECTIONS},
        )


def _read_toml(path) -> dict[str, Any]:
    """`path`: a Path or an importlib.resources Traversable (the configs packed in a wheel)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: malformed TOML ({e}); fix the file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as "
                        "UTF-8") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a TOML file; rename or remove it") from None


@dataclass(frozen=True)
class Entry:
    """Where a task or model comes from: a TOML file, or a mixer plugin's default model."""

    name: str
    source: str  # a config folder, LRA_HOME, built-in, or "plugin <distribution>"
    path: Any = None  # the TOML file (Path or Traversable); None for a plugin's default model
    doc: dict[str, Any] | None = None  # the plugin's default model


def available(kind: str) -> dict[str, Entry]:
    """Registered tasks or models by name, sorted: the first config root holding a name wins
    (see lra_bench.paths); every `lra_bench.mixers` entry point that no TOML names is a model
    of its own, with the mixer's default options."""
    found: dict[str, Entry] = {}
    for root in paths.config_roots():
        folder = root.path / kind
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            stem = p.name[:-len(".toml")]
            if p.name.endswith(".toml") and stem not in found:
                found[stem] = Entry(stem, root.source, p)
    if kind == "models":
        for name, (source, doc) in plugins.default_models().items():
            found.setdefault(name, Entry(name, source, None, doc))
    return dict(sorted(found.items()))


# What a task or model TOML must declare for anything to read it.
REQUIRED = {"tasks": ("data", ("loader", "max_length", "vocab_size", "num_classes")),
            "models": ("mixer", ("kind",))}


def _file(kind: str, name: str) -> str:
    """The file a task or model comes from, as an error names it: the built-in ones by their
    folder (tasks/listops.toml), a --config-dir or $LRA_CONFIG_PATH one by its path."""
    entry = available(kind).get(name)
    if entry is None or entry.path is None or entry.source in ("built-in", "LRA_HOME"):
        return f"{kind}/{name}.toml"
    return str(entry.path)


def load_spec(kind: str, name: str) -> dict[str, Any]:
    found = available(kind)
    if name not in found:
        noun = kind[:-1]
        if not found:
            folder = paths.tasks_dir() if kind == "tasks" else paths.models_dir()
            raise UserError(f"no {kind} in {folder}; add a <name>.toml there (or set LRA_HOME to "
                            "an lra-bench checkout)")
        raise UserError(f"unknown {noun} '{name}'; choose one of: {', '.join(found)}")
    entry = found[name]
    doc = copy.deepcopy(entry.doc) if entry.path is None else _read_toml(entry.path)
    section, keys = REQUIRED[kind]
    table = doc.get(section)
    missing = [k for k in keys if k not in table] if isinstance(table, dict) else None
    if missing is None or missing:
        what = f"a [{section}] table" if missing is None else f"[{section}] {', '.join(missing)}"
        raise UserError(f"{entry.path or entry.name}: lacks {what} (every {kind[:-1]} declares "
                        f"[{section}] {', '.join(keys)}); fix or remove the file")
    return doc


def _same_type(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    return isinstance(new, type(old))


def _apply(cfg: dict, layer: dict, where: str, declares: tuple[str, ...] = ()) -> None:
    for section, values in layer.items():
        if section not in SECTIONS:
            continue  # metadata (name, description, presets, tasks) is not config
        if not isinstance(values, dict):
            raise UserError(f"{where}: [{section}] must be a table")
        target = cfg[section]
        for key, value in values.items():
            if section in declares:
                target[key] = value
                continue
            if key not in target:
                valid = ", ".join(sorted(target)) or "(none)"
                raise UserError(
                    f"{where}: unknown key '{section}.{key}'; valid {section} keys: {valid}"
                )
            if not _same_type(target[key], value):
                raise UserError(
                    f"{where}: '{section}.{key}' must be {type(target[key]).__name__}, "
                    f"got {value!r}"
                )
            target[key] = float(value) if isinstance(target[key], float) else value


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.steps=10' -> ('train', 'steps', 10); values are TOML literals, else strings."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set '{text}': expected section.key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    if section not in SECTIONS:
        raise UserError(f"--set '{text}': unknown section '{section}'; use one of {', '.join(SECTIONS)}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


def _layers(doc: dict, task: str | None, preset: str) -> list[tuple[str, dict]]:
    out = [("", doc), (f"[presets.{preset}]", doc.get("presets", {}).get(preset, {}))]
    if task is not None:
        per_task = doc.get("tasks", {}).get(task, {})
        out += [
            (f"[tasks.{task}]", per_task),
            (f"[tasks.{task}.presets.{preset}]", per_task.get("presets", {}).get(preset, {})),
        ]
    return out


def _check_preset(task: str, task_doc: dict, preset: str) -> None:
    presets = sorted(task_doc.get("presets", {}))
    if preset not in presets:
        choices = ", ".join(presets) or "(none: add a [presets.<name>] table to its TOML)"
        raise UserError(f"task '{task}' has no preset '{preset}'; choose one of: {choices}")


def resolve(
    model: str,
    task: str,
    preset: str = "smoke",
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
    steps: int | None = None,
) -> RunConfig:
    task_doc = load_spec("tasks", task)
    model_doc = load_spec("models", model)
    _check_preset(task, task_doc, preset)

    cfg: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    _apply(cfg, _read_toml(paths.PACKAGE_DIR / "defaults.toml"), "defaults.toml", ("model", "train"))
    for label, layer in _layers(task_doc, None, preset):
        _apply(cfg, layer, f"{_file('tasks', task)}{label}", ("data",) if not label else ())
    for label, layer in _layers(model_doc, task, preset):
        _apply(cfg, layer, f"{_file('models', model)}{label}", ("mixer",) if not label else ())
    if "kind" not in cfg["mixer"]:
        raise UserError(f"{_file('models', model)}: [mixer] needs a 'kind' (the mixer module's "
                        "name)")

    if steps is not None:  # recorded like any --set
        overrides = [*overrides, f"train.steps={steps}"]
    sets: dict[str, dict[str, Any]] = {}
    for text in overrides:
        section, name, value = parse_override(text)
        sets.setdefault(section, {})[name] = value
    _apply(cfg, sets, "--set")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    rc = RunConfig(model, task, preset, seed, overrides=tuple(overrides), **cfg)
    validate(rc)
    return rc


def resolve_data(task: str, preset: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The [data] table of a task preset (layers 2, 3 and data.* --set overrides): what
    `lra data prepare` needs, without a model."""
    task_doc = load_spec("tasks", task)
    _check_preset(task, task_doc, preset)
    cfg: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for label, layer in _layers(task_doc, None, preset):
        data = {"data": layer["data"]} if "data" in layer else {}
        _apply(cfg, data, f"{_file('tasks', task)}{label}", ("data",) if not label else ())
    sets: dict[str, dict[str, Any]] = {}
    for text in overrides:
        section, name, value = parse_override(text)
        if section != "data":
            raise UserError(f"--set '{text}': only data.* settings affect prepared data")
        sets.setdefault(section, {})[name] = value
    _apply(cfg, sets, "--set")
    bad = range_errors(cfg)
    if bad:
        raise UserError(f"{task}: {bad[0]}; change it (--set {bad[0].split(' ')[0]}=...) or "
                        "fix its TOML")
    problem = downsample_problem(cfg["data"])
    if problem:
        raise UserError(f"{task}: {problem}")
    return cfg["data"]


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


def validate(rc: RunConfig) -> None:
    """Value checks that types alone cannot express."""
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
        (m["mlp"] in ("gelu", "none"), f"model.mlp must be gelu or none, got '{m['mlp']}'"),
        (0.0 <= m["bn_momentum"] < 1.0, f"model.bn_momentum must be in [0, 1), got {m['bn_momentum']}"),
        # With the test split as validation, the best-validation parameters are chosen on test.
        (d.get("validation") != "test" or t["selection"] == "last",
         "data.validation = test makes the test split the validation split, so "
         "train.selection = best_val would select on test; set train.selection=last or "
         "data.validation=holdout"),
        (t["learning_rate"] > 0, "train.learning_rate must be > 0"),
        (t["checkpoint_every"] >= 0, "train.checkpoint_every must be >= 0 (0 = only at the end)"),
        (d.get("max_length", 1) > 0, "data.max_length must be > 0"),
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
