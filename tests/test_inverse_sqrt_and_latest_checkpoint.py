"""The inverse-sqrt schedule at its edges and the choice of the latest checkpoint, each against values
worked by hand (captioner/training/schedule.py, captioner/training/checkpoints.py)."""

import pytest

from captioner.training.checkpoints import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from captioner.training.schedule import lr_at_step


@pytest.mark.parametrize("step, expected", [
    (0, 0.5 * 1 / 4),  # warm-up: base * (step + 1) / warmup
    (1, 0.5 * 2 / 4),
    (3, 0.5),  # the last warm-up step reaches the base rate
    (4, 0.5 * (4 / 5) ** 0.5),  # then base * sqrt(warmup / (step + 1))
    (15, 0.5 * (4 / 16) ** 0.5),
    (99, 0.5 * (4 / 100) ** 0.5),
])
def test_inverse_sqrt_with_warmup(step, expected):
    # total_steps and min_lr play no part: the schedule has no end and no floor
    assert lr_at_step(step, 0.5, 0.3, 4, 10, "inverse-sqrt") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 0.5), (3, 0.5 / 2), (8, 0.5 / 3), (99, 0.5 / 10)])
def test_inverse_sqrt_without_warmup_starts_at_the_base_rate(step, expected):
    # no warm-up: base * sqrt(1 / (step + 1)), so step 0 trains at the base rate, not at 0 or infinity
    assert lr_at_step(step, 0.5, 0.0, 0, 10, "inverse-sqrt") == pytest.approx(expected, rel=1e-12)


def test_latest_checkpoint_is_the_largest_epoch_not_the_last_name(tmp_path):
    for epoch in (1, 2, 9, 10, 11):
        save_checkpoint(tmp_path / f"checkpoint{epoch}.pt", {"kind": "mae", "epoch": epoch})
    save_checkpoint(tmp_path / "checkpoint_best.pt", {"kind": "mae", "epoch": 2})
    (tmp_path / "checkpointX.pt").write_bytes(b"")  # neither a number nor read
    assert latest_checkpoint(tmp_path).name == "checkpoint11.pt"  # by name, checkpoint9.pt sorts last
    assert load_checkpoint(tmp_path)["epoch"] == 11
    (tmp_path / "checkpoint11.pt").unlink()
    assert latest_checkpoint(tmp_path).name == "checkpoint10.pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint<N>.pt"):
        latest_checkpoint(tmp_path / "empty")
