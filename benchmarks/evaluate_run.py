"""Evaluate a finished run's parameters on another sample of its task: the best-validation and the
last parameters of its newest checkpoint, on the val and test splits of data prepared with other
`data.*` settings (docs/reproduce.md, "How far one test split moves a figure").

    python benchmarks/evaluate_run.py results/runs/<run id> --data-dir data-seed1 \
        --set data.generate_seed=1 --set data.num_train=1000 --set data.num_test=10000

A ListOps test split of 2,000 rows gives an accuracy near 37% a standard error of about 1.1
points; a fresh, larger sample from the same generator says how much of a difference to a
published figure is the model and how much the rows drawn. The data must be prepared first
(`lra data prepare TASK --preset P --set ...` with the same settings); the model, the training
settings and the evaluation's batch and `eval_drop_remainder` are the run's own.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lra_bench import config, data, results, trainer  # noqa: E402
from lra_bench.checkpoint import Checkpoints  # noqa: E402
from lra_bench.data.pipeline import evaluated_rows  # noqa: E402
from lra_bench.errors import UserError  # noqa: E402


def run_config(run_dir: Path, sets: list[str]) -> config.RunConfig:
    """The run's saved config with `data.*` overrides on top; anything else would evaluate
    another model than the one the checkpoint holds."""
    if not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} has no config.json: pass a run folder (results/runs/<run id>)")
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir} has no checkpoints: only a run with its checkpoints can be "
                        "evaluated again")
    bad = [s for s in sets if not s.startswith("data.")]
    if bad:
        raise UserError(f"--set {bad[0]}: only data.* settings can change (the model and its "
                        "training are the run's)")
    doc = json.loads((run_dir / "config.json").read_text())
    saved = results.saved_config(doc, run_dir.name)
    rc = config.resolve(saved.model_name, saved.task_name, saved.preset, seed=saved.seed,
                        overrides=[*saved.overrides, *sets])
    # the run's own sections (a run saved before a key was added keeps its values)
    return config.RunConfig(rc.model_name, rc.task_name, rc.preset, rc.seed, overrides=rc.overrides,
                            **{s: (getattr(rc, s) if s == "data" else getattr(saved, s))
                               for s in config.SECTIONS})


def interval(accuracy: float, n: int) -> float:
    """Half-width of the normal 95% interval of an accuracy measured on n rows."""
    return 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1))


def evaluate(run_dir: Path, data_dir: Path, sets: list[str], splits=("val", "test")) -> list[dict]:
    rc = run_config(run_dir, sets)
    loaded = data.load(rc, data_dir)
    steps = trainer.build(rc)
    ckpt = Checkpoints(run_dir)
    try:
        restored = ckpt.restore(steps.init_state)
    finally:
        ckpt.close()
    if restored is None:
        raise UserError(f"{run_dir}: its checkpoints folder holds no checkpoint")
    state, best_params, progress = restored
    state = steps.data_parallel.replicate(state)
    params = {"best": steps.data_parallel.replicate(best_params), "last": state["params"]}
    t = rc.train
    size = t["batch_size"] // t["grad_accum"]
    rows = []
    for split in splits:
        rows_of_split = evaluated_rows(loaded[split], t)
        for which, p in params.items():
            out = trainer.evaluate(steps, p, state["rest"], rows_of_split, size)
            rows.append({"split": split, "parameters": which,
                         "step": progress["best_step"] if which == "best" else int(state["step"]),
                         "accuracy": out["accuracy"], "examples": out["examples"],
                         "ci95": interval(out["accuracy"], out["examples"])})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="data.KEY=VALUE")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        rows = evaluate(args.run_dir, args.data_dir, args.sets)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r['split']:5} {r['parameters']:4} (step {r['step']:>6}): "
              f"{100 * r['accuracy']:6.2f}% +- {100 * r['ci95']:.2f} on {r['examples']} rows")
    if args.out:
        args.out.write_text(json.dumps({"run": args.run_dir.name, "sets": args.sets,
                                        "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
