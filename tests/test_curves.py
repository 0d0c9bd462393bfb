"""Training curves from log.jsonl: reading the log, de-duplicating resumed epochs, and the picture."""

import json

import pytest
from PIL import Image

from captioner.evaluation.curves import (
    BLUE,
    BOTTOM,
    GREEN,
    LEFT,
    ORANGE,
    PANEL_H,
    PANEL_W,
    PURPLE,
    RIGHT,
    TITLE_H,
    TOP,
    draw_curves,
    epoch_series,
    read_log,
    series,
    write_curves,
)


def step(epoch, s, lr):
    return {"time": 0.0, "epoch": epoch, "step": s, "loss": 3.0 - 0.1 * s, "lr": lr, "items_per_s": 100.0}


def encoder_epoch(epoch, train_loss, val_loss):
    return {"time": 0.0, "epoch": epoch, "step": 4 * epoch, "train_loss": train_loss, "val_loss": val_loss,
            "images_per_s": 50.0, "seconds": 1.0}


def captioner_epoch(epoch, train_loss, val_loss, selection):
    return {"time": 0.0, "epoch": epoch, "step": 4 * epoch, "train_loss": train_loss, "val_loss": val_loss,
            "select_by": "CIDEr-D", "selection": selection, "captions_per_s": 50.0, "trainable_groups": ["decoder"],
            "seconds": 1.0}


def write_log(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def count(image, colour, panel, top=0):
    """Pixels of exactly ``colour`` inside the plot area of panel ``panel`` (legend swatches excluded)."""
    x0, y0 = panel * PANEL_W, top
    box = image.crop((x0 + LEFT, y0 + TOP, x0 + PANEL_W - RIGHT, y0 + PANEL_H - BOTTOM)).convert("RGB")
    return sum(n for n, c in box.getcolors(box.width * box.height) if c == colour)


ENCODER_RUN = [step(0, 1, 1e-3), step(0, 3, 8e-4), encoder_epoch(1, 2.0, 2.2),
               step(1, 5, 5e-4), step(1, 7, 2e-4), encoder_epoch(2, 1.5, 1.9)]
CAPTIONER_RUN = [step(0, 2, 1e-3), captioner_epoch(1, 4.0, 4.2, 0.05),
                 step(1, 6, 5e-4), captioner_epoch(2, 3.0, 3.4, 0.12)]


def test_write_curves_gives_a_png_with_a_line_in_each_panel(tmp_path):
    log = write_log(tmp_path / "log.jsonl", ENCODER_RUN)
    out = write_curves(log, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "log.jsonl"]
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (2 * PANEL_W, TITLE_H + PANEL_H)  # titled with the run folder
    assert count(image, BLUE, 0, TITLE_H) > 20 and count(image, ORANGE, 0, TITLE_H) > 20  # train and val loss
    assert count(image, GREEN, 1, TITLE_H) > 20  # the learning rate
    assert count(image, GREEN, 0, TITLE_H) == count(image, BLUE, 1, TITLE_H) == 0  # each line in its own panel


def test_the_selection_panel_appears_only_when_the_log_has_a_selection_score():
    without, with_selection = draw_curves(ENCODER_RUN), draw_curves(CAPTIONER_RUN)
    assert without.size == (2 * PANEL_W, PANEL_H) and with_selection.size == (3 * PANEL_W, PANEL_H)
    assert count(with_selection, PURPLE, 2) > 20
    assert all(count(without, PURPLE, p) == 0 for p in range(2))


def test_a_resumed_run_plots_the_later_record_of_each_epoch_and_step():
    first = [encoder_epoch(1, 5.0, 5.5), step(1, 5, 0.9), encoder_epoch(2, 4.0, 4.5), step(2, 9, 0.8),
             encoder_epoch(3, 3.0, 3.5)]
    resumed_from_1 = [step(1, 5, 0.7), step(1, 7, 0.75), encoder_epoch(2, 3.8, 4.4), encoder_epoch(3, 2.9, 3.3)]
    records = first + resumed_from_1
    assert epoch_series(records, "train_loss") == ([1, 2, 3], [5.0, 3.8, 2.9])
    assert epoch_series(records, "val_loss") == ([1, 2, 3], [5.5, 4.4, 3.3])
    assert series(records, "lr", by="step") == ([5, 7, 9], [0.7, 0.75, 0.8])  # sorted, though 7 was logged after 9


def test_non_finite_values_are_left_out(tmp_path):
    records = [encoder_epoch(1, float("nan"), 2.0), encoder_epoch(2, 1.5, float("inf")), encoder_epoch(3, 1.2, 1.4)]
    read = read_log(write_log(tmp_path / "log.jsonl", records))  # json writes NaN and Infinity; they read back
    assert epoch_series(read, "train_loss") == ([2, 3], [1.5, 1.2])
    assert epoch_series(read, "val_loss") == ([1, 3], [2.0, 1.4])
    assert count(draw_curves(read), BLUE, 0) > 20


def test_a_malformed_middle_line_names_the_file_and_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(step(0, 1, 1e-3)) + '\n{"epoch": 1, "step"\n' + json.dumps(step(0, 2, 1e-3)) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl, line 2"):
        read_log(log)


def test_a_truncated_last_line_and_blank_lines_are_skipped(tmp_path):
    log = write_log(tmp_path / "log.jsonl", [step(0, 1, 1e-3), encoder_epoch(1, 2.0, 2.1)], tail='\n{"time": 1.0, "ep')
    assert read_log(log) == [step(0, 1, 1e-3), encoder_epoch(1, 2.0, 2.1)]


def test_one_epoch_no_steps_and_constant_values_still_draw():
    image = draw_curves([encoder_epoch(1, 2.0, 2.5)], title="one epoch")
    assert count(image, BLUE, 0, TITLE_H) > 0 and count(image, ORANGE, 0, TITLE_H) > 0  # a marker for the one point
    assert count(image, GREEN, 1, TITLE_H) == 0  # no step records: "no data"
    flat = draw_curves([step(0, s, 1e-3) for s in (1, 2, 3)] + [captioner_epoch(e, 1.0, 1.0, 0.0) for e in (1, 2)])
    assert count(flat, GREEN, 1) > 20 and count(flat, PURPLE, 2) > 20
