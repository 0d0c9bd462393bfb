"""captioner/training/log.py: the loss meter and the JSON-lines log, in the scripts' training loop."""

import json
import types

import pytest
import torch
from torch import nn

from captioner.training import log as log_module
from captioner.training.distributed import weighted_mean
from captioner.training.log import JsonlLogger, LossMeter, NonFiniteLossError

from toy_run import CPU, SINGLE, regression_batches, make_run, train_epoch, validation_loss


class FakeClock:
    """``time.perf_counter`` for LossMeter, advanced by hand, so that items/s has a known value."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(log_module, "time", types.SimpleNamespace(perf_counter=fake.perf_counter, time=lambda: 0.0))
    return fake


def test_loss_meter_windows_epoch_mean_and_throughput(clock):
    meter = LossMeter(CPU)  # created at t = 100 s: the first window starts there
    losses = {10: 1.0, 11: 2.0, 12: 3.0, 13: 4.0, 14: 5.0}  # step -> loss; 8 items per step
    for step in (10, 11):
        meter.add(torch.tensor(losses[step]), step, 8)
    assert meter.window_steps == 2
    clock.now = 102.0
    assert meter.window(12) == pytest.approx((1.5, 8.0))  # (1 + 2) / 2; 16 items in 2 s
    assert meter.window_steps == 0  # the next window starts empty, at t = 102 s
    for step in (12, 13, 14):
        meter.add(torch.tensor(losses[step], requires_grad=True), step, 8)  # a loss with a graph is detached
    clock.now = 106.0
    assert meter.window(15) == pytest.approx((4.0, 6.0))  # (3 + 4 + 5) / 3: steps 12-14 only; 24 items in 4 s
    assert meter.epoch_mean(15) == pytest.approx(3.0)  # (1 + 2 + 3 + 4 + 5) / 5: every step of the epoch
    assert LossMeter(CPU).epoch_mean(0) == 0.0  # an epoch without steps
    clock.now = 107.0
    meter.add(torch.tensor(1.0), 15, 3)
    assert meter.window(16)[1] > 0  # items/s: 3 items in 1 s


def test_non_finite_loss_is_raised_at_the_next_read_naming_the_first_bad_step(clock):
    meter = LossMeter(CPU)
    meter.add(torch.tensor(1.0), 10, 8)
    assert meter.window(11)[0] == 1.0  # finite so far
    meter.add(torch.tensor(float("nan")), 11, 8)  # the first bad step: 11
    meter.add(torch.tensor(float("inf")), 12, 8)  # adding does not read the device, so nothing raises yet
    meter.add(torch.tensor(2.0), 13, 8)
    with pytest.raises(NonFiniteLossError, match="step 11") as info:
        meter.window(14)
    assert info.value.step == 11
    with pytest.raises(NonFiniteLossError) as info:  # the epoch's mean stops there too
        meter.epoch_mean(14)
    assert info.value.step == 11
    with pytest.raises(NonFiniteLossError) as info:
        meter.check_finite(14)
    assert info.value.step == 11


def test_the_scripts_loop_learns_counts_steps_and_logs(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer, scaler = make_run(model)
    logger = JsonlLogger(tmp_path / "log.jsonl")
    batches = regression_batches()
    first = validation_loss(model, batches)
    step, losses = 0, []
    for epoch in range(5):
        loss, step = train_epoch(model, optimizer, scaler, batches, step, epoch, logger=logger)
        losses.append(loss)
    assert step == 30
    assert losses[-1] < losses[0] and validation_loss(model, batches) < first / 2
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(2, 31, 2))
    assert lines[0]["epoch"] == 0 and lines[0]["lr"] == 0.1 and lines[0]["items_per_s"] > 0


def test_validation_mean_weights_batches_by_items():
    assert weighted_mean(torch.tensor(1.0 * 1 + 4.0 * 3), 4, SINGLE) == pytest.approx((1.0 * 1 + 4.0 * 3) / 4)
    assert weighted_mean(torch.zeros(()), 0, SINGLE) == 0.0  # no batches
    model = nn.Linear(1, 1)
    validation_loss(model, [{"x": torch.ones(2, 1), "y": torch.zeros(2, 1)}])
    assert not model.training  # evaluation runs in eval mode
