"""The resolved length schedules of docs/length-options.md: per preset and task, the tokens, the
top-k pooled lengths, the Nystrom landmarks and the Fourier coefficients kept, from the configs.

    python benchmarks/length_table.py
"""

from lra_bench import config
from lra_bench.errors import UserError
from lra_bench.mixers.fourier import kept_coefficients
from lra_bench.mixers.topk import factor_plan

TASKS = ["listops", "text", "retrieval", "image", "pathfinder", "pathx"]


def main() -> None:
    print("| preset | task | tokens | layers | top-k lengths | Nyström landmarks | Fourier kept |")
    print("|---|---|---|---|---|---|---|")
    for preset in ["lra", "nystrom", "quick", "smoke"]:
        for task in TASKS:
            try:
                topk = config.resolve("topk", task, preset)
            except UserError:  # the task has no such preset
                continue
            n, layers = topk.data["max_length"], topk.model["num_layers"]
            pooled = [p for p in factor_plan(n, topk.mixer["pool_factors"], layers) if p]
            nys = config.resolve("nystromformer", task, preset)
            m = nys.mixer["num_landmarks"]
            tokens = n + (nys.model["pooling"] == "cls")  # a CLS token joins the sequence
            fourier = config.resolve("fourier", task, preset)
            seen = n + (fourier.model["pooling"] == "cls")
            print(f"| {preset} | {task} | {n} | {layers} | {' -> '.join(map(str, [n, *pooled]))} "
                  f"| {m} ({-(-tokens // m)} tokens each) "
                  f"| {kept_coefficients(seen, fourier.mixer['keep_ratio'])} of {seen} |")


if __name__ == "__main__":
    main()
