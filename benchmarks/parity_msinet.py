"""Learning parity of reid-tf's MSINet training with the reference code (vimar-gu/MSINet).

Two checks, both on the synthetic Market-1501 tree (``load_dataset("Synthetic", "",
num_train_identities=100, num_test_identities=50)``: 1,420 train, 210 query, 523 gallery
images, written in the real folder layout that the reference's ``Market1501`` reads too):

* ``--mode steps`` — step by step, where noise cannot hide anything: the reference's initial
  weights (``msinet_x1_0`` after ``train.py``'s seeding) converted with ``reid_tf.convert``,
  the same fixed batches on both sides (the project's sampler and loader, no augmentation), then
  the first step's loss terms, features and per-parameter gradients, the reference
  ``do_train`` against ``solution.py``'s training path for 20 steps (4 epochs of 5 steps:
  warm-up, a milestone, momentum across learning-rate changes), the weights and BN statistics
  after them, the evaluation features and the metrics of both evaluations;
* ``--mode sampler`` — the epoch length: how many batches the reference sampler really yields
  per epoch (and what it prints) against the project's msinet sampler, over many epochs;
* ``--mode table`` — end to end: the reference ``train.py`` and ``solution.py
  --flagfile=configs/msinet/market1501.flags`` with the recipe of issue 15 (64x32, batch 16x4,
  lr 0.02, 6 warm-up epochs, milestones 26/33, 40 epochs), several seeds a side, and the table
  of mAP / rank-1 per seed and their means. Each run takes about 10 minutes on 2 cores;
  ``--cpu_lock /tmp/reid_cpu.lock`` runs each under ``flock`` so other work can interleave.

The reference runs on the CPU: the script writes a ``sitecustomize.py`` into
``<work_folder>/shim`` (``.cuda()`` becomes a no-op; numpy 2's refusal of ``np.sum(generator)``
in the reference's ``count_parameters`` is worked around; torchvision's compiled-op
registrations are skipped, since only ``torchvision.transforms`` is used) and puts it first on
the reference Python's ``PYTHONPATH``. ``--reference_python`` needs torch and torchvision
(``--reference_pythonpath`` adds folders, e.g. an unpacked torchvision wheel). Nothing of the
reference is copied into the project; its files are only run.

Usage::

    python benchmarks/parity_msinet.py --reference_path /path/to/MSINet \
        --work_folder /tmp/parity --mode steps
    python benchmarks/parity_msinet.py --reference_path /path/to/MSINet \
        --work_folder /tmp/parity --mode table --seeds 0,1,2 --cpu_lock /tmp/reid_cpu.lock
"""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, os.path.join(HERE, "parity")):
    if path not in sys.path:
        sys.path.insert(0, path)

import reid_tf  # noqa: E402,F401  (project convention: first import; selects tf-keras)

SHIM = '''"""CPU shim for running the reference on a CPU-only torch (written by parity_msinet.py)."""
import sys
import types

for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
try:
    import torch
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
except ImportError:
    pass
try:
    import numpy as _np
    _sum = _np.sum

    def _generator_sum(a, *args, **kwargs):
        return _sum(list(a) if isinstance(a, types.GeneratorType) else a, *args, **kwargs)

    _np.sum = _generator_sum
except ImportError:
    pass
'''

# 20 steps as 4 epochs of 5: the recipe's warm-up rates of epochs 0-3 (2e-4, 3.5e-3, 6.8e-3,
# 1.01e-2), so the rate changes at every epoch boundary, with the momentum buffer carried over.
STEP_EPOCHS = (5, 5, 5, 5)
STEP_RECIPE = {"lr": 0.02, "warmup": 6, "milestones": (26, 33)}
TABLE_RECIPE = {"height": 64, "width": 32, "lr": 0.02, "epochs": 40, "warmup": 6,
                "milestones": (26, 33)}


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_path", required=True,
                        help="checkout of vimar-gu/MSINet (its train.py and reid/)")
    parser.add_argument("--reference_python", default=sys.executable,
                        help="Python with torch and torchvision for the reference")
    parser.add_argument("--reference_pythonpath", default="",
                        help="extra PYTHONPATH folders for the reference Python")
    parser.add_argument("--work_folder", required=True,
                        help="folder for the data, the runs and the logs (outside the project)")
    parser.add_argument("--mode", choices=("steps", "sampler", "table"), default="steps")
    parser.add_argument("--seeds", default="0,1,2", help="table: comma-separated seeds")
    parser.add_argument("--seed", type=int, default=0, help="steps/sampler: the seed")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=TABLE_RECIPE["epochs"],
                        help="table: epochs of every run (the recipe: 40; fewer for a smoke test)")
    parser.add_argument("--sides", default="reference,project",
                        help="table: which sides to run (finished runs are reused)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="steps: precision of both sides (float64 removes the rounding "
                             "noise that the network amplifies; float32 is what training uses)")
    parser.add_argument("--cpu_lock", default="",
                        help="run every long run under `flock FILE` (shared machines)")
    parser.add_argument("--project_flags", default="",
                        help="table: extra solution.py flags (space-separated)")
    options = parser.parse_args(argv)
    if options.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {options.epochs}")
    TABLE_RECIPE["epochs"] = options.epochs
    if not os.path.isfile(os.path.join(options.reference_path, "train.py")):
        parser.error(f"--reference_path {options.reference_path} has no train.py")
    options.work_folder = os.path.abspath(options.work_folder)
    os.makedirs(options.work_folder, exist_ok=True)
    return options


# ------------------------------------------------------------------------------ reference runs
def _reference_environment(options):
    shim = os.path.join(options.work_folder, "shim")
    os.makedirs(shim, exist_ok=True)
    with open(os.path.join(shim, "sitecustomize.py"), "w") as handle:
        handle.write(SHIM)
    environment = dict(os.environ)
    parts = [shim] + [part for part in options.reference_pythonpath.split(":") if part]
    environment["PYTHONPATH"] = ":".join(parts)
    return environment


def _locked(options, command):
    return (["flock", options.cpu_lock] + command) if options.cpu_lock else command


def run_reference_side(options, command, *extra):
    """Run ``parity/reference_side.py COMMAND``; returns its last output line as JSON."""
    arguments = [options.reference_python, os.path.join(HERE, "parity", "reference_side.py"),
                 command, "--reference_path", os.path.abspath(options.reference_path),
                 "--work_folder", options.work_folder, *[str(value) for value in extra]]
    result = subprocess.run(_locked(options, arguments), env=_reference_environment(options),
                            capture_output=True, text=True)
    log = os.path.join(options.work_folder, f"reference_{command}.log")
    with open(log, "w") as handle:
        handle.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"reference_side.py {command} failed (see {log}):\n"
                           f"{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ steps mode
def _summary(errors):
    worst = max(errors, key=errors.get)
    return {"count": len(errors), "max": errors[worst], "worst": worst,
            "median": float(sorted(errors.values())[len(errors) // 2])}


def steps_mode(options):
    import numpy as np

    import project_side as project

    work = options.work_folder
    cache = os.path.join(work, "cache")
    float64 = options.dtype == "float64"
    dataframe = project.load_synthetic(cache)
    num_classes = project.prepare_batches(dataframe, work, options.height, options.width,
                                          options.seed, STEP_EPOCHS)
    run_reference_side(options, "init", "--seed", options.seed, "--num_classes", num_classes)
    init_path = project.convert_initial_state(work, options.seed, num_classes, options.height,
                                              options.width)
    reference_result = run_reference_side(
        options, "train", "--seed", options.seed, "--num_classes", num_classes,
        "--lr", STEP_RECIPE["lr"], "--warmup_step", STEP_RECIPE["warmup"],
        "--milestones", *STEP_RECIPE["milestones"], *(["--float64"] if float64 else []))
    reference = np.load(os.path.join(work, f"reference_steps_{options.dtype}.npz"))
    if float64:
        project.use_float64()

    values = project.project_flags(
        cache, os.path.join(work, f"project_steps_{options.dtype}"), options.height, options.width, options.seed,
        extra=[f"--learning_rate_base={STEP_RECIPE['lr']}",
               f"--learning_rate_warmup_epochs={STEP_RECIPE['warmup']}",
               "--learning_rate_milestones=" + ",".join(map(str, STEP_RECIPE["milestones"])),
               f"--epoch_num={len(STEP_EPOCHS)}",
               f"--evaluate_testing_every_N_epochs={len(STEP_EPOCHS)}",
               f"--pretrained_model_file_path={init_path}", "--overwrite_output_folder",
               "--save_data_to_disk", "--export_formats="])
    batches = np.load(os.path.join(work, "batches.npz"))
    report = {"recipe": {"steps_per_epoch": list(STEP_EPOCHS), **STEP_RECIPE,
                         "height": options.height, "width": options.width,
                         "seed": options.seed, "dtype": options.dtype}}

    # 1. the first step: loss terms, features, gradients
    terms, gradients, features = project.first_step(values, num_classes, init_path,
                                                    batches["images_nhwc"][0],
                                                    batches["labels"][0])
    report["first_step_losses"] = {
        name: {"project": value, "reference": float(reference[f"first/{name}"]),
               "relative_error": abs(value - float(reference[f"first/{name}"]))
               / abs(float(reference[f"first/{name}"]))}
        for name, value in terms.items()}
    report["first_step_features"] = {
        name: project.relative_error(features[name], reference[f"first_features/{name}"])
        for name in features}
    reference_gradients = {key[len("grad/"):]: reference[key] for key in reference.files
                           if key.startswith("grad/")}
    gradient_layout, _ = project.reference_in_keras_layout(values, num_classes,
                                                           reference_gradients)
    gradient_errors = project.compare_arrays(gradients, gradient_layout)
    report["first_step_gradients"] = _summary(gradient_errors)
    report["first_step_gradients"]["project_only"] = sorted(set(gradients) -
                                                            set(gradient_layout))

    # 2. 20 steps through solution.py's training path and the reference do_train
    run_folder, results = project.train_on_fixed_batches(
        values, os.path.join(work, "batches.npz"), np.float64 if float64 else np.float32)
    final_model = project.build_from_flags(values, num_classes).training_model
    final_model.load_weights(os.path.join(run_folder, "training_model.h5"))
    final = {variable.name: variable.numpy() for variable in final_model.weights}
    initial_model = project.build_from_flags(values, num_classes).training_model
    initial_model.load_weights(init_path)
    initial = {variable.name: variable.numpy() for variable in initial_model.weights}
    reference_state = {key[len("state/"):]: reference[key] for key in reference.files
                       if key.startswith("state/")}
    reference_final, _ = project.reference_in_keras_layout(values, num_classes, reference_state)
    trainable = {variable.name for variable in final_model.trainable_variables}
    statistics = {name for name in reference_final if "moving_" in name}
    weights = sorted(trainable & set(reference_final))
    report["weights_after_20_steps"] = _summary(project.compare_arrays(final, reference_final,
                                                                       weights))
    updates = {name: final[name] - initial[name] for name in weights}
    reference_updates = {name: reference_final[name] - initial[name] for name in weights}
    moved = [name for name in weights if np.any(reference_updates[name])]
    report["updates_after_20_steps"] = _summary(project.compare_arrays(updates,
                                                                       reference_updates, moved))
    report["bn_statistics_after_20_steps"] = _summary(project.compare_arrays(
        final, reference_final, sorted(statistics)))
    frozen = sorted(set(reference_final) - trainable - statistics)
    report["frozen_after_20_steps"] = {name: project.relative_error(final[name],
                                                                    reference_final[name])
                                       for name in frozen}

    # 3. losses per epoch, learning rates, evaluation features and metrics
    import pandas as pd
    history = pd.read_csv(os.path.join(run_folder, "history.csv"))
    starts = np.cumsum((0,) + STEP_EPOCHS)
    reference_losses = reference["step_losses"]
    report["epoch_mean_losses"] = [
        {"project": float(history["loss"].iloc[epoch]),
         "reference": float(reference_losses[starts[epoch]:starts[epoch + 1]].mean())}
        for epoch in range(len(STEP_EPOCHS))]
    report["learning_rates"] = {"project": [float(value) for value in history["learning_rate"]],
                                "reference": [float(value) for value in
                                              reference["epoch_learning_rates"]]}
    test = np.load(os.path.join(run_folder, "test.npz"))
    project_features = np.concatenate([test["query_image_features_array"],
                                       test["gallery_image_features_array"]])
    report["evaluation_features"] = project.relative_error(project_features,
                                                           reference["test_features"])
    report["evaluation_of_the_reference_features"] = project.evaluate_reference_features(
        dataframe, reference["test_features"], float(reference["mAP"]),
        float(reference["cmc"][0]))
    trained = results["trained"]
    report["evaluation"] = {"project": {"mAP": trained["mAP"], "rank1": trained["rank1"]},
                            "reference": {"mAP": reference_result["mAP"],
                                          "rank1": reference_result["rank1"]}}
    other = os.path.join(work, "reference_steps_float64.npz")
    if not float64 and os.path.isfile(other):
        report["reference_float32_vs_float64"] = _reference_noise(
            values, num_classes, reference, np.load(other), gradient_layout, reference_final,
            weights, sorted(statistics))
    with open(os.path.join(work, f"steps_report_{options.dtype}.json"), "w") as handle:
        json.dump(report, handle, indent=2, default=float)
    print_steps_report(report)
    return report


def _reference_noise(values, num_classes, reference32, reference64, gradients32, final32,
                     weights, statistics):
    """The reference against itself, float32 against float64: the rounding noise floor."""
    import project_side as project

    gradients64, _ = project.reference_in_keras_layout(
        values, num_classes, {key[len("grad/"):]: reference64[key] for key in reference64.files
                              if key.startswith("grad/")})
    final64, _ = project.reference_in_keras_layout(
        values, num_classes, {key[len("state/"):]: reference64[key] for key in reference64.files
                              if key.startswith("state/")})
    return {
        "first_step_gradients": _summary(project.compare_arrays(gradients32, gradients64)),
        "weights_after_20_steps": _summary(project.compare_arrays(final32, final64, weights)),
        "bn_statistics_after_20_steps": _summary(project.compare_arrays(final32, final64,
                                                                        statistics)),
        "evaluation_features": project.relative_error(reference32["test_features"],
                                                      reference64["test_features"]),
    }


def print_steps_report(report):
    print("\nfirst step, loss terms (project / reference / relative error):")
    for name, entry in report["first_step_losses"].items():
        print(f"  {name:15s} {entry['project']:.7f} {entry['reference']:.7f} "
              f"{entry['relative_error']:.2e}")
    print("first step, training features (relative error):",
          {name: f"{value:.2e}" for name, value in report["first_step_features"].items()})
    for key in ("first_step_gradients", "weights_after_20_steps", "updates_after_20_steps",
                "bn_statistics_after_20_steps"):
        entry = report[key]
        print(f"{key}: {entry['count']} tensors, max relative error {entry['max']:.2e} "
              f"({entry['worst']}), median {entry['median']:.2e}")
    print("epoch mean losses (project / reference):",
          [(round(e["project"], 5), round(e["reference"], 5))
           for e in report["epoch_mean_losses"]])
    print("learning rates:", report["learning_rates"])
    print(f"evaluation features relative error {report['evaluation_features']:.2e}; metrics",
          report["evaluation"])
    print("the reference's final features evaluated by both evaluations:",
          report["evaluation_of_the_reference_features"])
    noise = report.get("reference_float32_vs_float64")
    if noise:
        print("noise floor, the reference float32 against float64:")
        for key in ("first_step_gradients", "weights_after_20_steps",
                    "bn_statistics_after_20_steps"):
            print(f"  {key}: max {noise[key]['max']:.2e} ({noise[key]['worst']}), median "
                  f"{noise[key]['median']:.2e}")
        print(f"  evaluation_features: {noise['evaluation_features']:.2e}")


# ------------------------------------------------------------------------------ sampler mode
def sampler_mode(options, epochs=2000):
    import collections

    import project_side as project
    from reid_tf.data.sampler import PKSampler

    dataframe = project.load_synthetic(os.path.join(options.work_folder, "cache"))
    reference = run_reference_side(options, "sampler", "--data_dir",
                                   project.market_root(dataframe), "--seed", options.seed,
                                   "--sampler_epochs", epochs)
    train = dataframe[dataframe["split"] == "train"].reset_index(drop=True)
    sampler = PKSampler.from_dataframe(train, 16, 4, seed=options.seed, policy="msinet")
    counts = collections.Counter(sampler.num_batches(epoch) for epoch in range(epochs))
    result = {"reference": reference,
              "project": {"batches_per_epoch": {str(key): value
                                                for key, value in sorted(counts.items())},
                          "epochs": epochs}}
    print(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------------------ table mode
def _reference_train_command(options, seed, data_dir, logs_dir):
    recipe = TABLE_RECIPE
    return [options.reference_python, "train.py", "-ds", "market1501", "--data-dir", data_dir,
            "--height", str(recipe["height"]), "--width", str(recipe["width"]),
            "--lr", str(recipe["lr"]), "-b", "64", "--num-instance", "4",
            "--epochs", str(recipe["epochs"]), "--milestones",
            *[str(value) for value in recipe["milestones"]], "50",
            "--warmup-step", str(recipe["warmup"]), "--eval-interval", str(recipe["epochs"]),
            "--seed", str(seed), "--logs-dir", logs_dir, "-j", "2"]


def _project_train_command(options, seed, cache, output_folder):
    import project_side as project

    recipe = TABLE_RECIPE
    return [sys.executable, os.path.join(ROOT, "solution.py"),
            f"--flagfile={os.path.join(ROOT, 'configs/msinet/market1501.flags')}",
            "--dataset_name=Synthetic",
            f"--dataset_options={project.dataset_options_flag(cache)}",
            f"--image_height={recipe['height']}", f"--image_width={recipe['width']}",
            f"--learning_rate_base={recipe['lr']}", f"--epoch_num={recipe['epochs']}",
            "--learning_rate_milestones=" + ",".join(map(str, recipe["milestones"])),
            f"--learning_rate_warmup_epochs={recipe['warmup']}",
            f"--evaluate_testing_every_N_epochs={recipe['epochs']}", f"--seed={seed}",
            f"--output_folder_path={output_folder}", "--overwrite_output_folder",
            "--export_formats=", *[flag for flag in options.project_flags.split() if flag]]


def _reference_metrics(log_path):
    text = open(log_path).read()
    mean_ap = re.findall(r"mAP: ([0-9.]+)%", text)
    rank1 = re.findall(r"Rank-1\s*:([0-9.]+)%", text)
    steps = re.findall(r"Iteration\[0/(\d+)\]", text)
    if not mean_ap or not rank1:
        return None
    return {"mAP": float(mean_ap[-1]) / 100, "rank1": float(rank1[-1]) / 100,
            "printed_steps_per_epoch": int(steps[-1]) if steps else None}


def _project_metrics(run_folder):
    path = os.path.join(run_folder, "evaluation.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        record = json.load(handle)
    history = os.path.join(run_folder, "history.csv")
    steps = None
    if os.path.isfile(history):
        import pandas as pd
        steps = sorted(set(int(value) for value in pd.read_csv(history)["steps"]))
    if record.get("tag") != f"training_B_epoch{TABLE_RECIPE['epochs']}":
        return None
    return {"mAP": record["mAP"], "rank1": record["rank1"], "steps_per_epoch": steps}


def table_mode(options):
    import project_side as project

    work = options.work_folder
    cache = os.path.join(work, "cache")
    dataframe = project.load_synthetic(cache)
    data_dir = project.market_root(dataframe)
    seeds = [int(value) for value in options.seeds.split(",") if value]
    sides = set(options.sides.split(","))
    rows = {}
    for seed in seeds:
        row = rows.setdefault(seed, {})
        if "reference" in sides:
            logs_dir = os.path.join(work, f"table_reference_seed{seed}")
            log = os.path.join(logs_dir, "log.txt")
            if not (os.path.isfile(log) and _reference_metrics(log)):
                os.makedirs(logs_dir, exist_ok=True)
                result = subprocess.run(
                    _locked(options, _reference_train_command(options, seed, data_dir,
                                                              logs_dir)),
                    cwd=options.reference_path, env=_reference_environment(options),
                    capture_output=True, text=True)
                with open(os.path.join(logs_dir, "stdout.txt"), "w") as handle:
                    handle.write(result.stdout + result.stderr)
                if result.returncode != 0:
                    raise RuntimeError(f"reference train.py (seed {seed}) failed: "
                                       f"{result.stderr[-2000:]}")
            row["reference"] = _reference_metrics(log)
        if "project" in sides:
            output = os.path.join(work, f"table_project_seed{seed}")
            run_folder = os.path.join(output, "Synthetic_msinet")
            if not _project_metrics(run_folder):
                result = subprocess.run(_locked(options, _project_train_command(
                    options, seed, cache, output)), cwd=ROOT, capture_output=True, text=True)
                os.makedirs(output, exist_ok=True)
                with open(os.path.join(output, "stdout.txt"), "w") as handle:
                    handle.write(result.stdout + result.stderr)
                if result.returncode != 0:
                    raise RuntimeError(f"solution.py (seed {seed}) failed: "
                                       f"{result.stderr[-2000:]}")
            row["project"] = _project_metrics(run_folder)
        print(json.dumps({"seed": seed, **row}), flush=True)
    print_table(rows)
    with open(os.path.join(work, "table.json"), "w") as handle:
        json.dump({str(seed): row for seed, row in rows.items()}, handle, indent=2)
    return rows


def print_table(rows):
    def cell(entry):
        if not entry:
            return "—"
        return f"{100 * entry['mAP']:.1f}% / {100 * entry['rank1']:.1f}%"

    print("\n| seed | reference mAP / rank-1 | reid-tf mAP / rank-1 |")
    print("|---|---|---|")
    for seed, row in rows.items():
        print(f"| {seed} | {cell(row.get('reference'))} | {cell(row.get('project'))} |")
    means = {}
    for side in ("reference", "project"):
        entries = [row[side] for row in rows.values() if row.get(side)]
        if entries:
            means[side] = {key: sum(entry[key] for entry in entries) / len(entries)
                           for key in ("mAP", "rank1")}
    print(f"| mean | {cell(means.get('reference'))} | {cell(means.get('project'))} |")
    if len(means) == 2:
        print(f"\nreid-tf minus reference: mAP "
              f"{100 * (means['project']['mAP'] - means['reference']['mAP']):+.1f} points, "
              f"rank-1 {100 * (means['project']['rank1'] - means['reference']['rank1']):+.1f} "
              "points")


def main(argv=None):
    options = _arguments(argv)
    {"steps": steps_mode, "sampler": sampler_mode, "table": table_mode}[options.mode](options)


if __name__ == "__main__":
    main()
