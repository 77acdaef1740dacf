"""Pictures of a sweep: step time and peak memory against sequence length, log-log, one line per
model, OOM points marked above the curves. Rendered headless (matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lra_bench.errors import UserError
from lra_bench.sizes import unit_for

PANELS = (("step_time_ms", "time per step (ms)", 1.0),
          ("peak_memory_bytes", "peak memory ({unit})", None))  # None: the unit fits the data


def _length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def plot_sweep(df: pd.DataFrame, path: Path, title: str, baseline: str = "transformer") -> Path:
    """df: sweep rows (model, length, status, step_time_ms, peak_memory_bytes, ...)."""
    # matplotlib: slow to import, and its backend is a setting of the whole process, chosen when
    # a picture is drawn, not when this module is imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot only once the backend is chosen
    from matplotlib.ticker import FuncFormatter, LogLocator

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--plot {path}: give a .png path, e.g. --plot sweep.png")
    lengths = sorted(int(n) for n in df["length"].unique())
    models = list(dict.fromkeys(df["model"]))
    models = ([baseline] if baseline in models else []) + [m for m in models if m != baseline]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    any_oom = (df["status"] == "OOM").any()
    for ax, (column, label, scale) in zip(axes, PANELS):
        values = pd.to_numeric(df[column], errors="coerce")
        if scale is None:  # the unit that shows the largest point as 1 or more: MiB, not 0.001 GiB
            unit, scale = unit_for(values.max() if values.notna().any() else 0)
            label = label.format(unit=unit)
        values = values / scale
        ok = df.assign(value=values)[(df["status"] == "OOM").eq(False) & values.gt(0)]
        ok = ok[ok["status"] == "ok"]
        top = ok["value"].max() if len(ok) else 1.0
        bottom = ok["value"].min() if len(ok) else 1.0
        # OOM points have no value: they sit in a band above every measured point, one row
        # per model, in the model's colour.
        band = top * 2.0
        step = max(top / bottom, 4.0) ** 0.12
        for i, model in enumerate(models):
            mine = ok[ok["model"] == model].sort_values("length")
            (line,) = ax.plot(mine["length"], mine["value"], marker="o", label=model)
            ooms = df[(df["model"] == model) & (df["status"] == "OOM")]["length"].astype(int)
            if len(ooms):
                ax.scatter(ooms, [band * step ** (i + 0.5)] * len(ooms), marker="X", s=70,
                           color=line.get_color(), zorder=3)
        if len(ok):
            # Guides through the smallest first point: linear and quadratic growth in length.
            first = ok[ok["length"] == ok["length"].min()]["value"].min()
            x = np.geomspace(lengths[0], lengths[-1], 64)
            for power, style in ((1, "--"), (2, "-.")):
                y = first * (x / x[0]) ** power
                y[y > band] = np.nan  # stop at the OOM band
                ax.plot(x, y, style, color="0.6", lw=1, label="∝ L" if power == 1 else "∝ L²")
        upper = band * step ** (len(models) + 0.5) if any_oom else top * 1.5
        if any_oom:
            ax.axhspan(band, upper, color="0.93", zorder=0)
            ax.text(0.01, 0.985, "out of memory", transform=ax.transAxes, va="top", fontsize=8,
                    color="0.35")
            ax.scatter([], [], marker="X", s=70, color="0.3", label="OOM")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [_length_label(n) for n in lengths])
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=min(bottom, first if len(ok) else bottom) / 1.5, top=upper)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 8), fontsize=8)
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CURVE_PANELS = (("val_accuracy", "validation accuracy (%)"), ("train_loss", "training loss"))


def plot_curves(curves: pd.DataFrame, path: Path, title: str,
                baselines: dict[tuple[str, str], tuple[float, str]] | None = None) -> Path:
    """Learning curves: one row of panels per (preset, task), validation accuracy and training
    loss against step; one line per model (the mean over seeds) with a min-max band over seeds;
    a majority-class share (%) as a dashed line on the accuracy panel.

    curves: preset, model, task, seed, step, train_loss, val_accuracy (%);
    baselines: (preset, task) -> (majority share (%), the split it is of: "validation" or "test")."""
    # matplotlib: as in plot_sweep
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot only once the backend is chosen

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--curves {path}: give a .png path, e.g. --curves curves.png")
    if curves.empty:
        raise UserError("no learning curves to draw: the selected runs have no metrics.jsonl; "
                        "train one with: lra run --model transformer --task listops --preset quick")
    baselines = baselines or {}
    groups = list(curves.groupby(["preset", "task"], sort=True))
    models = sorted(curves["model"].unique())
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.8 * len(groups) + 1.3),
                             squeeze=False, constrained_layout=True)
    for row, ((preset, task), data) in zip(axes, groups):
        seeds = data.groupby("model")["seed"].nunique()
        for ax, (column, label) in zip(row, CURVE_PANELS):
            for model in models:
                mine = data[data["model"] == model].dropna(subset=[column])
                if mine.empty:
                    continue
                stats = mine.groupby("step")[column].agg(["mean", "min", "max"]).sort_index()
                n = int(seeds.get(model, 1))
                ax.plot(stats.index, stats["mean"], color=colours[model], lw=1.6,
                        label=f"{model} (mean of {n} seed{'s' if n != 1 else ''})")
                if n > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"],
                                    color=colours[model], alpha=0.18, lw=0)
            heading = f"{task} ({preset} preset): {label}"
            if column == "val_accuracy" and (preset, task) in baselines:
                chance, split = baselines[(preset, task)]
                ax.axhline(chance, color="0.25", ls="--", lw=1.2,
                           label=f"majority class of the {split} split")
                heading += f"\ndashed: majority class of the {split} split, {chance:.1f}%"
            ax.set_title(heading, fontsize=10)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
    # One legend for the figure, below the panels, so it never covers a curve.
    labels = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(text, handle)
    fig.legend(labels.values(), labels.keys(), loc="outside lower center", fontsize=8,
               ncol=min(len(labels), 4))
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
