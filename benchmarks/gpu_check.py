"""The parts of benchmarks/gpu_check.sh: each runs in its own process with a time limit and
gives pass/fail (and a throughput where it has one); ONE JSON line at the end.

Parts: ``tests`` (tests/test_mixed_precision.py and tests/test_distribute.py: dtype policies
and device placement / tf.distribute; on the CPU without the two-process multi-worker test),
``train_<model>_<variant>`` (solution.py on the embedded synthetic dataset, MSINet and
FlipReID ResNet-50, ``--mixed_precision mixed_float16`` and ``--jit_compile``; training img/s
is history.csv's last epoch), ``inference_msinet``
(bench_inference_msinet.py, img/s), ``search_msi`` (bench_search.py, s per search step),
``search_bn_split`` (python -m nas.search, the quick BN-split config; s per step is the wall
time of the run, start-up included, over its steps), ``mirrored`` (solution.py with
``--strategy mirrored`` on every visible GPU). Without a GPU the same parts run on the CPU at
smaller sizes and the line says ``"device": "cpu"``.
"""
import argparse
import csv
import glob
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpus():
    code = ("import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def _run(command, timeout, log_folder, name):
    os.makedirs(log_folder, exist_ok=True)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=env)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        code, out, err = "timeout", _text(expired.stdout), _text(expired.stderr)
    seconds = time.perf_counter() - start
    with open(os.path.join(log_folder, f"{name}.log"), "w", encoding="utf-8") as handle:
        handle.write(f"$ {' '.join(command)}\n{out}\n{err}")
    return code, out, seconds


def _text(output):
    """What a timed-out child had written (bytes then, whatever ``text=True`` asked for)."""
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output or ""


def _pytest_counts(text):
    """``{"passed": n, "failed": n, ...}`` from pytest's last summary line."""
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line)
        if found:
            return {word: int(number) for number, word in found}
    return {}


def _last_json(text):
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _history_rate(folder):
    paths = glob.glob(os.path.join(folder, "*", "history.csv"))
    if not paths:
        return None
    with open(paths[0], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return round(float(rows[-1]["images_per_second"]), 1) if rows else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_folder", default="/tmp/reid_gpu_check")
    parser.add_argument("--parts", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--timeout", type=int, default=0,
                        help="seconds per part (default 240 on a GPU, 900 on the CPU)")
    args = parser.parse_args()
    os.makedirs(args.work_folder, exist_ok=True)
    logs = os.path.join(args.work_folder, "logs")
    gpus = _gpus()
    gpu = gpus > 0
    timeout = args.timeout or (240 if gpu else 900)
    height, width = (256, 128) if gpu else (64, 32)
    steps, pk = (20, (8, 4)) if gpu else (3, (4, 2))
    cache = os.path.join(args.work_folder, "synthetic_cache")
    data = ["--dataset_name=Synthetic",
            f"--dataset_options=cache_folder_path={cache},num_train_identities=16,"
            "num_test_identities=4,num_cameras=2,images_per_identity=6,num_junk_images=0,"
            "num_distractor_images=0",
            f"--image_height={height}", f"--image_width={width}",
            f"--identity_num_per_batch={pk[0]}", f"--image_num_per_identity={pk[1]}",
            f"--steps_per_epoch={steps}", "--epoch_num=2", "--testing_size=0", "--workers=2",
            "--freeze_backbone_for_N_epochs=0", "--export_formats="]
    models = {"msinet": ["--backbone_model_name=msinet", "--optimizer_name=sgd",
                         "--learning_rate_mode=constant", "--learning_rate_start=1e-3",
                         "--learning_rate_end=1e-3"],
              "resnet50": ["--backbone_model_name=resnet50", "--learning_rate_mode=constant"]}
    # On the CPU the two-process multi-worker test (two TensorFlow processes training and
    # searching on the same cores: over 15 minutes on 2 shared cores) is left out.
    deselect = [] if gpu else ["--deselect",
                               "tests/test_distribute.py::test_two_workers_train_and_search"]
    parts = {"tests": ([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/test_mixed_precision.py", "tests/test_distribute.py", *deselect],
                       None)}
    for model, model_flags in models.items():
        for variant, flag in (("mixed_float16", "--mixed_precision=mixed_float16"),
                              ("jit_compile", "--jit_compile")):
            folder = os.path.join(args.work_folder, f"train_{model}_{variant}")
            parts[f"train_{model}_{variant}"] = (
                [sys.executable, "solution.py", *data, *model_flags, flag,
                 f"--output_folder_path={folder}", "--overwrite_output_folder"], folder)
    batch = 128 if gpu else 8
    parts["inference_msinet"] = ([sys.executable, "benchmarks/bench_inference_msinet.py",
                                  f"--batch_size={batch}", "--repeats=3",
                                  *(["--mixed_precision=mixed_float16"] if gpu else [])], None)
    parts["search_msi"] = ([sys.executable, "benchmarks/bench_search.py",
                            f"--batch_size={32 if gpu else 8}", f"--height={height}",
                            f"--width={width}", "--repeats=2"], None)
    search_steps = 5 if gpu else 2
    parts["search_bn_split"] = ([sys.executable, "-m", "nas.search",
                                 "--flagfile=configs/nas/bn_split_synthetic_quick.flags",
                                 f"--image_height={height}", f"--image_width={width}",
                                 "--epoch_num=1", f"--steps_per_epoch={search_steps}",
                                 "--bn_split_warmup_epochs=0", "--search_warmup_epochs=0",
                                 "--evaluation_interval=1000",
                                 f"--output_folder_path={os.path.join(args.work_folder, 'search')}"],
                                None)
    mirrored = os.path.join(args.work_folder, "mirrored")
    parts["mirrored"] = ([sys.executable, "solution.py", *data, *models["msinet"],
                          "--strategy=mirrored", f"--output_folder_path={mirrored}",
                          "--overwrite_output_folder"], mirrored)
    wanted = [p for p in args.parts.split(",") if p] or list(parts)
    unknown = [p for p in wanted if p not in parts]
    if unknown:
        raise SystemExit(f"error: --parts: unknown {unknown}; expected {', '.join(parts)}")
    result = {"check": "gpu_check", "device": f"gpu x{gpus}" if gpu else "cpu",
              "note": "" if gpu else "no GPU visible: the parts ran on the CPU at small sizes",
              "image_size": [height, width], "parts": {}}
    for name in wanted:
        command, folder = parts[name]
        code, out, seconds = _run(command, timeout, logs, name)
        entry = {"pass": code == 0, "seconds": round(seconds, 1)}
        if code != 0:
            entry["exit"] = code
        if name == "tests":
            entry["tests"] = _pytest_counts(out)
            if deselect:
                entry["left_out"] = deselect[1].split("::")[1]
        elif name.startswith("train_") or name == "mirrored":
            entry["train_images_per_second"] = _history_rate(folder) if code == 0 else None
        elif name == "inference_msinet":
            entry["inference_images_per_second"] = _last_json(out).get("images_per_second")
        elif name == "search_msi":
            record = _last_json(out)
            entry["seconds_per_step"] = record.get("seconds")
        elif name == "search_bn_split":
            entry["seconds_per_step"] = round(seconds / search_steps, 2)
            entry["seconds_per_step_note"] = "wall time incl. start-up / steps"
        result["parts"][name] = entry
        print(f"# {name}: {'pass' if code == 0 else f'FAIL ({code})'} in {seconds:.0f} s "
              f"(log {os.path.join(logs, name + '.log')})", file=sys.stderr, flush=True)
    result["all_pass"] = all(entry["pass"] for entry in result["parts"].values())
    print(json.dumps(result), flush=True)
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
