"""`lra data download|prepare|info`: get, prepare and inspect the task data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from lra_bench import config, paths, progress
from lra_bench.cli.common import QUIET, err, log, out, preset_help, user_errors
from lra_bench.errors import UserError
from lra_bench.sizes import format_bytes


app = typer.Typer(no_args_is_help=True, help="Get, prepare and inspect the task data.")


@app.command("download")
@user_errors
def data_download(
    task: Optional[str] = typer.Argument(
        None, help="text or image: the task's original archive (IMDB, CIFAR-10); any other task, "
        "or none: the LRA release (ListOps, AAN, Pathfinder, Path-X)"),
    to: Optional[Path] = typer.Option(None, "--to", help="where the archives and lra_release/ go "
                                      "(default: the data directory, $LRA_DATA_DIR or ./data)"),
    url: str = typer.Option(None, help="the archive's URL (default: the official one)"),
    include: List[str] = typer.Option([], help="also extract this release path, e.g. "
                                      "pathfinder32/curv_baseline/"),
    keep_archive: bool = typer.Option(True, help="keep lra_release.gz after extracting"),
    retries: int = typer.Option(5, help="resume attempts within this call"),
    insecure: bool = typer.Option(False, help="allow a plain-http --url"),
    sha256: Optional[str] = typer.Option(None, help="the release archive's expected SHA-256 "
                                         "(checked before extraction)"),
    quiet: bool = QUIET,
):
    """Fetch the LRA release archive (resumable), check it and extract the parts the tasks read;
    or, for text and image, the original IMDB / CIFAR-10 archive."""
    from lra_bench.data import download  # numpy: loaded by the data commands only

    progress.set_quiet(quiet)
    if retries < 0:
        raise UserError(f"--retries must be >= 0 (0: try once), got {retries}")
    where = paths.data_dir(to, "--to")
    if task is not None:
        from lra_bench.data.prepare import loader_module  # numpy, as above

        spec = config.load_spec("tasks", task)  # an unknown name ends here, with the choices
        original = getattr(loader_module(spec["data"]["loader"]), "ORIGINAL", None)
        if original is not None:
            if include or sha256:
                raise UserError(f"--include and --sha256 are for the LRA release; {task}'s "
                                f"archive has a pinned SHA-256 (drop them, or omit '{task}')")
            archive = download.download_original(original, where, url, retries, log, insecure)
            out.print(f"{archive}: `lra run -t {task}` and `lra data prepare {task}` read it "
                      "from there", highlight=False)
            return
    result = download.download(where, url or download.OFFICIAL_URL, tuple(include),
                               keep_archive=keep_archive, retries=retries, log=log,
                               insecure=insecure, sha256=sha256)
    files = ", ".join(f"{k}: {v}" for k, v in sorted(result["files"].items()))
    out.print(f"extracted to {where / download.RELEASE} ({files})", highlight=False)


@app.command("prepare")
@user_errors
def data_prepare(
    task: str = typer.Argument(..., help="a name from `lra list tasks`"),
    preset: List[str] = typer.Option([], help=preset_help("prepare only this preset (repeatable; "
                                                          "default: all)")),
    source: Optional[str] = typer.Option(None, help="a file, a folder, 'tfds' or 'tfds:DIR' "
                                         "(default: the task's usual source)"),
    generate: bool = typer.Option(False, help="generate the source (ListOps, Pathfinder, Path-X)"),
    set_: List[str] = typer.Option([], "--set", metavar="data.KEY=VALUE",
                                   help="override a data setting (repeatable)"),
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    force: bool = typer.Option(False, help="rebuild even if the cache is current"),
    quiet: bool = QUIET,
):
    """Convert a task's source into the cache runs read (idempotent)."""
    from lra_bench.data import prepare  # numpy: loaded by the data commands only

    progress.set_quiet(quiet)
    doc = config.load_spec("tasks", task)
    presets = preset or sorted(doc.get("presets", {}))
    ddir = paths.data_dir(data_dir)
    for p in presets:
        data = config.resolve_data(task, p, set_)
        with prepare.stop_cleanly():
            dest, manifest, wrote = prepare.prepare(task, p, data, ddir, source=source,
                                                    generate=generate, force=force, log=log)
        counts = "/".join(str(prepare_count(manifest, s)) for s in ("train", "val", "test"))
        state = "prepared" if wrote else "already prepared"
        skipped = sum(manifest.get("skipped", {}).values())
        out.print(f"{task}/{p}: {state} in {dest} (train/val/test {counts}"
                  f"{f', {skipped} skipped' if skipped else ''})", highlight=False)


def prepare_count(manifest: dict, split: str) -> int:
    from lra_bench.data.cache import split_info  # numpy: loaded by the data commands only

    return split_info(manifest, split)["count"]


@app.command("info")
@user_errors
def data_info(
    data_dir: Optional[Path] = typer.Option(None, help="default: $LRA_DATA_DIR or ./data"),
    verify: bool = typer.Option(False, help="re-hash every cached file against its manifest"),
):
    """What is prepared, where, how big, and from what."""
    from lra_bench.data import cache, download  # numpy: loaded by the data commands only

    ddir = paths.data_dir(data_dir)
    found, damaged = cache.find_all(ddir)
    t = Table(title=f"prepared data in {ddir}", title_justify="left")
    for c in ("task", "variant", "train", "val", "test", "size", "source", "created"):
        t.add_column(c)
    bad_any = False
    for path, m in found:
        counts = []
        for s in ("train", "val", "test"):
            info = m["splits"][s]
            counts.append(f"= {info['same_as']}" if "same_as" in info else str(info["count"]))
        src = m["source"]
        what = ("generated" if src.get("generated") else src.get("kind", "")) or "files"
        where = src.get("root") or src.get("data_dir") or (src.get("files") or [[""]])[0][0]
        size = format_bytes(cache.disk_bytes(path))
        if verify:
            bad = cache.verify(path, m)
            bad_any |= bool(bad)
            size += " ok" if not bad else f" CHANGED: {', '.join(bad)}"
        t.add_row(m["task"], path.name, *counts, size, f"{what} {where or ''}".strip(),
                  m["created"])
    out.print(t if found else f"nothing prepared in {ddir}; see `lra data prepare --help`")
    for path, problem in damaged:  # unusable caches: said, and the exit status says it too
        err.print(f"damaged: {problem}; rebuild it: lra data prepare {path.parent.name} "
                  f"--data-dir {ddir} --force", highlight=False, markup=False)
        bad_any = True
    marker = ddir / download.RELEASE / download.MARKER
    done = download.read_marker(marker.parent)
    if done is not None:
        files = done["files"]
        out.print(f"release: {marker.parent} ("
                  + ", ".join(f"{k}: {v} files" for k, v in sorted(files.items())) + ")",
                  highlight=False)
    if bad_any:
        raise typer.Exit(1)
