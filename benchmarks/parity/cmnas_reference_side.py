"""Reference side of the CM-NAS learning-parity check (run by ``benchmarks/parity_cmnas.py``).

Runs in its own Python process with a checkout of JDAI-CV/CM-NAS first on ``PYTHONPATH``. It
builds the reference's ``TwoStreamSwitchBNOp`` (seeded, random initialisation), saves its
initial state dict, then trains it on the fixed batch that the project side wrote
(``batch.npz``) with the reference's own losses (``TripletLoss``, ``SP``, ``CMMD``,
``nn.CrossEntropyLoss``), its three Adam parameter groups and its ``WarmupMultiStepLR`` at epoch
index 0, exactly as ``train_eval.py``'s ``main()``/``train()`` compose them. It records the
first step's loss terms, every parameter's gradient, the BN running statistics after the first
forward pass, the loss of every step and the state after the last step.

``python cmnas_reference_side.py WORK_FOLDER init SEED`` writes ``reference_init.npz``;
``python cmnas_reference_side.py WORK_FOLDER steps SEED DTYPE STEPS`` writes
``reference_DTYPE.npz``.
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn

from losses import CMMD, SP, TripletLoss  # the reference checkout (PYTHONPATH)
from models import TwoStreamSwitchBNOp
from utils.lr_scheduler import WarmupMultiStepLR
from utils.utils import EMA

# train_sysu.sh / cmnas.md §8.1
LR, WEIGHT_DECAY, BETAS = 0.01, 5e-4, (0.5, 0.999)
MARGIN, SP_LAMBDA, CMMD_LAMBDA = 0.4, 5.0, 0.05
EMA_DECAY = 0.997  # train_sysu.sh
STEPS_MILESTONES, GAMMA, WARMUP_EPOCHS, WARMUP_FACTOR = [40, 70], 0.1, 10, 0.01


def build(work, seed):
    batch = np.load(os.path.join(work, "batch.npz"))
    config = [int(value) for value in batch["config"]]
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = TwoStreamSwitchBNOp(int(batch["num_classes"]), list(config), pretrained=False,
                                last_stride=1, dropout_rate=0.0)
    return model, batch


def save_init(work, seed):
    model, _ = build(work, seed)
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    np.savez(os.path.join(work, "reference_init.npz"), **state)


def train_steps(work, seed, dtype_name, steps):
    dtype = torch.float64 if dtype_name == "float64" else torch.float32
    torch.set_default_dtype(dtype)
    model, batch = build(work, seed)
    initial = np.load(os.path.join(work, "reference_init.npz"))
    model.load_state_dict({key: torch.from_numpy(initial[key]) for key in initial.files})
    model = model.to(dtype)
    model.train()
    images = torch.from_numpy(batch["images_nchw"]).to(dtype)
    labels = torch.from_numpy(batch["labels"].astype(np.int64))
    half = images.shape[0] // 2
    img_v, img_t = images[:half], images[half:]
    target_v, target_t = labels[:half], labels[half:]
    target = torch.cat((target_v, target_t))

    # train_eval.py main(): three Adam groups, coupled weight decay, WarmupMultiStepLR.
    ignored = set(map(id, model.bnneck.parameters())) | set(map(id, model.classifier.parameters()))
    base_params = [p for p in model.parameters() if id(p) not in ignored]
    optimizer = torch.optim.Adam([
        {"params": base_params, "lr": 0.1 * LR},
        {"params": model.bnneck.parameters(), "lr": LR},
        {"params": model.classifier.parameters(), "lr": LR}],
        weight_decay=WEIGHT_DECAY, betas=BETAS)
    scheduler = WarmupMultiStepLR(optimizer, STEPS_MILESTONES, GAMMA, WARMUP_EPOCHS,
                                  WARMUP_FACTOR)
    criterion_ce = nn.CrossEntropyLoss()
    criterion_tri = TripletLoss(margin=MARGIN, feat_norm="no")
    criterion_sp = SP()
    criterion_cmmd = CMMD(4)
    ema = EMA(model, EMA_DECAY)
    ema.register()

    record = {"learning_rates": np.array([group["lr"] for group in optimizer.param_groups])}
    step_losses = []
    for step in range(steps):
        # train_eval.py train()
        global_feat, feat, logit = model(img_v, img_t, mode=0)
        feat_v, feat_t = torch.split(feat, half, dim=0)
        global_feat_v, global_feat_t = torch.split(global_feat, half, dim=0)
        loss_ce = criterion_ce(logit, target)
        loss_tri = (criterion_tri(global_feat_v, global_feat_v, target_v)
                    + criterion_tri(global_feat_t, global_feat_t, target_t)
                    + criterion_tri(global_feat_v, global_feat_t, target_t)
                    + criterion_tri(global_feat_t, global_feat_v, target_v)) / 4.0
        loss_sp = criterion_sp(feat_v, feat_t) * SP_LAMBDA
        loss_cmmd = criterion_cmmd(feat_v, feat_t) * CMMD_LAMBDA
        loss = loss_ce + loss_tri + loss_sp + loss_cmmd
        optimizer.zero_grad()
        loss.backward()
        step_losses.append(float(loss))
        if step == 0:
            record.update({"loss/ce": float(loss_ce), "loss/triplet": float(loss_tri),
                           "loss/sp": float(loss_sp), "loss/cmmd": float(loss_cmmd),
                           "loss/total": float(loss),
                           "features/global_feat": global_feat.detach().numpy(),
                           "features/feat": feat.detach().numpy()})
            for name, parameter in model.named_parameters():
                if parameter.grad is not None:
                    record[f"grad/{name}"] = parameter.grad.detach().clone().numpy()
            for name, buffer in model.named_buffers():
                if "running" in name:
                    # buffers change in place: copy
                    record[f"bn_first/{name}"] = buffer.detach().clone().numpy()
        optimizer.step()
        ema.update()
    record["step_losses"] = np.array(step_losses)
    for name, value in model.state_dict().items():
        if "num_batches_tracked" not in name:
            record[f"final/{name}"] = value.detach().numpy()
    for name, value in ema.state_dict().items():
        if "num_batches_tracked" not in name:
            record[f"ema/{name}"] = value.detach().numpy()
    np.savez(os.path.join(work, f"reference_{dtype_name}.npz"), **record)


if __name__ == "__main__":
    work_folder, command, seed_text = sys.argv[1:4]
    if command == "init":
        save_init(work_folder, int(seed_text))
    elif command == "steps":
        train_steps(work_folder, int(seed_text), sys.argv[4], int(sys.argv[5]))
    else:
        raise SystemExit(f"error: unknown command {command!r} (init or steps)")
