"""Whole-epoch throughput of the real training loop (``solution.py``) beside the reference.

For each image size (``--sizes``, e.g. ``64x32,128x64,256x128``) and recipe (``--recipes``:
``msinet`` = ``configs/msinet/market1501.flags``, ``flipreid`` = the FlipReID ResNet-50 recipe
``configs/flipreid/market1501_resnet50.flags``, from random weights) this runs ``python solution.py`` for ``--epochs`` epochs
on the synthetic Market-1501 tree (``--dataset_name=Synthetic`` with ``--identities`` training
identities; ``--testing_size=0``: no evaluation) with ``REID_TF_EPOCH_TIMING`` set, and reports each
epoch's images/s and its split into waiting for input, the step and the rest
(:mod:`reid_tf.training.timing`). With ``--cache_images`` the runs also use the image cache.

``--step`` adds the isolated training step of the MSINet recipe at the same size and batch
(``bench_train_msinet.py``: fixed inputs, no pipeline): the floor of the loop.
``--reference`` adds the reference MSINet ``train.py`` (``--reference_root``, read-only) on the
same tree, same epochs, on the CPU: its ``.cuda()`` calls are no-ops and its epochs timed by a
``sitecustomize.py`` this script writes into its temporary folder (outside the project), with
torchvision from ``--torchvision_path`` (its python files; the compiled-op registrations are
skipped), ``--reference_workers`` DataLoader workers and ``OMP_WAIT_POLICY`` from
``--reference_omp_wait_policy`` (default ``PASSIVE``: see NOTES.md, "Epoch throughput"). ``--search`` adds one epoch of ``python -m nas.search``
(``configs/nas/synthetic_quick.flags``). ``--steps_per_epoch N`` caps both loops at N steps
(the reference through ``REF_STEPS``). Prints one JSON line per run and a summary table.
"""
import argparse
import csv
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"msinet": "configs/msinet/market1501.flags",
           "flipreid": "configs/flipreid/market1501_resnet50.flags"}


# Written into a temporary folder (outside the project) put first on the reference's PYTHONPATH.
REFERENCE_SITECUSTOMIZE = '''\
# Run the reference MSINet train.py on a CPU and time its epochs (bench_epoch.py).
# torchvision's C-op registrations are skipped; .cuda() is a no-op; numpy 2's np.sum(generator)
# is given a list; each epoch's time
# (model.train() .. lr_scheduler.step(); wall and this process's CPU time) is appended to $REF_EPOCH_TIMING as a JSON line;
# $REF_STEPS caps the batches of an epoch; at torch.save (after the last epoch, before its
# evaluation) the process exits.
import itertools, json, os, sys, time, types
# torchvision's compiled-op registrations do not load against this torch; only its
# transforms are used.
for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))
import numpy as np
import torch

torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
_sum = np.sum
np.sum = lambda x, *a, **k: _sum(list(x) if hasattr(x, "__next__") else x, *a, **k)

_record = os.environ.get("REF_EPOCH_TIMING")
_steps = int(os.environ.get("REF_STEPS", "0") or 0)
_state = {"start": None, "steps": 0, "batch": 0, "epoch": 0}

_train = torch.nn.Module.train
def _timed_train(self, mode=True):
    if mode and _state["start"] is None and type(self).__name__.lower().startswith("msinet"):
        _state.update(start=time.perf_counter(), cpu=time.process_time(), steps=0)
    return _train(self, mode)
torch.nn.Module.train = _timed_train

_backward = torch.Tensor.backward
def _counted_backward(self, *a, **k):
    _state["steps"] += 1
    return _backward(self, *a, **k)
torch.Tensor.backward = _counted_backward

import torch.utils.data as _data
_iter = _data.DataLoader.__iter__
def _capped_iter(self):
    _state["batch"] = self.batch_size or 0
    iterator = _iter(self)
    return itertools.islice(iterator, _steps) if _steps else iterator
_data.DataLoader.__iter__ = _capped_iter

from torch.optim import lr_scheduler as _lrs
_step = _lrs.LRScheduler.step
def _timed_step(self, *a, **k):
    if _state["start"] is not None:
        seconds = time.perf_counter() - _state["start"]
        _state["epoch"] += 1
        if _record:
            with open(_record, "a") as handle:
                handle.write(json.dumps({"epoch": _state["epoch"], "steps": _state["steps"],
                                         "images": _state["steps"] * _state["batch"],
                                         "total_seconds": seconds,
                                         "cpu_seconds": time.process_time() - _state["cpu"]})
                             + "\\n")
        _state["start"] = None
    return _step(self, *a, **k)
_lrs.LRScheduler.step = _timed_step

_save = torch.save
def _exit_at_save(*a, **k):
    os._exit(0)
torch.save = _exit_at_save
'''


def synthetic_tree(cache_folder, identities):
    """Generate (once) the synthetic Market-1501 tree; returns the folder holding
    ``Market-1501-v15.09.15``."""
    sys.path.insert(0, ROOT)
    import reid_tf  # noqa: F401
    from reid_tf.data.registry import load_dataset
    load_dataset("Synthetic", "", num_train_identities=identities,
                 cache_folder_path=cache_folder)
    found = sorted(glob.glob(os.path.join(cache_folder, "**", "Market-1501-v15.09.15"),
                             recursive=True))
    if not found:
        raise SystemExit(f"error: no Market-1501-v15.09.15 folder under {cache_folder}")
    return os.path.dirname(found[0])


def children_cpu_seconds():
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_records(path):
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def run_reid_tf(args, recipe, height, width, cache_folder, folder, cache_images):
    timing = os.path.join(folder, f"timing_{recipe}_{height}x{width}_{int(cache_images)}.jsonl")
    command = [sys.executable, "solution.py", f"--flagfile={RECIPES[recipe]}",
               "--dataset_name=Synthetic",
               f"--dataset_options=num_train_identities={args.identities},"
               f"cache_folder_path={cache_folder}",
               f"--image_height={height}", f"--image_width={width}",
               f"--epoch_num={args.epochs}", "--testing_size=0",
               f"--steps_per_epoch={args.steps_per_epoch}",
               f"--output_folder_path={os.path.join(folder, 'runs')}",
               "--overwrite_output_folder", f"--workers={args.workers}"]
    if recipe == "flipreid":
        command += ["--freeze_backbone_for_N_epochs=0", "--backbone_weights_file_path="]
    if cache_images:
        command.append("--cache_images")
    started, cpu = time.perf_counter(), children_cpu_seconds()
    result = subprocess.run(command, cwd=args.project_root,
                            env=dict(os.environ, REID_TF_EPOCH_TIMING=timing),
                            capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    if result.returncode:
        raise SystemExit(f"error: solution.py failed ({result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    epochs = read_records(timing)
    # history.csv's images_per_second: images over the epoch's loop (input and steps, without
    # the end-of-epoch work); the one figure a checkout without reid_tf.training.timing has.
    backbone = "msinet" if recipe == "msinet" else "resnet50"
    with open(os.path.join(folder, "runs", f"Synthetic_{backbone}", "history.csv")) as handle:
        history = [{"steps": int(row["steps"]), "images_per_second_of_steps":
                    float(row["images_per_second"])} for row in csv.DictReader(handle)]
    if not epochs:
        epochs = history
    else:
        for epoch, row in zip(epochs, history):
            epoch["images_per_second_of_steps"] = row["images_per_second_of_steps"]
    return {"run": "reid-tf", "recipe": recipe, "size": f"{height}x{width}",
            "cache_images": cache_images, "process_seconds": round(wall, 1),
            "process_cpu_seconds": round(cpu, 1),
            "project_root": args.project_root, "epochs": epochs}


def run_reference(args, height, width, tree, folder):
    timing = os.path.join(folder, f"reference_{height}x{width}.jsonl")
    site = os.path.join(folder, "reference_site")
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, "sitecustomize.py"), "w") as handle:
        handle.write(REFERENCE_SITECUSTOMIZE)
    python_path = os.pathsep.join([site, args.torchvision_path])
    environment = dict(os.environ, PYTHONPATH=python_path, REF_EPOCH_TIMING=timing,
                       REF_STEPS=str(args.steps_per_epoch), PYTHONDONTWRITEBYTECODE="1")
    if args.reference_omp_wait_policy:
        environment["OMP_WAIT_POLICY"] = args.reference_omp_wait_policy
    command = [sys.executable, "train.py", "-ds", "market1501", f"--data-dir={tree}",
               f"--logs-dir={os.path.join(folder, 'reference_logs')}", "-b", "64",
               "--num-instance", "4", f"--height={height}", f"--width={width}",
               f"--epochs={args.epochs}", "--eval-interval=1000000", "--print-freq=1000000",
               f"--workers={args.reference_workers}"]
    started, cpu = time.perf_counter(), children_cpu_seconds()
    result = subprocess.run(command, cwd=args.reference_root, env=environment,
                            capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    if result.returncode:
        raise SystemExit(f"error: reference train.py failed ({result.returncode}):\n"
                         f"{result.stderr[-3000:]}")
    return {"run": "reference", "recipe": "msinet", "size": f"{height}x{width}",
            "workers": args.reference_workers,
            "omp_wait_policy": args.reference_omp_wait_policy or None,
            "process_seconds": round(wall, 1),
            "process_cpu_seconds": round(cpu, 1),
            "epochs": read_records(timing)}


def run_step(args, height, width):
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_msinet.py"),
               "--batch_size", "64", "--height", str(height), "--width", str(width),
               "--num_classes", str(args.identities), "--repeats", "3", "--steps", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"error: bench_train_msinet.py failed:\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    return {"run": "isolated step", "recipe": "msinet", "size": f"{height}x{width}",
            "images_per_second": record.get("images_per_second"),
            "images_per_second_median": record.get("images_per_second_median"),
            "images_per_cpu_second": (round(64 / record["cpu_seconds_per_call"], 1)
                                      if record.get("cpu_seconds_per_call") else None)}


def run_search(args, cache_folder, folder):
    timing = os.path.join(folder, "timing_search.jsonl")
    command = [sys.executable, "-m", "nas.search", "--flagfile=configs/nas/synthetic_quick.flags",
               "--epoch_num=1", f"--output_folder_path={os.path.join(folder, 'search')}",
               "--overwrite_output_folder"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, REID_TF_EPOCH_TIMING=timing),
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"error: nas.search failed:\n{result.stderr[-3000:]}")
    return {"run": "nas.search", "process_seconds": round(wall, 1),
            "epochs": read_records(timing)}


def summary_line(record):
    if "epochs" not in record:
        return (f"{record['run']:>14} {record['size']:>8}  {record['images_per_second']} img/s"
                f" [{record.get('images_per_cpu_second')} img per CPU s]")
    parts = []
    for epoch in record["epochs"]:
        if "total_seconds" not in epoch:
            parts.append(f"{epoch['steps']} steps {epoch['images_per_second_of_steps']:.1f} "
                         "img/s (steps only, history.csv)")
            continue
        total = epoch["total_seconds"]
        rate = epoch["images"] / total if total else 0.0
        text = f"{epoch['steps']} steps {total:.1f} s {rate:.1f} img/s"
        if epoch.get("cpu_seconds"):
            text += f" [{epoch['images'] / epoch['cpu_seconds']:.1f} img per CPU s]"
        if "input_seconds" in epoch:
            text += (f" (input {epoch['input_seconds']:.1f} / step {epoch['step_seconds']:.1f}"
                     f" / other {epoch['other_seconds']:.1f})")
        parts.append(text)
    label = f"{record['run']}{' cached' if record.get('cache_images') else ''}"
    return f"{label:>14} {record.get('size', ''):>8}  " + " | ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x32,128x64")
    parser.add_argument("--recipes", default="msinet",
                        help="comma-separated recipes of solution.py, or none (other runs only)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps_per_epoch", type=int, default=0)
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--cache_images", action="store_true")
    parser.add_argument("--step", action="store_true")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--project_root", default=ROOT,
                        help="the reid-tf checkout whose solution.py runs (e.g. a 'before')")
    parser.add_argument("--reference_root", default="/work/refs/MSINet")
    parser.add_argument("--torchvision_path", default="/work/refs/tvsite",
                        help="folder holding the torchvision package (python files are enough)")
    parser.add_argument("--reference_workers", type=int, default=4,
                        help="the reference's DataLoader workers (train.py -j; its default 4)")
    parser.add_argument("--reference_omp_wait_policy", default="PASSIVE",
                        help="OMP_WAIT_POLICY of the reference ('' keeps the environment's): "
                             "torch's OpenMP threads spin while waiting, which on a machine "
                             "whose cores are shared with other processes made its 64x32 steps "
                             "6x slower (NOTES.md); on a free machine the policy hardly matters")
    parser.add_argument("--data_cache", default=os.path.join(tempfile.gettempdir(),
                                                             "reid_tf_bench_epoch_data"))
    args = parser.parse_args()
    sizes = []
    for text in args.sizes.split(","):
        try:
            height, width = (int(value) for value in text.lower().split("x"))
        except ValueError:
            raise SystemExit(f"error: --sizes: {text!r} is not HEIGHTxWIDTH") from None
        sizes.append((height, width))
    recipes = [] if args.recipes == "none" else args.recipes.split(",")
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        raise SystemExit(f"error: --recipes: unknown {unknown}; choose from {list(RECIPES)}")
    if args.reference and not os.path.isdir(os.path.join(args.torchvision_path, "torchvision")):
        raise SystemExit(f"error: --torchvision_path={args.torchvision_path} holds no "
                         "torchvision package (see benchmarks/NOTES.md, 'Epoch throughput')")
    tree = synthetic_tree(args.data_cache, args.identities)
    records = []
    with tempfile.TemporaryDirectory(prefix="reid_tf_bench_epoch_") as folder:
        for height, width in sizes:
            for recipe in recipes:
                records.append(run_reid_tf(args, recipe, height, width, args.data_cache, folder,
                                           args.cache_images))
                print(json.dumps(records[-1]), flush=True)
            if args.reference:
                records.append(run_reference(args, height, width, tree, folder))
                print(json.dumps(records[-1]), flush=True)
            if args.step:
                records.append(run_step(args, height, width))
                print(json.dumps(records[-1]), flush=True)
        if args.search:
            records.append(run_search(args, args.data_cache, folder))
            print(json.dumps(records[-1]), flush=True)
    print("\n".join(summary_line(record) for record in records))


if __name__ == "__main__":
    main()
