"""A plugin model's mixer checked in a child process, for `lra sweep`, whose parent never imports
jax: a broken plugin becomes one UserError in the parent, before any point runs.

    python -m lra_bench.plugin_check '{"model": ..., "task": ..., "preset": ..., "overrides": [...], "seed": 0, "gradient": true}'

The child traces the model's step on abstract shapes (`lra_bench.model.check`: the forward pass
and, for a train sweep, its gradient) and ends with one `error:` line and exit code 2 when the
mixer breaks its contract or cannot be differentiated.
"""

from __future__ import annotations

import json
import subprocess
import sys

from lra_bench import config
from lra_bench.errors import UserError


def check_in_subprocess(model: str, task: str, preset: str, overrides: list[str], seed: int,
                        env: dict, gradient: bool = True) -> None:
    """Check a plugin model in a child process: its UserError becomes this process's."""
    spec = json.dumps({"model": model, "task": task, "preset": preset, "overrides": overrides,
                       "seed": seed, "gradient": gradient})
    proc = subprocess.run([sys.executable, "-m", "lra_bench.plugin_check", spec],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode == 0:
        return
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    if lines:
        raise UserError(lines[-1][len("error: "):])
    tail = " | ".join(x.strip() for x in proc.stderr.strip().splitlines()[-3:])[-400:]
    raise UserError(f"model '{model}': checking its mixer crashed (exit {proc.returncode}: "
                    f"{tail}); try `lra preflight --model {model} --task {task}`")


def main(argv: list[str]) -> int:
    # Here, not at the top: the model imports jax, which only the child may load.
    from lra_bench.model import check

    spec = json.loads(argv[0])
    try:
        check(config.resolve(spec["model"], spec["task"], spec["preset"], seed=spec["seed"],
                             overrides=spec["overrides"]), gradient=spec.get("gradient", True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
