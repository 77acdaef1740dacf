"""`lra preflight`: compile the step on abstract shapes and say whether it fits in memory."""

from __future__ import annotations

from typing import List, Optional

import typer

from lra_bench import config
from lra_bench.cli.common import out, preset_help, user_errors
from lra_bench.sizes import format_bytes


@user_errors
def preflight_cmd(
    model: str = typer.Option(..., "--model", "-m", help="a name from `lra list models`"),
    task: str = typer.Option(..., "--task", "-t", help="a name from `lra list tasks`"),
    preset: str = typer.Option("smoke", help=preset_help("the task's preset (`lra list tasks`)")),
    set_: List[str] = typer.Option([], "--set", metavar="SECTION.KEY=VALUE",
                                   help="override a config value (repeatable)"),
    mode: str = typer.Option("train", help="train or forward"),
    memory_limit: Optional[str] = typer.Option(
        None, help="check against this much memory, e.g. 16GiB (default: the device's, on CPU "
        "free RAM)"),
):
    """Compile the step on abstract shapes (nothing allocated): estimated peak memory, FLOPs per
    step, and whether it fits. Exit 0 when it fits, 1 when it does not."""
    # jax: loaded when the command runs
    from lra_bench import preflight as pf
    from lra_bench.model import check

    rc = config.resolve(model, task, preset, overrides=set_)
    check(rc, gradient=mode == "train")  # a plugin traced through its step: one line if broken
    step = pf.compile_abstract(rc, mode)
    capacity = pf.device_capacity(memory_limit)
    fits = pf.fits(step, capacity)
    verdict = {True: "fits", False: "DOES NOT FIT", None: "unknown (no estimate or capacity)"}[fits]
    b, length = rc.train["batch_size"], rc.data["max_length"]
    flops = f"{step.flops / 1e9:,.2f} GFLOP" if step.flops else "unknown"
    lines = [
        f"{model}/{task} ({preset} preset), {mode} step, batch {b}, length {length}, "
        f"{step.params:,} parameters",
        f"estimated peak memory  {format_bytes(step.peak_bytes)} (XLA compiled estimate: "
        "temp + arguments + outputs - donated)",
        f"FLOPs per step         {flops} (XLA cost analysis)",
        f"softmax attention      {pf.describe_attention(step.attention)}",
        f"available              {format_bytes(capacity.bytes)} ({capacity.source})",
        f"verdict                {verdict}",
    ]
    if fits is False:
        lines.append(f"to fit: {pf.what_to_change(rc, step, capacity)}")
    out.print("\n".join(lines), highlight=False, markup=False)
    if fits is False:
        raise typer.Exit(1)
