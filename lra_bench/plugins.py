"""Users' own mixers, from any installed package, without forking lra-bench.

A model's `[mixer] kind` names one of
  - a built-in mixer: a module in `lra_bench/mixers/` (its name wins over any plugin's);
  - an entry point in the group `lra_bench.mixers` (name = "module:Class"), which also makes a
    model of the same name with the mixer's default options, listed by `lra list`;
  - a class directly, "package.module:Class", importable by the Python that runs `lra`.

A plugin mixer has the built-ins' contract (see `lra_bench.mixers`): an `nnx.Module` built as
`Class(spec: MixerSpec, *, rngs, **options)` and called as `(x, mask, *, deterministic, rngs) ->
(y, mask)`, optionally with `residual_stream` / `after_block`. Anything a plugin gets wrong
(import, class, signature, output shape or dtype, an exception while tracing) becomes one
UserError line naming the plugin, the place and the fix. This module imports neither jax nor
flax at import time: `lra list` and the sweep's parent process use it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import os
import traceback
from contextlib import contextmanager
from typing import Any

from lra_bench import paths
from lra_bench.errors import UserError

GROUP = "lra_bench.mixers"
CONTRACT = "see docs/plugins.md for the mixer contract"

SIGNATURES = {"__init__": "(self, spec, *, rngs, **options)",
              "__call__": "(self, x, mask, *, deterministic, rngs) -> (y, mask)",
              "residual_stream": "(self, x, h, mask) -> x",
              "after_block": "(self, x, mask) -> (x, mask)"}

# Plugin mixer classes built in this process -> the label their errors carry.
_LABELS: dict[type, str] = {}


def builtin_kinds() -> list[str]:
    """The built-in mixers' names, read from the folder so that nothing is imported."""
    folder = paths.PACKAGE_DIR / "mixers"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


# Installed distributions whose entry_points.txt cannot be read (named in "unknown kind" errors).
_unreadable: set[str] = set()


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed `lra_bench.mixers` entry points by name (first on sys.path wins). One
    distribution's malformed entry_points.txt, which makes importlib.metadata.entry_points()
    raise, skips that distribution only."""
    out: dict[str, importlib.metadata.EntryPoint] = {}
    for dist in importlib.metadata.distributions():
        try:
            eps = [ep for ep in dist.entry_points if ep.group == GROUP]
        except Exception:  # noqa: BLE001 -- someone else's broken metadata
            _unreadable.add(str(getattr(dist, "_path", "?")))
            continue
        for ep in eps:
            out.setdefault(ep.name, ep)
    return dict(sorted(out.items()))


def _dist(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


def default_models() -> dict[str, tuple[str, dict]]:
    """One model per entry point, named like it, with the mixer's default options: name ->
    (where it comes from, its document as a model TOML would hold it)."""
    builtin = set(builtin_kinds())
    out = {}
    for name, ep in entry_points().items():
        # A plugin named like a built-in mixer is reached through its class, never by its name.
        kind = ep.value if name in builtin else name
        doc = {"description": f"mixer plugin {ep.value} with its default options",
               "mixer": {"kind": kind}}
        out[name] = (f"plugin {_dist(ep)}", doc)
    return out


def is_plugin(kind) -> bool:
    return kind not in builtin_kinds()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _where(e: BaseException) -> str:
    """' at file:line' of the innermost frame outside jax, flax and lra-bench: the plugin's."""
    skip = (f"{paths.PACKAGE_DIR}{os.sep}", f"{os.sep}jax{os.sep}", f"{os.sep}flax{os.sep}",
            f"{os.sep}jaxlib{os.sep}", f"{os.sep}importlib{os.sep}", "<frozen ")
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not any(s in f.filename for s in skip)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def declared_defaults(kind: str) -> dict[str, Any]:
    """The options a plugin mixer's `__init__` declares with literal defaults (`gate: bool =
    True` -> {"gate": True}), read from its source without running it: `lra list` shows an entry
    point's model with its defaults and never imports a plugin. {} when the source cannot be
    found or read (a compiled module, a class made at run time): the column is then empty."""
    eps = entry_points() if ":" not in str(kind) else {}
    target = kind if ":" in str(kind) else getattr(eps.get(kind), "value", "")
    module_name, _, attr = target.partition(":")
    try:
        # PathFinder locates each package's folder without running its __init__
        spec, locations = None, None
        for i, part in enumerate(module_name.strip().split(".")):
            name = ".".join(module_name.strip().split(".")[:i + 1])
            spec = importlib.machinery.PathFinder.find_spec(name, locations)
            locations = spec.submodule_search_locations if spec else None
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    except Exception:  # noqa: BLE001 -- not found or not Python source: nothing to show
        return {}
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == attr.strip()),
               None)
    init = next((n for n in (cls.body if cls else []) if isinstance(n, ast.FunctionDef)
                 and n.name == "__init__"), None)
    if init is None:
        return {}
    a = init.args
    named = list(zip(a.args[len(a.args) - len(a.defaults):], a.defaults)) + [
        (arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    out = {}
    for arg, default in named:
        if arg.arg in ("self", "spec", "rngs"):
            continue
        try:
            out[arg.arg] = ast.literal_eval(default)
        except ValueError:
            continue  # a default computed at run time: not shown
    return out


def mixer_class(kind: str) -> tuple[type, str]:
    """The class a non-built-in `kind` names, and the label its errors carry."""
    if not isinstance(kind, str):
        raise UserError(f"[mixer] kind must be a string, got {kind!r}")
    if ":" in kind:
        target, label = kind, f"mixer '{kind}'"
        fix = "fix [mixer] kind (\"package.module:Class\") or install the package"
    else:
        eps = entry_points()
        if kind not in eps:
            known = builtin_kinds() + [n for n in eps if n not in builtin_kinds()]
            unreadable = (f" (unreadable entry_points.txt: {', '.join(sorted(_unreadable))})"
                          if _unreadable else "")
            raise UserError(f"unknown mixer kind '{kind}'; choose one of: {', '.join(known)}, "
                            f"or name a class as \"package.module:Class\"{unreadable}")
        ep = eps[kind]
        target = ep.value
        label = f"mixer plugin '{kind}' ({target}, from {_dist(ep)})"
        fix = f"fix the '{kind}' entry point in group {GROUP} of {_dist(ep)}'s pyproject.toml"
    module_name, _, attr = target.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise UserError(f"{label}: '{target}' is not \"module:Class\"; {fix}")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- any failure to import is the plugin's
        raise UserError(f"{label}: cannot import {module_name} ({type(e).__name__}"
                        f"{_where(e)}: {_first_line(e)}); fix or install it, or {fix}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{label}: module {module_name} has no '{attr}'; {fix}")
        obj = getattr(obj, part)
    from flax import nnx  # here, not at the top: `lra list` and the sweep's parent never load flax

    if not (isinstance(obj, type) and issubclass(obj, nnx.Module)):
        raise UserError(f"{label}: {attr} is not a flax.nnx.Module subclass; a mixer is an "
                        f"nnx.Module ({CONTRACT})")
    return obj, label


def build(kind: str, spec, options: dict[str, Any], rngs):
    """Construct a plugin mixer as the built-ins are: Class(spec, rngs=rngs, **options)."""
    cls, label = mixer_class(kind)
    try:
        inspect.signature(cls.__init__).bind(None, spec, rngs=rngs, **options)
    except TypeError as e:
        raise UserError(f"{label}: cannot build {cls.__name__}(spec, rngs=..., "
                        f"{', '.join(f'{k}=...' for k in sorted(options))}) ({e}); its __init__ "
                        "must take (self, spec, *, rngs, **options) and the model's [mixer] "
                        "options") from None
    except ValueError:
        pass  # no signature to inspect (a C type): let the call below tell
    _LABELS[cls] = label
    with blame(cls, "__init__"):
        return cls(spec, rngs=rngs, **options)


@contextmanager
def blame(mixer, method: str):
    """Turn an exception a plugin raises in `method` into one line naming it (built-ins keep
    their tracebacks: their failures are lra-bench's bugs)."""
    label = _LABELS.get(mixer if isinstance(mixer, type) else type(mixer))
    if label is None:
        yield
        return
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- whatever the plugin raised, say where
        raise UserError(f"{label}: {method} raised {type(e).__name__}{_where(e)}: "
                        f"{_first_line(e)}; fix the mixer (it must be {method}"
                        f"{SIGNATURES[method]}; {CONTRACT})") from None


@contextmanager
def blame_gradient(kind: str):
    """A failure while tracing a plugin model's train step that no `blame` caught (those are
    UserErrors already) is its gradient's: the forward pass traced, reverse mode did not."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- the rest of the model differentiates; the mixer not
        _, label = mixer_class(kind)
        raise UserError(f"{label}: its gradient cannot be traced ({type(e).__name__}"
                        f"{_where(e)}: {_first_line(e)}); a mixer must be differentiable by "
                        "jax.grad (reverse mode), e.g. lax.scan or lax.fori_loop with static "
                        f"bounds instead of lax.while_loop ({CONTRACT})") from None


def _fmt(a) -> str:
    return f"{getattr(a, 'dtype', '?')}{list(getattr(a, 'shape', '?'))}"


def check_output(mixer, x, out):
    """A plugin's `(y, mask)` against the contract, at trace time (free: shapes are static)."""
    label = _LABELS.get(type(mixer))
    if label is None:
        return out
    shortens = hasattr(mixer, "residual_stream")
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise UserError(f"{label}: __call__ returned {type(out).__name__}; it must return the "
                        f"tuple (y, mask) ({CONTRACT})")
    y, mask = out
    b, n, d = x.shape
    ok_shape = getattr(y, "shape", None) == x.shape or (
        shortens and len(getattr(y, "shape", ())) == 3 and y.shape[0] == b and y.shape[2] == d)
    if not ok_shape:
        want = f"(batch, length <= {n}, {d})" if shortens else f"{list(x.shape)}, the shape of x"
        raise UserError(f"{label}: __call__ returned y {_fmt(y)} for x {_fmt(x)}; y must be "
                        f"{want}" + ("" if shortens else " (a mixer that shortens the sequence "
                                     "defines residual_stream)") + f" ({CONTRACT})")
    if y.dtype != x.dtype:
        raise UserError(f"{label}: __call__ returned y {_fmt(y)} for x {_fmt(x)}; return y in "
                        f"x's dtype ({CONTRACT})")
    if getattr(mask, "shape", None) != y.shape[:2] or str(getattr(mask, "dtype", "")) != "bool":
        raise UserError(f"{label}: __call__ returned mask {_fmt(mask)} for y {_fmt(y)}; the mask "
                        f"must be bool of shape (batch, y's length) ({CONTRACT})")
    return out
