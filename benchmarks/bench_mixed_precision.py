"""Accuracy and speed of mixed precision: the same short synthetic training in float32 and bf16.

Runs ``solution.py`` with the quick-start recipe (``configs/quickstart.flags``: MSINet at
64 × 32 on the embedded synthetic dataset) shortened to ``--epochs`` × ``--steps_per_epoch``,
once per dtype policy and seed, each in its own process (the policy is process-wide), and
reads back the trained model's evaluation (``results.json``) and the trainer's throughput
(``history.csv``: images per second of each epoch after the first, which includes tracing).
With several seeds the spread of the float32 runs is the noise the bfloat16 mAP is compared
with. Prints ONE JSON line with every run and the per-policy means.

Usage: ``python benchmarks/bench_mixed_precision.py [--epochs 3] [--seeds 0,1,2,3]
[--policies float32,mixed_bfloat16]``
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, emit, load_average

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def run_training(policy, seed, epochs, steps, folder):
    """One shortened quick-start run; returns its summary dict."""
    command = [sys.executable, os.path.join(ROOT, "solution.py"),
               f"--flagfile={os.path.join(ROOT, 'configs', 'quickstart.flags')}",
               f"--epoch_num={epochs}", f"--steps_per_epoch={steps}",
               f"--evaluate_testing_every_N_epochs={epochs}", "--noevaluate_before_training",
               f"--seed={seed}", f"--output_folder_path={folder}", "--overwrite_output_folder",
               f"--mixed_precision={'' if policy == 'float32' else policy}"]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{policy} seed {seed}: solution.py failed "
                           f"(exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    run_folders = [os.path.join(folder, name) for name in os.listdir(folder)]
    run_folder = next(path for path in run_folders if os.path.isfile(
        os.path.join(path, "results.json")))
    with open(os.path.join(run_folder, "results.json"), encoding="utf-8") as handle:
        trained = json.load(handle)["trained"]
    with open(os.path.join(run_folder, "history.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rates = [float(row["images_per_second"]) for row in rows[1:]] or \
        [float(row["images_per_second"]) for row in rows]
    return {"policy": policy, "seed": seed, "mAP": round(float(trained["mAP"]), 4),
            "rank1": round(float(trained["rank1"]), 4),
            "final_loss": round(float(rows[-1]["loss"]), 4),
            "training_images_per_second": round(max(rates), 1),
            "seconds": round(seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps_per_epoch", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    parser.add_argument("--policies", default="float32,mixed_bfloat16",
                        help=f"comma-separated, from {', '.join(POLICIES)}")
    args = parser.parse_args()
    policies = [name for name in args.policies.split(",") if name]
    unknown = [name for name in policies if name not in POLICIES]
    if unknown or not policies:
        raise SystemExit(f"--policies={args.policies!r}: expected names from "
                         f"{', '.join(POLICIES)}.")
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    except ValueError:
        raise SystemExit(f"--seeds={args.seeds!r}: expected comma-separated integers.") from None
    if not seeds or args.epochs < 1 or args.steps_per_epoch < 1:
        raise SystemExit("--seeds, --epochs and --steps_per_epoch must be given and positive.")
    load_before = load_average()
    runs = []
    with tempfile.TemporaryDirectory(prefix="reid_tf_bench_mp_") as folder:
        for seed in seeds:
            for policy in policies:
                output = os.path.join(folder, f"{policy}_{seed}")
                os.makedirs(output)
                runs.append(run_training(policy, seed, args.epochs, args.steps_per_epoch,
                                         output))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary = {}
    for policy in policies:
        mine = [run for run in runs if run["policy"] == policy]
        maps = [run["mAP"] for run in mine]
        summary[policy] = {
            "mAP_mean": round(statistics.mean(maps), 4),
            "mAP_spread": round(max(maps) - min(maps), 4),
            "training_images_per_second": round(
                statistics.mean(run["training_images_per_second"] for run in mine), 1)}
    emit({
        "benchmark": "mixed_precision_quickstart",
        "recipe": "configs/quickstart.flags (MSINet 64x32, synthetic)",
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "seeds": seeds,
        "policies": summary,
        "runs": runs,
        "load_before": load_before,
        "load_after": load_average(),
    })


if __name__ == "__main__":
    main()
