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
import tomllib
from dataclasses import dataclass, field
from typing import Any

from lra_bench import paths, plugins
from lra_bench.errors import UserError

# The value rules (ranges, checks tying keys together) live in config_rules; re-exported here.
from lra_bench.config_rules import (ADDED_KEYS, RANGES, SECTIONS, TRACKERS,  # noqa: F401
                                    check_generated_length,
                                    downsample_problem, in_range, param_group_problem,
                                    range_errors, type_problem, validate)


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


# The data loaders a task's [data] loader may name: the modules of lra_bench/data/ that read or
# make a task's splits (the package's other modules are their machinery).
LOADERS = ("image", "listops", "pathfinder", "retrieval", "synthetic", "text")

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
    if kind == "tasks" and table["loader"] not in LOADERS:
        raise UserError(f"{entry.path or entry.name}: unknown data loader {table['loader']!r}; "
                        f"[data] loader must be one of: {', '.join(LOADERS)}")
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
                why = type_problem(f"{section}.{key}", value)
                if why:
                    raise UserError(f"{where}: {why}")
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
