"""Training curves from a run's ``log.jsonl``, drawn with Pillow only (no matplotlib).

The log holds two kinds of records (see :class:`captioner.training.log.JsonlLogger`):

* step records, every ``log_every`` steps: ``{"epoch", "step", "loss", "lr", "items_per_s"}``, plus
  ``"reward"`` and ``"baseline"`` from train_scst.py;
* epoch records, one per completed epoch: ``{"epoch", "step", "train_loss", "val_loss", ...}``,
  plus ``"val_scores"``, ``"select_by"`` and ``"selection"`` (the score that picks the best epoch)
  from train_captioner.py.

:func:`draw_curves` puts panels side by side: (1) train_loss and val_loss against epoch, (2) the
learning rate against step, from the step records, (3) the selection score against epoch, only
when some record has ``"selection"``, and (4) the reward and its baseline against step, only when some
record has ``"reward"``. A resumed run appends to the same log, so an epoch or a step may appear more
than once: the later record wins. NaN and infinite values are left out.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_W, PANEL_H = 380, 280  # the size of one panel, in pixels
TITLE_H = 26  # the strip above the panels that holds the figure's title, when there is one
LEFT, RIGHT, TOP, BOTTOM = 62, 18, 50, 46  # margins around a panel's plot area
FONT_SIZE = 13
MAX_MARKERS = 50  # a series with more points is drawn as a bare line
BLUE, ORANGE, GREEN, PURPLE = (31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189)
AXIS, GRID, TEXT = (90, 90, 90), (228, 228, 228), (0, 0, 0)


def read_log(path: str | os.PathLike) -> list[dict]:
    """The records of a ``log.jsonl``, in file order; blank lines are skipped.

    A malformed last line is taken for a record cut short by a crash and skipped; a malformed line
    anywhere else raises ``ValueError`` naming the file and the line number.
    """
    lines = Path(path).read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                break
            raise ValueError(f"{path}, line {i + 1}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {i + 1}: expected a JSON object, got {line.strip()[:40]!r}")
        records.append(record)
    return records


def series(records: list[dict], key: str, by: str = "epoch") -> tuple[list, list[float]]:
    """``(xs, ys)``: ``record[key]`` against ``record[by]`` for the records that have both, sorted by x.

    The last record for each x wins (a resumed run rewrites epochs and steps); points whose value
    is not a finite number are then dropped.
    Example: epochs 1, 2, 3, 2, 3 with train_loss 5, 4, 3, 3.5, 2.5 -> ([1, 2, 3], [5, 3.5, 2.5]).
    """
    latest = {r[by]: r[key] for r in records if key in r and by in r}
    points = sorted((x, y) for x, y in latest.items() if isinstance(y, (int, float)) and math.isfinite(y))
    return [x for x, _ in points], [float(y) for _, y in points]


def epoch_series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``record[key]`` per epoch, de-duplicated as :func:`series` does."""
    return series(records, key, by="epoch")


def _span(values: list[float], pad: float) -> tuple[float, float]:
    """The range to show ``values`` in, widened by ``pad`` of its size on each side (never empty)."""
    lo, hi = min(values), max(values)
    if lo == hi:  # one point, or a constant: centre it
        return lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    return lo - (hi - lo) * pad, hi + (hi - lo) * pad


def _ticks(lo: float, hi: float, integer: bool, n: int = 4) -> tuple[list[float], list[str]]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten apart) in [lo, hi], with labels.

    Example: (0.93, 2.07) -> [1.0, 1.5, 2.0] labelled "1.0", "1.5", "2.0"; (0, 3.2e-4) -> "0", "1e-4", ...
    """
    raw = (hi - lo) / n
    unit = 10 ** math.floor(math.log10(raw))
    step = next(m * unit for m in (1, 2, 5, 10) if m * unit >= raw)
    step = max(step, 1) if integer else step
    ticks = [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]
    mag = max(abs(t) for t in ticks) if ticks else 0
    if mag and (mag < 1e-2 or mag >= 1e5):  # scientific, with as many digits as the step needs
        digits = max(0, math.floor(math.log10(mag)) - math.floor(math.log10(step)))
        return ticks, [_scientific(t, digits) if t else "0" for t in ticks]
    return ticks, [f"{t:.{max(0, -math.floor(math.log10(step)))}f}" for t in ticks]


def _scientific(value: float, digits: int) -> str:
    """``value`` as a short scientific number. Example: (0.00025, 1) -> "2.5e-4"."""
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, fill: tuple, align: str = "lt") -> None:
    """Write ``text`` with the point (x, y) at its left/middle/right ("l"/"m"/"r") and top/middle/bottom
    ("t"/"m"/"b") edge; measured by hand, since Pillow's ``anchor`` needs a TrueType font."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text)
    dx = {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[align[0]] + x0
    dy = {"t": 0, "m": (y1 - y0) / 2, "b": y1 - y0}[align[1]] + y0
    draw.text((round(x - dx), round(y - dy)), text, fill=fill)


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, xlabel: str, ylabel: str,
           lines: list[tuple[str, list, list[float], tuple]]) -> None:
    """One plot in the ``PANEL_W`` x ``PANEL_H`` box at (x0, y0): ``lines`` are (label, xs, ys, colour).

    A legend goes above the plot, at the right, when there is more than one line.
    """
    left, top, right, bottom = x0 + LEFT, y0 + TOP, x0 + PANEL_W - RIGHT, y0 + PANEL_H - BOTTOM
    _text(draw, (left + right) / 2, y0 + 8, title, TEXT, "mt")
    _text(draw, left, top - 6, ylabel, AXIS, "lb")
    _text(draw, (left + right) / 2, y0 + PANEL_H - 6, xlabel, AXIS, "mb")
    x = right
    for label, *_, colour in reversed(lines if len(lines) > 1 else []):  # right to left
        x -= draw.textlength(label)
        _text(draw, x, top - 6, label, TEXT, "lb")
        draw.rectangle((x - 15, top - 16, x - 5, top - 6), fill=colour)
        x -= 30
    draw.rectangle((left, top, right, bottom), outline=AXIS)
    xs_all = [x for _, xs, _, _ in lines for x in xs]
    if not xs_all:
        _text(draw, (left + right) / 2, (top + bottom) / 2, "no data", AXIS, "mm")
        return
    (xlo, xhi), (ylo, yhi) = _span(xs_all, 0.04), _span([y for _, _, ys, _ in lines for y in ys], 0.08)
    px = lambda x: left + (x - xlo) / (xhi - xlo) * (right - left)
    py = lambda y: bottom - (y - ylo) / (yhi - ylo) * (bottom - top)
    for t, label in zip(*_ticks(xlo, xhi, integer=True)):
        draw.line((px(t), top + 1, px(t), bottom - 1), fill=GRID)
        _text(draw, px(t), bottom + 5, label, TEXT, "mt")
    for t, label in zip(*_ticks(ylo, yhi, integer=False)):
        draw.line((left + 1, py(t), right - 1, py(t)), fill=GRID)
        _text(draw, left - 5, py(t), label, TEXT, "rm")
    for _, xs, ys, colour in lines:
        points = [(px(x), py(y)) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        if len(points) <= MAX_MARKERS:
            for x, y in points:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def draw_curves(records: list[dict], title: str = "") -> Image.Image:
    """The panels for ``records`` side by side, each ``PANEL_W`` x ``PANEL_H``, under ``title`` if given.

    Always the loss and learning-rate panels ("no data" when a panel has nothing to show), a panel of
    the checkpoint-selection score when an epoch record has ``"selection"`` (its name from
    ``"select_by"``), and a reward panel when a record has ``"reward"``.
    """
    train, val = epoch_series(records, "train_loss"), epoch_series(records, "val_loss")
    panels = [("loss per epoch", "epoch", "loss", [("train", *train, BLUE), ("val", *val, ORANGE)]),
              ("learning rate", "step", "lr", [("lr", *series(records, "lr", by="step"), GREEN)])]
    if any("selection" in r for r in records):
        name = next(r["select_by"] for r in reversed(records) if "selection" in r)
        panels.append((f"{name} per epoch (val)", "epoch", name,
                       [(name, *epoch_series(records, "selection"), PURPLE)]))
    if any("reward" in r for r in records):  # train_scst.py: the sampled captions' mean reward and the baseline's
        panels.append(("reward per step", "step", "reward", [("sampled", *series(records, "reward", by="step"), BLUE),
                                                             ("baseline", *series(records, "baseline", by="step"),
                                                              ORANGE)]))
    top = TITLE_H if title else 0
    image = Image.new("RGB", (PANEL_W * len(panels), PANEL_H + top), "white")
    draw = ImageDraw.Draw(image)
    try:
        draw.font = ImageFont.load_default(size=FONT_SIZE)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError):
        draw.font = ImageFont.load_default()  # Pillow's small bitmap font
    if title:
        _text(draw, image.width / 2, 8, title, TEXT, "mt")
    for i, (name, xlabel, ylabel, lines) in enumerate(panels):
        _panel(draw, i * PANEL_W, top, name, xlabel, ylabel, lines)
    return image


def write_curves(log_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Draw ``log_path``'s curves into the PNG ``out_path``, titled with the run folder's name.

    The picture goes to a temporary file in the same folder first and is then renamed, so a reader
    never sees a half-written PNG.
    """
    log_path, out_path = Path(log_path), Path(out_path)
    image = draw_curves(read_log(log_path), title=log_path.parent.name)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
