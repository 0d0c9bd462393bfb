"""A toy run's pieces, shared by the tests of captioner/training/: the CPU, a plain (not torchrun)
process, the optimiser and gradient scaler as the training scripts build them, and their training
loop (train_encoder.py, section 4) on a toy regression."""

import torch
from torch import nn

from captioner.training.devices import autocast, make_grad_scaler
from captioner.training.distributed import DistInfo, weighted_mean
from captioner.training.log import LossMeter
from captioner.training.optimizer import make_optimizer, param_groups

CPU = torch.device("cpu")
SINGLE = DistInfo(rank=0, world_size=1, local_rank=0, is_main=True, device=CPU)  # a plain (not torchrun) run


def regression_batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[2.0], [-1.0]])
    out = []
    for _ in range(n):
        x = torch.randn(8, 2, generator=g)
        out.append({"x": x, "y": x @ w})
    return out


def mse_loss_fn(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"]), batch["x"].shape[0]


def make_run(model, lr=0.1):
    """The optimiser and (fp32: disabled) gradient scaler of a toy run, as the scripts build them."""
    return make_optimizer(param_groups(model.named_parameters(), 0.0), lr, (0.9, 0.95), CPU), make_grad_scaler(CPU, "fp32")


def train_epoch(model, optimizer, scaler, batches, step, epoch=0, lr=0.1, log_every=2, logger=None):
    """One epoch of the training scripts' loop (train_encoder.py, section 4) on the CPU in fp32.

    Returns ``(mean training loss, step)``.
    """
    model.train()
    parameters = [p for g in optimizer.param_groups for p in g["params"]]
    meter = LossMeter(CPU)
    for batch in batches:
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(CPU, "fp32"):
            loss, n_items = mse_loss_fn(model, batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        meter.add(loss, step, n_items)
        step += 1
        if meter.window_steps == log_every:
            window_loss, items_per_s = meter.window(step)
            if logger:
                logger.log(epoch=epoch, step=step, loss=window_loss, lr=lr, items_per_s=items_per_s)
    return meter.epoch_mean(step), step


@torch.no_grad()
def validation_loss(model, batches) -> float:
    """The scripts' validation mean: losses weighted by their batch's items."""
    model.eval()
    total, count = torch.zeros(()), 0
    for batch in batches:
        loss, n_items = mse_loss_fn(model, batch)
        total += loss * n_items
        count += n_items
    return weighted_mean(total, count, SINGLE)
