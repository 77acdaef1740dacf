"""`lra report --html DIR`: the report as a static site that opens from file://.

Another renderer of the tables `lra report` prints (`leaderboard`, the published blocks, the run
list), with the learning curves and sweeps as matplotlib PNGs beside the pages, a page per run
(its config, summary, curves and the command that runs it again), the machine and versions
behind each number, and the protocol and fidelity notes that apply. The site is built in a
hidden folder beside DIR and moved into place whole, so a failure leaves no half-written site.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from lra_bench import __version__, paths, plots, records, reproduced, sweep, sweep_report
from lra_bench.errors import UserError
from lra_bench.report.cells import run_rows
from lra_bench.report.curves import chance_lines, learning_curves
from lra_bench.report.html_page import (GENERATOR, esc, href, key_values, page, prose,
                                        svg_chart, table)
from lra_bench.report.published import protocols
from lra_bench.report.runs import KEYS, filter_runs, finished_runs, normalise, runs_table
from lra_bench.report.shown import leaderboard

NAV = [("Leaderboard", "index.html#leaderboard"), ("Published", "index.html#published"),
       ("Curves", "index.html#curves"), ("Efficiency", "index.html#efficiency"),
       ("Sweeps", "index.html#sweeps"), ("Runs", "index.html#runs"),
       ("Machines", "index.html#machines"), ("Notes", "index.html#notes")]
FIDELITY = paths.PACKAGE_DIR.parent / "docs" / "fidelity.md"
TASK_WORDS = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
              "pathfinder": "Pathfinder", "pathx": "Path-X"}
# What each number was measured with: shown per (preset, model, task) and on every run page.
PROVENANCE = (("device_kind", "device"), ("platform", "platform"), ("device_count", "devices"),
              ("host", "host"), ("jax_version", "jax"), ("flax_version", "flax"),
              ("git_commit", "commit"), ("dtype", "dtype"))


def _is_ours(folder: Path) -> bool:
    index = folder / "index.html"
    try:
        return index.is_file() and GENERATOR in index.read_text(errors="replace")[:2000]
    except OSError:
        return False


def check_target(out_dir: Path) -> Path:
    """The site's folder as an absolute path; a UserError, before anything is printed or
    written, when it cannot hold the site: a file, under a file, not writable, or a folder
    that holds something other than an earlier report (which the new one replaces)."""
    given = out_dir
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"--html {given} is a file; give a folder for the site, e.g. "
                        f"--html {given}-site")
    probe = out.parent if out.exists() else out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--html {given}: {probe} is a file, not a folder; give another folder")
    # os.access alone says yes to root on a read-only mount or /proc: make a folder there too
    try:
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".lra-report-probe-"))
    except OSError as e:
        raise UserError(f"--html {given}: cannot write into {probe} ({e.strerror or e}); give a "
                        "folder you can write to, e.g. --html ./report") from None
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise UserError(f"--html {given} holds files that are not an lra report (the site "
                        "replaces the folder); give an empty or new folder")
    return out


def write_site(runs: pd.DataFrame, results_dir: Path, out_dir: Path, selection: str = "run",
               filters: str = "", models=(), tasks=(), presets=()) -> tuple[Path, list[str]]:
    """Write the site for `runs` (as `load_runs` reads them, filtered by `models`, `tasks` and
    `presets`, which `filters` names, as the sweeps are here) into `out_dir`, replacing an
    earlier report there. Returns index.html's path and the warnings met on the way (damaged
    metrics lines, unreadable sweeps), which the site also shows."""
    out = check_target(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.build-"))
    except OSError as e:
        raise UserError(f"--html {out_dir}: cannot write into {out.parent} ({e.strerror or e}); "
                        "give another folder") from None
    try:
        os.chmod(build, 0o755)
        warnings = _build(build, runs, Path(results_dir), selection, filters,
                          (models, tasks, presets))
        _move_into_place(build, out)
    except BaseException as e:
        shutil.rmtree(build, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk, a folder removed under us: no traceback
            raise UserError(f"--html {out_dir}: writing the site failed ({e}); nothing was "
                            "written there; free some space or give another folder") from None
        raise
    return out / "index.html", warnings


def _move_into_place(build: Path, out: Path) -> None:
    """`build` becomes `out`; an earlier report there is removed only once the new one is in
    its place, and put back if that fails."""
    if not out.exists():
        build.rename(out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    try:
        out.rename(old / "site")
        try:
            build.rename(out)
        except OSError:
            (old / "site").rename(out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _build(folder: Path, runs: pd.DataFrame, results_dir: Path, selection: str,
           filters: str, keep: tuple) -> list[str]:
    warnings: list[str] = []
    shown = leaderboard(runs, selection, published=True)
    if not shown:
        raise UserError(f"no completed runs in {results_dir}; train one with: lra run --model "
                        "transformer --task listops --preset quick")
    (folder / "img").mkdir()
    (folder / "runs").mkdir()
    listed = runs_table(runs, selection, results_dir)
    pages = _run_pages(folder / "runs", listed, results_dir, warnings)
    accuracy, efficiency, blocks = shown[0], shown[1], shown[2:]
    sections = [
        ("leaderboard", "Leaderboard", _leaderboard(accuracy)),
        ("published", "Published rows of the same protocol", _published(blocks)),
        ("curves", "Learning curves", _curves(folder, runs, results_dir, warnings)),
        ("efficiency", "Efficiency", f'<p class="title">{prose(efficiency.title)}</p>'
         + table(efficiency.header, efficiency.rows, "efficiency", sortable=True)),
        ("sweeps", "Sweeps: speed and memory against length (LRA Table 2)",
         _sweeps(folder, results_dir, warnings, keep)),
        ("runs", "Runs", _runs_list(listed, pages)),
        ("machines", "Machines and versions behind each number", _machines(runs)),
        ("notes", "Protocols and fidelity notes that apply", _notes(runs)),
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f'<p class="muted">Written by lra-bench {esc(__version__)} on {esc(stamp)} from '
            f"<code>{esc(results_dir)}</code>{' with ' + esc(filters) if filters else ''}; "
            f"every run's own commit, machine and versions are on its page.</p>")
    if warnings:
        head += ("<details><summary>Warnings while reading the results</summary><ul>"
                 + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></details>")
    body = head + "".join(f'<h2 id="{name}">{esc(title)}</h2>\n{html}\n'
                          for name, title, html in sections)
    (folder / "index.html").write_text(page("lra-bench report", body, "", NAV), "utf-8")
    return warnings


def _leaderboard(accuracy) -> str:
    classes = ["baseline" if str(k) == "baseline" else "" for k in accuracy.frame["kind"]]
    return (f'<p class="title">{prose(accuracy.title)}. Click a column header to sort.</p>'
            + table(accuracy.header, accuracy.rows, "leaderboard", sortable=True,
                    row_classes=classes))


def _published(blocks) -> str:
    """Blocks with our runs in them open; the other protocols' rows folded away."""
    parts = []
    for b in blocks:
        ours = b.name.startswith("reproduced_") or (
            "source" in b.frame and (b.frame["source"] == "lra-bench").any())
        classes = ["ours" if str(r[0]).startswith("lra-bench") else "" for r in b.rows]
        html = (f'<p class="title">{prose(b.title)}</p>'
                + table(b.header, b.rows, b.name, sortable=True, row_classes=classes))
        parts.append(html if ours else f"<details><summary>{prose(b.title)}</summary>"
                     f"{html}</details>")
    return "\n".join(parts)


def _curves(folder: Path, runs: pd.DataFrame, results_dir: Path, warnings: list[str]) -> str:
    data = learning_curves(runs, results_dir, warnings)
    if data.empty:
        return '<p class="muted">No completed run has a metrics.jsonl to draw.</p>'
    chance = chance_lines(runs)
    parts = []
    for i, ((preset, task), group) in enumerate(data.groupby(["preset", "task"], sort=True)):
        name = f"curves-{i}.png"
        title = f"{task} ({preset}): mean over seeds, band = min-max over seeds"
        plots.plot_curves(group, folder / "img" / name, title, chance)
        parts.append(f"<h3>{esc(task)} ({esc(preset)})</h3>"
                     f'<img src="{href("img", name)}" alt="{esc(title)}">')
    return "\n".join(parts)


def _sweeps(folder: Path, results_dir: Path, warnings: list[str], keep: tuple) -> str:
    """Each sweep's points of the models, task and preset that `keep` (the report's filters)
    lets through, as the rest of the report shows only those runs."""
    parts = []
    for i, sweep_id in enumerate(sweep.list_sweeps(results_dir)):
        try:
            sid, settings, df = sweep_report.load(results_dir, sweep_id)
        except UserError as e:
            warnings.append(str(e))
            continue
        df = filter_runs(df, *keep)
        if df.empty:
            continue
        title = sweep_report.title(sid, settings, df)
        name = f"sweep-{i}.png"
        plots.plot_sweep(df, folder / "img" / name, title.split(";")[0])
        parts.append(f"<h3>{esc(sid)}</h3><p class=\"title\">{prose(title)}</p>"
                     + table(*sweep_report.measured_table(df))
                     + _beside(sweep_report.beside_table(sid, settings, df))
                     + f'<img src="{href("img", name)}" alt="{esc(title)}">'
                     + "<details><summary>Every point</summary>"
                     + table(*sweep_report.points_table(df), sortable=True) + "</details>")
    if not parts and any(keep):
        parts.append('<p class="muted">No sweep in this results folder measured what the '
                     "filters let through.</p>")
    elif not parts:
        parts.append('<p class="muted">No sweep in this results folder; measure one with '
                     "<code>lra sweep --models transformer,linear --lengths 1024,2048</code>.</p>")
    p_title, p_header, p_rows = sweep_report.published_table()
    parts.append(f"<details><summary>{prose(p_title)}</summary>"
                 f"{table(p_header, p_rows)}</details>")
    return "\n".join(parts)


def _beside(titled) -> str:
    b_title, header, rows = titled
    return f'<p class="title">{prose(b_title)}</p>' + table(header, rows, sortable=True)


def _runs_list(listed: pd.DataFrame, pages: dict[str, str]) -> str:
    if listed.empty:
        return '<p class="muted">No runs.</p>'
    header, rows = run_rows(listed)
    return ("<p class=\"title\">Every run, whatever its status; a run's id opens its page.</p>"
            + table(header, rows, "runs-table", sortable=True, links={0: pages}))


def _machines(runs: pd.DataFrame) -> str:
    done = finished_runs(normalise(runs))
    cols = [c for c, _ in PROVENANCE if c in done]
    if done.empty or not cols:
        return '<p class="muted">The runs recorded no machine.</p>'

    def values(s):
        seen = sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                       for v in s.dropna()})
        return ", ".join(seen) or "-"

    grouped = done.groupby(KEYS, sort=True)
    rows = [[*key, str(len(g)), *[values(g[c]) for c in cols]] for key, g in grouped]
    labels = [label for c, label in PROVENANCE if c in cols]
    return ('<p class="title">The finished runs behind each leaderboard number: every distinct '
            "value among a group's seeds.</p>"
            + table([*KEYS, "runs", *labels], rows, "machines", sortable=True))


def _fidelity_rows(presets: set[str], models: set[str], tasks: set[str]) -> list[list[str]]:
    """The rows of docs/fidelity.md that apply: those whose area names one of the models or
    tasks; a row of one protocol ("lra: ListOps size") only when that preset ran, and then
    when it names one of the tasks or none."""
    try:
        lines = FIDELITY.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    task_words = {TASK_WORDS.get(t, t) for t in TASK_WORDS}

    def names(text: str, words) -> bool:
        return any(re.search(rf"\b{re.escape(w)}\b", text, re.I) for w in words)

    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 4 or cells[0] == "area":
            continue
        protocol, _, rest = cells[0].partition(": ")
        if rest and protocol in protocols().index:
            if protocol in presets and (names(rest, tasks) or not names(rest, task_words)):
                rows.append(cells)
        elif names(cells[0], models | tasks):
            rows.append(cells)
    return rows


def _notes(runs: pd.DataFrame) -> str:
    done = finished_runs(normalise(runs))
    base = done["base_preset"] if "base_preset" in done else done.get("preset", pd.Series())
    presets, tasks = set(base.dropna()), set(done.get("task", pd.Series()).dropna())
    models = set(done.get("model", pd.Series()).dropna())
    prot = protocols()
    parts = []
    for p in sorted(presets):
        if p in prot.index:
            info = prot.loc[p]
            parts.append(f"<li><code>--preset {esc(p)}</code> is the protocol of "
                         f"{esc(info['name'])}: {prose(info['description'])}; selection rule "
                         f"<code>{esc(info['selection'])}</code>.</li>")
        else:
            parts.append(f"<li><code>--preset {esc(p)}</code> has no published counterpart: "
                         "its numbers stand beside each other and the majority-class row "
                         "only.</li>")
    for (protocol, task), (mark, note) in reproduced.DISAGREEMENTS.items():
        if protocol in presets and task in tasks:
            parts.append(f"<li>{esc(mark)} <code>{esc(protocol)}</code>, {esc(task)}: "
                         f"{prose(note)}.</li>")
    html = f"<ul>{''.join(parts)}</ul>"
    rows = _fidelity_rows(presets, models, {TASK_WORDS.get(t, t) for t in tasks})
    if rows:
        html += ("<h3>Deliberate deviations from the official code (docs/fidelity.md) for "
                 "these models, tasks and presets</h3>"
                 + table(["area", "reference file", "what differs", "why"], rows, sentences=True))
    else:
        html += ('<p class="muted">Every deliberate deviation from the official code is listed '
                 "in docs/fidelity.md of the lra-bench source.</p>")
    return html


def reproduce_command(summary: dict, config: dict | None) -> str:
    """The `lra run` line that trains this run again: its model, task, preset, seed and every
    setting it changed (as recorded, so `--steps 20` comes back as `--set train.steps=20`)."""
    config = config or {}
    parts = ["lra", "run", "--model", str(summary["model"]), "--task", str(summary["task"]),
             "--preset", str(summary.get("preset") or config.get("preset") or "smoke")]
    seed = summary.get("seed", config.get("seed"))
    if seed is not None:
        parts += ["--seed", str(int(seed))]
    for o in summary.get("overrides") or config.get("overrides") or []:
        parts += ["--set", str(o)]
    return shlex.join(parts)


def _run_pages(folder: Path, listed: pd.DataFrame, results_dir: Path,
               warnings: list[str]) -> dict[str, str]:
    """One page per run; returns run id -> its page's link from index.html."""
    pages = {}
    for run_id in listed.get("run_id", pd.Series(dtype=str)).astype(str):
        if not re.fullmatch(records.ID, run_id):  # not a folder name the site can hold
            continue
        run_path = results_dir / "runs" / run_id
        summary, _ = records.read(run_path / "summary.json", records.SUMMARY)
        config, why = records.read(run_path / "config.json", records.CONFIG)
        if summary is None:
            continue
        lines, skipped = records.read_lines(run_path / "metrics.jsonl", records.METRICS_LINE)
        warnings.extend(w for w in skipped if w not in warnings)
        (folder / f"{run_id}.html").write_text(
            _run_page(run_id, summary, config, why, lines), "utf-8")
        pages[run_id] = href("runs", f"{run_id}.html")
    return pages


def _outcome(s: dict) -> str:
    """', test accuracy 41.00% (best_val parameters), best validation 41.00% at step 300'."""
    parts = []
    if isinstance(s.get("test_accuracy"), (int, float)):
        parts.append(f"test accuracy {100 * s['test_accuracy']:.2f}% "
                     f"({esc(s.get('selection') or 'best_val')} parameters)")
    if isinstance(s.get("val_accuracy"), (int, float)):
        parts.append(f"best validation {100 * s['val_accuracy']:.2f}%"
                     + (f" at step {esc(s.get('best_step'))}" if s.get("best_step") else ""))
    if s.get("error"):
        parts.append(f"error: {esc(s['error'])}")
    return "".join(f", {p}" for p in parts)


def _run_page(run_id: str, summary: dict, config: dict | None, config_problem: str | None,
              lines: list[dict]) -> str:
    commit = summary.get("git_commit")
    command = reproduce_command(summary, config)
    evals = [(m["step"], 100.0 * m["val_accuracy"]) for m in lines
             if m.get("val_accuracy") is not None]
    losses = [(m["step"], m["train_loss"]) for m in lines if m.get("train_loss") is not None]
    chance = summary.get("val_majority")
    chance = 100.0 * chance if isinstance(chance, (int, float)) else None
    machine = [(label, summary.get(key)) for key, label in PROVENANCE]
    body = (f"<p>{esc(summary.get('model'))} on {esc(summary.get('task'))}, preset "
            f"{esc(summary.get('preset'))}, seed {esc(summary.get('seed'))}: "
            f"<strong>{esc(summary.get('status'))}</strong>{_outcome(summary)}.</p>"
            "<h2>Run it again</h2>"
            f"<pre>{esc(command)}</pre>"
            + (f"<p class=\"muted\">It ran at commit <code>{esc(commit)}</code> "
               f"(<code>git checkout {esc(str(commit).removesuffix('-dirty'))}</code>"
               f"{'; the tree had uncommitted changes' if str(commit).endswith('-dirty') else ''}"
               ").</p>" if commit and commit != "unknown" else "")
            + "<h2>Curves</h2>"
            + svg_chart(evals, "validation accuracy (%)", chance)
            + svg_chart(losses, "training loss")
            + (f'<p class="muted">dashed: majority class of the validation split, '
               f"{chance:.1f}%</p>" if chance is not None and evals else "")
            + "<h2>Machine and versions</h2>" + key_values(machine)
            + "<h2>Summary</h2>" + key_values(sorted(summary.items()))
            + "<h2>Config</h2>"
            + (f"<pre>{esc(json.dumps(config, indent=2, sort_keys=True))}</pre>" if config
               else f'<p class="muted">config.json {esc(config_problem)}</p>'))
    return page(f"Run {run_id}", body, "../", NAV)

