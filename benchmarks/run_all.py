"""Run every benchmark and rewrite the results table in ``benchmarks/README.md``.

Each benchmark runs in its own process (dtype policies and thread settings are process-wide)
and prints one JSON line; the records are saved to ``benchmarks/results.json`` and the table
between the ``<!-- results:begin -->`` and ``<!-- results:end -->`` markers of
``benchmarks/README.md`` is replaced with the new figures next to the reference ones, with the
machine they were measured on. On a shared machine the best repeat is the figure to compare
(other processes only ever slow a run down); the load average is printed next to it.

Usage: ``python benchmarks/run_all.py [--quick] [--only train,inference] [--skip mixed_precision]
[--no_readme]``
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


def _fmt(value, digits=1):
    return "—" if value is None else f"{value:.{digits}f}"


def _status(ok):
    return "met" if ok else "**not met** (see NOTES.md)"


def table(records):
    """Markdown lines of the results table from the records by benchmark name."""
    rows = ["| work | reference (PyTorch 2.13, fp32) | target | reid-tf best (median) | "
            "load | status |", "|---|---|---|---|---|---|"]

    def rate_row(title, record, reference, target):
        if not record or "error" in record:
            rows.append(f"| {title} | {reference} | {target} | not measured | | |")
            return None
        best = record["images_per_second"]
        rows.append(f"| {title} | {reference} | {target} | {best:.1f} "
                    f"({record['images_per_second_median']:.1f}) img/s | "
                    f"{record['load_before']}–{record['load_after']} | "
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
    search = records.get("search")
    if search and "error" not in search:
        rows.append(f"| MSI search step (architecture + weights, batch 32 each), fp32 | 6.3 s | "
                    f"≤ 2.1 s | {search['seconds']:.2f} ({search['seconds_median']:.2f}) s | "
                    f"{search['load_before']}–{search['load_after']} | "
                    f"{_status(search['seconds'] <= search['target_seconds'])} |")
    else:
        rows.append("| MSI search step | 6.3 s | ≤ 2.1 s | not measured | | |")
    cmc = records.get("cmc")
    if cmc and "error" not in cmc:
        rows.append(f"| CMC/mAP, 3368 x 15913 distances | 50 s | ≤ 2.5 s | "
                    f"{cmc['seconds']:.2f} s | | {_status(cmc['seconds'] <= 2.5)} |")
    pipeline = records.get("pipeline")
    fastest = max([rate for rate in (train32, train16) if rate] or [0.0])
    if pipeline and "error" not in pipeline:
        slowest = min(pipeline["images_per_second"], pipeline["images_per_second_cached"])
        rows.append(f"| input pipeline alone, `{pipeline['recipe']}` augmentation, 256x128, "
                    f"batch {pipeline['batch_size']} (disk / cached) | — | ≥ 2 x training "
                    f"({2 * fastest:.0f} img/s) | {pipeline['images_per_second']:.0f} / "
                    f"{pipeline['images_per_second_cached']:.0f} img/s | | "
                    f"{_status(slowest >= 2 * fastest)} |")
    mixed = records.get("mixed_precision")
    if mixed and "error" not in mixed:
        policies = mixed["policies"]
        fp32, bf16 = policies.get("float32"), policies.get("mixed_bfloat16")
        if fp32 and bf16:
            noise = max(fp32["mAP_spread"], bf16["mAP_spread"])
            difference = bf16["mAP_mean"] - fp32["mAP_mean"]
            rows.append(
                f"| mAP after the same short synthetic training ({mixed['epochs']} x "
                f"{mixed['steps_per_epoch']} steps, seeds {mixed['seeds']}), fp32 / bf16 | — | "
                f"bf16 within noise of fp32 | {100 * fp32['mAP_mean']:.2f}% / "
                f"{100 * bf16['mAP_mean']:.2f}% (seed spread {100 * noise:.2f} points) | "
                f"{mixed['load_before']}–{mixed['load_after']} | "
                f"{'difference ' + format(100 * difference, '+.2f') + ' points'} |")
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
    parser.add_argument("--no_readme", action="store_true",
                        help="print the table instead of rewriting README.md")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name] or list(BENCHMARKS)
    skipped = [name for name in args.skip.split(",") if name]
    unknown = [name for name in names + skipped if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"Unknown benchmark(s) {unknown}; expected {', '.join(BENCHMARKS)}.")
    records = {}
    if os.path.isfile(RESULTS):
        # Benchmarks not re-run keep their last figures in the table.
        with open(RESULTS, encoding="utf-8") as handle:
            records = json.load(handle)
    for name in names:
        if name not in skipped:
            records[name] = run_benchmark(name, args.quick)
    with open(RESULTS, "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1)
    if args.no_readme:
        print("\n".join(table(records)))
    else:
        rewrite_readme(records)
        print(f"[run_all] wrote {README} and {RESULTS}")


if __name__ == "__main__":
    main()
