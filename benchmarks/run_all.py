"""Run every benchmark and rewrite the results table in ``benchmarks/README.md``.

Each benchmark runs in its own process (dtype policies and thread settings are process-wide)
and prints one JSON line; the records are saved to ``benchmarks/results.json`` and the table
between the ``<!-- results:begin -->`` and ``<!-- results:end -->`` markers of
``benchmarks/README.md`` is replaced with the new figures next to the reference ones, with the
machine they were measured on. On a shared machine the best repeat is the figure to compare
(other processes only ever slow a run down); the load average is printed next to it.

Usage: ``python benchmarks/run_all.py [--quick] [--rounds 3] [--only train_float32,search]
[--skip mixed_precision] [--no_readme] [--table_only]``
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "README.md")
RESULTS = os.path.join(HERE, "results.json")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# name -> (script, arguments, quick arguments)
BENCHMARKS = {
    "train_float32": ("bench_train_msinet.py", ["--repeats", "5"], ["--repeats", "2"]),
    "train_bfloat16": ("bench_train_msinet.py",
                       ["--mixed_precision", "mixed_bfloat16", "--repeats", "5"],
                       ["--mixed_precision", "mixed_bfloat16", "--repeats", "2"]),
    "inference_float32": ("bench_inference_msinet.py", ["--repeats", "5"], ["--repeats", "2"]),
    "inference_bfloat16": ("bench_inference_msinet.py",
                           ["--mixed_precision", "mixed_bfloat16", "--repeats", "5"],
                           ["--mixed_precision", "mixed_bfloat16", "--repeats", "2"]),
    "search": ("bench_search.py", ["--repeats", "3"], ["--repeats", "1"]),
    "search_bfloat16": ("bench_search.py",
                        ["--mixed_precision", "mixed_bfloat16", "--repeats", "3"],
                        ["--mixed_precision", "mixed_bfloat16", "--repeats", "1"]),
    "cmc": ("bench_cmc.py", ["--repeats", "3"], ["--repeats", "1"]),
    "pipeline": ("bench_pipeline.py", ["--recipe", "msinet"],
                 ["--recipe", "msinet", "--steps", "4"]),
    "mixed_precision": ("bench_mixed_precision.py", [],
                        ["--epochs", "1", "--steps_per_epoch", "10", "--seeds", "0"]),
}


def run_benchmark(name, quick):
    """Run one benchmark script; returns its JSON record (or an ``error`` record)."""
    script, arguments, quick_arguments = BENCHMARKS[name]
    command = [sys.executable, os.path.join(HERE, script)] + (quick_arguments if quick
                                                              else arguments)
    print(f"[run_all] {name}: {' '.join(command[1:])}", flush=True)
    completed = subprocess.run(command, cwd=os.path.dirname(HERE), capture_output=True,
                               text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout)[-2000:]
        print(f"[run_all] {name} failed (exit {completed.returncode}):\n{tail}", flush=True)
        return {"benchmark": name, "error": f"exit {completed.returncode}"}
    record = json.loads(lines[-1])
    print(f"[run_all] {name}: {lines[-1][:300]}", flush=True)
    return record


def figure(record):
    """The benchmark's figure as "higher is better" (None for a failed run)."""
    if not record or "error" in record:
        return None
    if "policies" in record:
        return 0.0  # accuracy comparison: the last run is kept
    if record.get("benchmark") in ("msi_search_step", "cmc_map"):
        return -record["seconds"]  # seconds per call: lower is better
    if "images_per_second" in record:
        return record["images_per_second"]
    return None


def keep_best(previous, record):
    """The better of two records of one benchmark, with every round's figure and load."""
    rounds = list((previous or {}).get("rounds", []))
    value = figure(record)
    if value is not None:
        rounds.append({"figure": abs(value), "load_before": record.get("load_before"),
                       "load_after": record.get("load_after")})
    best = record
    if previous and figure(previous) is not None and (value is None
                                                      or figure(previous) > value):
        best = previous
    best = dict(best)
    best["rounds"] = rounds
    return best


def _status(ok):
    return "met" if ok else "**not met** (see NOTES.md)"


def _rounds(record):
    count = len(record.get("rounds", [])) or 1
    return f"best of {count} run{'s' if count > 1 else ''}"


def _load(record):
    return f"{record.get('load_before')}–{record.get('load_after')}"


def table(records):
    """Markdown lines of the results table from the records by benchmark name."""
    rows = ["| work | reference (PyTorch 2.13, fp32) | target | reid-tf: best repeat (median) "
            "| CPU s per call | load (1 min) | status |",
            "|---|---|---|---|---|---|---|"]

    def missing(title, reference, target):
        rows.append(f"| {title} | {reference} | {target} | not measured | | | |")

    def rate_row(title, record, reference, target):
        if not record or "error" in record:
            missing(title, reference, target)
            return None
        best = record["images_per_second"]
        rows.append(f"| {title} | {reference} | {target} | {best:.1f} "
                    f"({record['images_per_second_median']:.1f}) img/s, {_rounds(record)} | "
                    f"{record['cpu_seconds_per_call']:.2f} | {_load(record)} | "
                    f"{_status(best >= record['target_images_per_second'])} |")
        return best

    train32 = rate_row("MSINet training step, batch 32, 256x128, both heads, fp32",
                       records.get("train_float32"), "8.7 img/s", "≥ 28 img/s")
    train16 = rate_row("MSINet training step, same, `--mixed_precision mixed_bfloat16`",
                       records.get("train_bfloat16"), "—", "≥ 50 img/s")
    rate_row("MSINet inference, batch 128, fp32", records.get("inference_float32"),
             "16 img/s", "≥ 64 img/s")
    rate_row("MSINet inference, batch 128, bf16", records.get("inference_bfloat16"),
             "—", "≥ 64 img/s")
    def search_row(title, record, reference):
        if record and "error" not in record:
            rows.append(f"| {title} | {reference} | ≤ 2.1 s | {record['seconds']:.2f} "
                        f"({record['seconds_median']:.2f}) s, {_rounds(record)} | "
                        f"{record['cpu_seconds_per_call']:.2f} | {_load(record)} | "
                        f"{_status(record['seconds'] <= record['target_seconds'])} |")
        else:
            missing(title, reference, "≤ 2.1 s")

    search_row("MSI search step (architecture + weights, batch 32 each), fp32",
               records.get("search"), "6.3 s")
    search_row("MSI search step, same, `--mixed_precision mixed_bfloat16`",
               records.get("search_bfloat16"), "—")
    cmc = records.get("cmc")
    title = "CMC/mAP, 3368 x 15913 distance matrix"
    if cmc and "error" not in cmc:
        rows.append(f"| {title} | 50 s | ≤ 2.5 s | {cmc['seconds']:.2f} s, {_rounds(cmc)} | | | "
                    f"{_status(cmc['seconds'] <= 2.5)} |")
    else:
        missing(title, "50 s", "≤ 2.5 s")
    pipeline = records.get("pipeline")
    fastest = max([rate for rate in (train32, train16) if rate] or [0.0])
    title = "input pipeline alone, `msinet` augmentation, 256x128, batch 64 (disk / cached)"
    if pipeline and "error" not in pipeline:
        slowest = min(pipeline["images_per_second"], pipeline["images_per_second_cached"])
        rows.append(f"| {title} | — | ≥ 2 x the fastest training ({2 * fastest:.0f} img/s) | "
                    f"{pipeline['images_per_second']:.0f} / "
                    f"{pipeline['images_per_second_cached']:.0f} img/s | | | "
                    f"{_status(slowest >= 2 * fastest)} |")
    else:
        missing(title, "—", "≥ 2 x training")
    mixed = records.get("mixed_precision")
    title = "mAP after the same short synthetic training, fp32 / bf16"
    if mixed and "error" not in mixed:
        policies = mixed["policies"]
        fp32, bf16 = policies.get("float32"), policies.get("mixed_bfloat16")
        if fp32 and bf16:
            noise = max(fp32["mAP_spread"], bf16["mAP_spread"])
            difference = bf16["mAP_mean"] - fp32["mAP_mean"]
            if abs(difference) <= noise:
                status = "met (within the seed spread)"
            elif difference > 0:
                status = "met: no accuracy loss (bf16 higher by more than the seed spread)"
            else:
                status = "**bf16 below fp32 by more than the seed spread** (see NOTES.md)"
            rows.append(
                f"| {title} ({mixed['epochs']} x {mixed['steps_per_epoch']} steps of the "
                f"quick-start recipe, seeds {', '.join(map(str, mixed['seeds']))}) | — | "
                f"bf16 within noise of fp32 | {100 * fp32['mAP_mean']:.2f}% / "
                f"{100 * bf16['mAP_mean']:.2f}% (difference {100 * difference:+.2f} points; "
                f"seed spread {100 * fp32['mAP_spread']:.2f} / {100 * bf16['mAP_spread']:.2f}) "
                f"| | {_load(mixed)} | {status} |")
    else:
        missing(title, "—", "within noise")
    return rows


def machine_line(records):
    for record in records.values():
        machine = record.get("machine") if isinstance(record, dict) else None
        if machine:
            isa = ", ".join(machine["isa"])
            return (f"Measured on {machine['cpu']} ({machine['cpu_count']} cores; {isa}), "
                    f"TensorFlow {machine['tensorflow']}, oneDNN "
                    f"{'on' if machine['onednn'] else 'off'}, "
                    f"{datetime.date.today().isoformat()}.")
    return f"Measured {datetime.date.today().isoformat()}."


def rewrite_readme(records):
    lines = table(records)
    block = "\n".join([BEGIN, machine_line(records), ""] + lines + [END])
    if os.path.isfile(README):
        with open(README, encoding="utf-8") as handle:
            text = handle.read()
    else:
        text = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(README, "w", encoding="utf-8") as handle:
        handle.write(head + block + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a rough check)")
    parser.add_argument("--only", default="", help=f"comma-separated from {', '.join(BENCHMARKS)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every benchmark this many times (round-robin), keep the best")
    parser.add_argument("--table_only", action="store_true",
                        help="run nothing: rewrite the README table from results.json")
    parser.add_argument("--no_readme", action="store_true",
                        help="print the table instead of rewriting README.md")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name] or list(BENCHMARKS)
    skipped = [name for name in args.skip.split(",") if name]
    unknown = [name for name in names + skipped if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"Unknown benchmark(s) {unknown}; expected {', '.join(BENCHMARKS)}.")
    if args.rounds < 1:
        raise SystemExit(f"--rounds={args.rounds}: must be >= 1.")
    records = {}
    if os.path.isfile(RESULTS):
        # Benchmarks not re-run keep their last figures in the table.
        with open(RESULTS, encoding="utf-8") as handle:
            records = json.load(handle)
    selected = [] if args.table_only else [name for name in names if name not in skipped]
    fresh = {}
    for _ in range(args.rounds):
        # Round-robin: on a shared machine each benchmark gets several chances of a quiet
        # period; the best round is kept (every round's figure and load stay in "rounds").
        for name in selected:
            fresh[name] = keep_best(fresh.get(name), run_benchmark(name, args.quick))
    records.update(fresh)
    with open(RESULTS, "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1)
    if args.no_readme:
        print("\n".join(table(records)))
    else:
        rewrite_readme(records)
        print(f"[run_all] wrote {README} and {RESULTS}")


if __name__ == "__main__":
    main()
