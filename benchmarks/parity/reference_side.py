"""Reference side of the MSINet learning-parity check (run by ``benchmarks/parity_msinet.py``).

Runs with a Python that has torch (CPU) and ``torchvision.transforms``, with the reference
checkout (vimar-gu/MSINet) first on ``sys.path`` and the CPU shim written by
``parity_msinet.py`` (``.cuda()`` a no-op) on ``PYTHONPATH``. Nothing here is imported by the
project: it drives the reference's own modules (model, criterion, optimiser, learning-rate
scheduler, training engine, evaluation) on inputs prepared by the project side.

Commands (``python reference_side.py COMMAND --reference_path ... --work_folder ...``):

* ``init --seed S --num_classes K``: seeds Python, numpy and torch as ``train.py`` does and
  builds ``msinet_x1_0`` (``train.py`` draws nothing from the generators before it), then
  writes ``reference_init_S.npz`` (the state dict).
* ``sampler``: the number of batches the reference ``RandomIdentitySampler`` really yields per
  epoch (and the ``len(train_loader)`` the reference prints) on the dataset of ``--data_dir``.
* ``train``: from ``reference_init_S.npz`` and the batches of ``batches.npz`` (NCHW images,
  labels, steps per epoch), writes ``reference_steps.npz``: the first step's loss terms and
  the gradient of every parameter (on a copy of the model), then the reference ``do_train``
  loop over the given batches (its ``build_criterion``, ``build_optimizer`` and
  ``WarmupMultiStepLR``), the loss of every step, the final state dict and the evaluation
  features of ``test.npz`` with the reference ``R1_mAP`` figures.
"""
import argparse
import copy
import json
import os
import random
import sys


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("init", "sampler", "train"))
    parser.add_argument("--reference_path", required=True)
    parser.add_argument("--work_folder", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup_step", type=int, default=1)
    parser.add_argument("--milestones", type=int, nargs="+", default=[3])
    parser.add_argument("--sampler_epochs", type=int, default=2000)
    parser.add_argument("--float64", action="store_true",
                        help="train: run the model, the losses and SGD in float64")
    return parser.parse_args()


def _reference_args(options, epochs):
    """The ``train.py`` argument namespace the reference modules read."""
    return argparse.Namespace(
        source_dataset="market1501", target_dataset="none", genotypes="msmt", pretrained=False,
        sam_mode="none", sam_ratio=2.0, margin=0.3, lr=options.lr, weight_decay=5e-4,
        momentum=0.9, milestones=list(options.milestones), warmup_step=options.warmup_step,
        epochs=epochs, print_freq=10 ** 9, eval_interval=10 ** 9,
        logs_dir=os.path.join(options.work_folder, "reference_logs"), seed=options.seed)


def _seed_everything(seed):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _state_to_numpy(state_dict):
    return {name: value.detach().cpu().numpy() for name, value in state_dict.items()}


def command_init(options):
    import numpy as np
    from reid.models.msinet import msinet_x1_0

    _seed_everything(options.seed)
    model = msinet_x1_0(_reference_args(options, 1), options.num_classes)
    path = os.path.join(options.work_folder, f"reference_init_{options.seed}.npz")
    np.savez(path, **_state_to_numpy(model.state_dict()))
    print(json.dumps({"written": path}))


def command_sampler(options):
    import collections

    from reid.data.market1501 import Market1501
    from reid.data.sampler import RandomIdentitySampler

    dataset = Market1501(options.data_dir, verbose=False)
    sampler = RandomIdentitySampler(dataset.train, 64, 4)
    _seed_everything(options.seed)
    counts = collections.Counter(len(list(iter(sampler))) // 64
                                 for _ in range(options.sampler_epochs))
    result = {"printed_len_train_loader": len(sampler) // 64,
              "batches_per_epoch": {str(key): value for key, value in sorted(counts.items())},
              "epochs": options.sampler_epochs}
    print(json.dumps(result))


class _RecordingCriterion:
    """The reference criterion, recording every value it returns (two calls per step)."""

    def __init__(self, criterion):
        self.criterion = criterion
        self.values = []

    def __call__(self, *args, **kwargs):
        loss = self.criterion(*args, **kwargs)
        self.values.append(float(loss.detach()))
        return loss


class _EpochBatches:
    """A stand-in for the reference train loader: epoch e yields the given batches of e."""

    def __init__(self, images, labels, steps_per_epoch):
        import torch

        self.epochs = []
        start = 0
        for steps in steps_per_epoch:
            self.epochs.append([(torch.from_numpy(images[start + i]),
                                 torch.from_numpy(labels[start + i]).long(),
                                 torch.zeros(len(labels[start + i]), dtype=torch.long))
                                for i in range(steps)])
            start += steps
        self.epoch = -1

    def __iter__(self):
        self.epoch += 1
        return iter(self.epochs[self.epoch])

    def __len__(self):
        return len(self.epochs[max(self.epoch, 0)])


def _first_step(model, criterion, images, labels):
    """Loss terms and gradients of one training-mode step on a copy of ``model``."""
    import torch

    model = copy.deepcopy(model)
    model.train()
    images = torch.from_numpy(images)
    target = torch.from_numpy(labels).long()
    feats, logits, f_feats, f_logits, _ = model(images)
    terms = {
        "triplet_global": criterion.triplet(feats, target)[0],
        "triplet_part": criterion.triplet(f_feats, target)[0],
        "ce_global": criterion.softmax(logits, target),
        "ce_part": criterion.softmax(f_logits, target),
    }
    # train.py: criterion(feats, logits, ..., sam=True) + criterion(f_feats, f_logits, ...)
    total = criterion(feats, logits, None, target, sam=True) + criterion(f_feats, f_logits,
                                                                         None, target)
    total.backward()
    values = {name: float(value.detach()) for name, value in terms.items()}
    values["total"] = float(total.detach())
    gradients = {name: parameter.grad.detach().numpy().copy()
                 for name, parameter in model.named_parameters()
                 if parameter.grad is not None}
    return values, gradients, {"v": feats.detach().numpy(), "f_v": f_feats.detach().numpy()}


def command_train(options):
    import numpy as np
    import torch
    from reid.criterion import build_criterion
    from reid.engine import do_train
    from reid.models.msinet import msinet_x1_0
    from reid.solver import build_optimizer
    from reid.utils.metrics import R1_mAP

    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = np.float64 if options.float64 else np.float32
    if options.float64:
        # Also the tensors the reference makes itself (the label-smoothing targets).
        torch.set_default_dtype(torch.float64)
    batches = np.load(os.path.join(options.work_folder, "batches.npz"))
    images, labels = batches["images_nchw"].astype(dtype), batches["labels"]
    steps_per_epoch = [int(value) for value in batches["steps_per_epoch"]]
    epochs = len(steps_per_epoch)
    args = _reference_args(options, epochs)
    os.makedirs(args.logs_dir, exist_ok=True)
    _seed_everything(options.seed)
    model = msinet_x1_0(args, options.num_classes)
    initial = np.load(os.path.join(options.work_folder, f"reference_init_{options.seed}.npz"))
    model.load_state_dict({name: torch.from_numpy(initial[name]) for name in initial.files})
    if options.float64:
        model.double()
    criterion = build_criterion(args, options.num_classes)

    first_terms, gradients, first_features = _first_step(model, criterion, images[0], labels[0])

    optimizer, lr_scheduler = build_optimizer(args, model)
    recording = _RecordingCriterion(criterion)
    test = np.load(os.path.join(options.work_folder, "test.npz"))
    test_images = torch.from_numpy(test["images_nchw"].astype(dtype))
    test_pids, test_camids = test["pids"], test["camids"]
    num_query = int(test["num_query"])
    test_loader = [(test_images[i:i + 128], test_pids[i:i + 128], test_camids[i:i + 128])
                   for i in range(0, len(test_images), 128)]
    rates = []
    original_step = lr_scheduler.step

    def step_and_record(*args_, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return original_step(*args_, **kwargs)

    lr_scheduler.step = step_and_record
    do_train(args, model, recording, _EpochBatches(images, labels, steps_per_epoch),
             test_loader, optimizer, lr_scheduler, num_query, remove_cam=True)

    model.eval()
    with torch.no_grad():
        features = torch.cat([model(batch[0]) for batch in test_loader]).numpy()
    evaluator = R1_mAP(num_query, max_rank=50, feat_norm=True, remove_cam=True)
    evaluator.reset()
    evaluator.update((torch.from_numpy(features), list(test_pids), list(test_camids)))
    cmc, mean_ap = evaluator.compute()[:2]

    per_step = np.asarray(recording.values).reshape(-1, 2).sum(axis=1)
    output = {f"state/{name}": value for name, value in
              _state_to_numpy(model.state_dict()).items()}
    output.update({f"grad/{name}": value for name, value in gradients.items()})
    output.update({f"first/{name}": np.float64(value) for name, value in first_terms.items()})
    output.update({f"first_features/{name}": value for name, value in first_features.items()})
    output["step_losses"] = per_step
    output["epoch_learning_rates"] = np.asarray(rates)
    output["test_features"] = features
    output["mAP"] = np.float64(mean_ap)
    output["cmc"] = np.asarray(cmc)
    path = os.path.join(options.work_folder, f"reference_steps_{np.dtype(dtype).name}.npz")
    np.savez(path, **output)
    print(json.dumps({"written": path, "mAP": float(mean_ap), "rank1": float(cmc[0])}))


def main():
    options = _arguments()
    sys.path.insert(0, os.path.abspath(options.reference_path))
    os.makedirs(options.work_folder, exist_ok=True)
    {"init": command_init, "sampler": command_sampler, "train": command_train}[
        options.command](options)


if __name__ == "__main__":
    main()
