"""Learning parity of reid-tf's CM-NAS training with the reference code (JDAI-CV/CM-NAS).

From the same weights (the reference's seeded initial state dict through
``reid_tf.convert.cmnas``) on the same batch (P identities x K visible + K infrared images of a
synthetic SYSU-MM01 tree, augmentation off, visible half first), in float64 and in float32, it
compares the first step's loss terms (CE, four-term triplet, 5 SP, 0.05 CMMD) and training
features, the gradient of every parameter, the BN running statistics of every switchable BN set
(visible / thermal / sharable) after the first forward pass, and the weights after ``--steps``
Adam steps of the recipe's optimiser (three groups, backbone at 0.1 x lr, coupled weight decay,
betas (0.5, 0.999), epoch-index-0 warm-up rate) and the EMA shadow (0.997), the reference's ``train_eval.py`` step against
reid-tf's ``Trainer`` as ``solution.py`` builds it.

The reference half (``benchmarks/parity/cmnas_reference_side.py``) runs in a subprocess with the
reference checkout first on ``PYTHONPATH`` (torch only: its ``models``, ``losses`` and
``utils.lr_scheduler``); the project half (``benchmarks/parity/cmnas_project_side.py``) never
imports the reference.

    python benchmarks/parity_cmnas.py --reference_path /path/to/CM-NAS --work_folder /tmp/p
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = os.path.join(ROOT, "benchmarks", "parity")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # this checkout's reid_tf
LOSS_NAMES = {"ce": "classification", "triplet": "triplet", "sp": "sp", "cmmd": "cmmd",
              "total": "total"}


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_path", required=True, help="checkout of JDAI-CV/CM-NAS")
    parser.add_argument("--reference_python", default=sys.executable,
                        help="Python with torch for the reference")
    parser.add_argument("--work_folder", required=True, help="folder for the data and results")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs/cmnas/"
                                                         "split_stem_layer1.cfg"),
                        help="CM-NAS .cfg (default: stem and layer1 split, the rest shared)")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--steps", type=int, default=3, help="Adam steps compared")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--project_side", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _reference(options, *arguments):
    if not os.path.isfile(os.path.join(options.reference_path, "models", "model_eval_op.py")):
        raise SystemExit(f"error: --reference_path {options.reference_path!r} is not a CM-NAS "
                         "checkout (no models/model_eval_op.py)")
    environment = dict(os.environ, PYTHONPATH=os.path.abspath(options.reference_path))
    command = [options.reference_python, os.path.join(SIDES, "cmnas_reference_side.py"),
               options.work_folder, *map(str, arguments)]
    result = subprocess.run(command, cwd=options.reference_path, env=environment,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"reference side failed: {result.stderr[-3000:]}")


def _project(options, dtype):
    command = [sys.executable, os.path.abspath(__file__), "--reference_path",
               options.reference_path, "--work_folder", options.work_folder, "--config",
               options.config, "--steps", str(options.steps), "--height", str(options.height),
               "--width", str(options.width), "--project_side", dtype]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"project side ({dtype}) failed: {result.stderr[-3000:]}")


def project_side(options):
    sys.path.insert(0, SIDES)
    import cmnas_project_side as project

    record = project.run_project(options.work_folder, options.config, options.height,
                                 options.width, options.steps, options.project_side)
    np.savez(os.path.join(options.work_folder, f"project_{options.project_side}.npz"), **record)


def _summary(errors):
    values = np.array(list(errors.values())) if errors else np.zeros(1)
    return {"count": len(errors), "max": float(values.max()), "median": float(np.median(values))}


def compare(options, dtype):
    sys.path.insert(0, SIDES)
    import cmnas_project_side as project

    work = options.work_folder
    reference = dict(np.load(os.path.join(work, f"reference_{dtype}.npz")))
    mine = dict(np.load(os.path.join(work, f"project_{dtype}.npz")))
    initial = dict(np.load(os.path.join(work, "reference_init.npz")))
    error = project.relative_error
    result = {"losses": {name: {"reference": float(reference[f"loss/{name}"]),
                                "project": float(mine[f"loss/{LOSS_NAMES[name]}"]),
                                "relative_error": error(mine[f"loss/{LOSS_NAMES[name]}"],
                                                        reference[f"loss/{name}"])}
                         for name in LOSS_NAMES}}
    result["features"] = {name: error(mine[f"features/{name}"], reference[f"features/{name}"])
                          for name in ("global_feat", "feat")}

    gradients = project.keras_layout(reference, "grad/")
    project_gradients = {key[len("grad/"):]: value for key, value in mine.items()
                         if key.startswith("grad/")}
    result["gradients_without_partner"] = sorted(set(gradients) ^ set(project_gradients))
    gradient_errors = {name: error(project_gradients[name], gradients[name])
                       for name in gradients if name in project_gradients}
    result["gradients"] = _summary(gradient_errors)
    result["gradients"]["worst"] = sorted(gradient_errors, key=gradient_errors.get)[-3:]

    bn_reference = project.keras_layout(reference, "bn_first/")
    bn_errors = {}
    for name, value in bn_reference.items():
        set_name = name.split("/")[-2] if "_bn/" in name else "bnneck"
        bn_errors.setdefault(set_name, {})[name] = error(mine[f"bn_first/{name}"], value)
    result["bn_statistics_after_first_forward"] = {key: _summary(value)
                                                   for key, value in bn_errors.items()}

    result["learning_rates"] = {"reference (backbone, bnneck, classifier)":
                                reference["learning_rates"].tolist(),
                                "project (backbone, head)": mine["learning_rates"].tolist()}
    result["step_losses"] = {"reference": reference["step_losses"].tolist(),
                             "project": mine["step_losses"].tolist()}
    final_reference = project.keras_layout(reference, "final/")
    init = project.keras_layout(initial, "")
    final_mine = {key[len("final/"):]: value for key, value in mine.items()
                  if key.startswith("final/")}
    update_errors, unchanged = {}, {"reference": 0, "project": 0, "total": 0}
    for name, value in final_reference.items():
        reference_update = value - init[name]
        project_update = final_mine[name] - init[name]
        if not np.any(reference_update):
            unchanged["total"] += 1
            unchanged["reference"] += 1
            unchanged["project"] += int(not np.any(project_update))
            continue
        update_errors[name] = error(project_update, reference_update)
    result["weight_updates_after_steps"] = _summary(update_errors)
    result["weight_updates_after_steps"]["worst"] = sorted(update_errors,
                                                           key=update_errors.get)[-3:]
    result["weights_after_steps"] = _summary({name: error(final_mine[name], value)
                                              for name, value in final_reference.items()})
    result["tensors_the_reference_leaves_unchanged"] = unchanged
    ema_reference = project.keras_layout(reference, "ema/")
    if ema_reference and any(key.startswith("ema/") for key in mine):
        ema_errors = {name: error(mine[f"ema/{name}"] - init[name], value - init[name])
                      for name, value in ema_reference.items() if np.any(value - init[name])}
        result["ema_shadow_changes_after_steps"] = _summary(ema_errors)
    return result


def noise_floor(options):
    """The float32 reference against the float64 reference (and the float32 project against
    the float64 reference): how much float32 rounding alone moves each quantity."""
    sys.path.insert(0, SIDES)
    import cmnas_project_side as project

    work = options.work_folder
    exact = dict(np.load(os.path.join(work, "reference_float64.npz")))
    initial = project.keras_layout(dict(np.load(os.path.join(work, "reference_init.npz"))), "")
    exact_gradients = project.keras_layout(exact, "grad/")
    exact_final = project.keras_layout(exact, "final/")
    result = {}
    for label, path, layout in (
            ("reference float32", "reference_float32.npz", True),
            ("project float32", "project_float32.npz", False)):
        other = dict(np.load(os.path.join(work, path)))
        if layout:
            gradients = project.keras_layout(other, "grad/")
            final = project.keras_layout(other, "final/")
        else:
            gradients = {k[len("grad/"):]: v for k, v in other.items() if k.startswith("grad/")}
            final = {k[len("final/"):]: v for k, v in other.items() if k.startswith("final/")}
        updates = {name: project.relative_error(final[name] - initial[name],
                                                value - initial[name])
                   for name, value in exact_final.items() if np.any(value - initial[name])}
        result[label] = {
            "gradients": _summary({name: project.relative_error(gradients[name], value)
                                   for name, value in exact_gradients.items()}),
            "weight_updates_after_steps": _summary(updates),
            "step_losses": other["step_losses"].tolist()}
    return result


def main(argv=None):
    options = parse_arguments(argv)
    options.work_folder = os.path.abspath(options.work_folder)
    options.config = os.path.abspath(options.config)
    if options.project_side:
        return project_side(options)
    os.makedirs(options.work_folder, exist_ok=True)
    sys.path.insert(0, SIDES)
    import cmnas_project_side as project

    project.prepare_batch(options.work_folder, options.config, options.height, options.width)
    _reference(options, "init", options.seed)
    project.convert_initial_state(options.work_folder, options.config, options.height,
                                  options.width)
    results = {}
    for dtype in [value for value in options.dtypes.split(",") if value]:
        _reference(options, "steps", options.seed, dtype, options.steps)
        _project(options, dtype)
        results[dtype] = compare(options, dtype)
        print(json.dumps({dtype: results[dtype]}, indent=1), flush=True)
    if {"float32", "float64"} <= set(results):
        results["float32_against_float64_reference"] = noise_floor(options)
        print(json.dumps({"float32_against_float64_reference":
                          results["float32_against_float64_reference"]}, indent=1), flush=True)
    with open(os.path.join(options.work_folder, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
