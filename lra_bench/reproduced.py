"""Our run groups beside the published figure of their protocol (`lra report --published`).

For each (model, task) of our runs under a protocol's preset: the mean ± std over seeds (n), the
published figure of the same model (where the protocol published one), the difference, and
whether it lies inside the spread of our seeds: within two standard deviations of our mean.
One seed has no spread, and the view says so instead of giving a verdict. Where the paper and
the code that produced its numbers disagree, the row carries a mark and the block a footnote;
docs/reproduce.md explains each.
"""

from __future__ import annotations

import math

import pandas as pd

# Our model names (models/*.toml) as the published tables print them: the one matching of
# published rows to models, for accuracy (lra_accuracy.csv, lra_frontier.csv) and efficiency
# (lra_efficiency.csv, `lra report --sweep`) alike.
PUBLISHED_NAMES = {
    "transformer": ("Transformer", "Standard Transformer"),
    "nystromformer": ("Nystromformer",),
    "linear": ("Linear Transformer",),
    "linformer": ("Linformer",),
    "performer": ("Performer",),
    "reformer": ("Reformer",),
    "synthesizer": ("Synthesizer",),
    "local": ("Local Attention",),
    "sparse_transformer": ("Sparse Transformer",),
    "longformer": ("Longformer",),
    "sinkhorn": ("Sinkhorn Transformer",),
    "bigbird": ("BigBird",),
    "s5": ("S5",),  # lra_frontier.csv's S5 row
    "s4d": ("S4",),  # its S4 row is S4 (DPLR), not S4D: marked, see MODEL_MARKS
}


def registry_model(published: str) -> str | None:
    """The model of ours that a published row's model name is (None: no model of ours)."""
    return next((ours for ours, names in PUBLISHED_NAMES.items() if published in names), None)


# (protocol, task) -> (mark, footnote): paper and code disagree; we follow the code.
DISAGREEMENTS = {
    ("lra", "listops"): ("‡", "ListOps tokens: the code behind Table 1 (4954d9f) dropped every "
                              "bracket (tfds Tokenizer); lra-bench reads that stream "
                              "(data.tokens = alphanumeric)"),
    ("nystrom", "listops"): ("‡", "ListOps tokens: the Nystromformer data came from LRA's "
                                  "pipeline before c209b2a, without brackets; lra-bench reads "
                                  "that stream (data.tokens = alphanumeric)"),
    ("lra", "text"): ("†", "Text length: the paper says 4K, the code reads 1,000 bytes (as "
                           "lra-bench)"),
    ("nystrom", "text"): ("†", "Text length: the paper's header says 4K, the code reads 1,000 "
                               "bytes (as lra-bench)"),
    ("lra", "image"): ("§", "Image model size: the configs the release added in Aug 2021 "
                            "(ee6649e), not 4954d9f's base config"),
    ("lra", "pathfinder"): ("§", "Pathfinder model size: ee6649e's config (Aug 2021), not "
                                 "4954d9f's"),
}
# (protocol, model) -> (mark, footnote): the published row is of a related model, not ours.
MODEL_MARKS = {
    ("s4", "s4d"): ("≈", "S4D beside S4: the published row is the S4 paper's (the DPLR kernel); "
                         "lra-bench runs S4D, the diagonal kernel, with the same configs "
                         "(state-spaces/s4 configs/experiment/lra, mode diag)"),
}
OWN_SETTINGS = ("*", "run with lra-bench's settings for this model: LRA published a config for "
                     "the Transformer only")
SPREAD = 2.0  # standard deviations of our seeds


def verdict(diff: float, std: float, n: int) -> str:
    if n < 2 or std is None or math.isnan(std):
        return "n = 1: no spread"
    if std == 0:
        return "inside the spread" if diff == 0 else "outside (no spread)"
    k = abs(diff) / std
    where = "inside" if k <= SPREAD else "outside"
    return f"{where} the spread (|d| = {k:.1f} sd)"


def published_value(pub: pd.DataFrame, model: str, task: str) -> tuple[float | None, str]:
    rows = pub[pub["model"].isin(PUBLISHED_NAMES.get(model, ()))]
    for _, r in rows.iterrows():
        try:
            return float(r[task]), str(r["source"]).split(" (")[0]
        except (KeyError, TypeError, ValueError):  # empty cell or FAIL
            continue
    return None, ""


def comparison(ours: pd.DataFrame, pub: pd.DataFrame, protocol: str
               ) -> tuple[list[str], list[list[str]], pd.DataFrame, list[str]]:
    """ours: accuracy_table rows (wide, %) of the protocol's preset; pub: its published rows.
    Returns (header, rows, frame, footnotes)."""
    header = ["model", "task", "lra-bench", "published", "difference", "seeds' spread"]
    records, marks = [], {}
    runs = ours[ours["kind"] == "run"] if "kind" in ours else ours
    for _, r in runs.iterrows():
        for task in [c for c in ours.columns if f"{c}_n" in ours.columns]:
            n = int(r[f"{task}_n"])
            if n == 0:
                continue
            mean, std = float(r[task]), float(r[f"{task}_std"])
            value, source = published_value(pub, r["model"], task)
            note = ""
            if (protocol, task) in DISAGREEMENTS:
                note += DISAGREEMENTS[(protocol, task)][0]
                marks[DISAGREEMENTS[(protocol, task)][0]] = DISAGREEMENTS[(protocol, task)][1]
            if (protocol, r["model"]) in MODEL_MARKS:
                mark, text = MODEL_MARKS[(protocol, r["model"])]
                note, marks[mark] = note + mark, text
            if protocol == "lra" and r["model"] != "transformer":
                note += OWN_SETTINGS[0]
                marks[OWN_SETTINGS[0]] = OWN_SETTINGS[1]
            records.append({"model": r["model"], "task": task, "mean": mean,
                            "std": std if n > 1 else float("nan"), "n": n, "published": value,
                            "source": source, "difference": None if value is None else mean - value,
                            "verdict": "no published figure" if value is None else
                            verdict(mean - value, std, n), "note": note})
    rows = []
    for rec in records:
        ours_text = f"{rec['mean']:.2f}" + (f" ± {rec['std']:.2f}" if rec["n"] > 1 else "") + \
            f" (n={rec['n']})"
        pub_text = "-" if rec["published"] is None else f"{rec['published']:.2f} ({rec['source']})"
        diff_text = "-" if rec["difference"] is None else f"{rec['difference']:+.2f}"
        rows.append([rec["model"] + rec["note"], rec["task"], ours_text, pub_text, diff_text,
                     rec["verdict"]])
    footnotes = [f"{mark} {text}" for mark, text in marks.items()]
    return header, rows, pd.DataFrame(records), footnotes
