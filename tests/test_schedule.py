"""captioner/training/schedule.py: the learning rate as a pure function of the step."""

import pytest

from captioner.training.schedule import lr_at_step


def test_lr_schedule_is_warmup_then_cosine():
    lrs = [lr_at_step(s, 1.0, 0.1, 10, 110) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # linear warm-up rises
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine: (1.0 + 0.1) / 2
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))  # then never rises
    assert lrs[110] == lrs[119] == 0.1
    assert lr_at_step(0, 1.0, 0.0, 0, 10) == 1.0  # no warm-up
