"""Pictures of what the models do, drawn with Pillow: a grid of image columns with titles.

:func:`image_grid` is the generic part (one row per example, one column per view of it), and
:func:`mae_reconstruction_figure` builds MAE's "original | masked | reconstruction" picture on it;
:func:`captions_figure` and :func:`attention_figure` draw evaluate.py's sample captions (marked true or
false where their truth is known) and the caption decoder's cross-attention for each generated word.
Images arrive as normalised float batches, the way the models see them; :func:`to_uint8` undoes
:func:`captioner.data.transforms.normalize`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from captioner.data.transforms import IMAGENET_MEAN, IMAGENET_STD

MASK_GRAY = 128  # the colour that stands for a hidden patch


def to_uint8(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Undo ``normalize``: float (B, 3, H, W) ``(x / 255 - mean) / std`` -> uint8 (B, 3, H, W) on the CPU.

    Example: with mean 0.5 and std 0.5, -1.0 -> 0 and 1.0 -> 255; values outside are clipped.
    """
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    return ((images * std_t + mean_t) * 255.0).round().clamp(0, 255).to(torch.uint8)  # (B, 3, H, W)


def image_grid(columns: Sequence[Tensor], titles: Sequence[str] | None = None, pad: int = 2,
               scale: int = 1, background: int = 255) -> Image.Image:
    """Tile uint8 batches side by side: column j shows ``columns[j][i]`` in row i.

    columns: each (B, 3, H, W) uint8 with the same B, H, W. ``titles`` (one per column) are written
    in a strip above the grid; ``scale`` enlarges every image (nearest neighbour) so that small
    images stay readable. Returns an RGB PIL image.
    """
    if not columns:
        raise ValueError("image_grid needs at least one column")
    B, _, H, W = columns[0].shape
    for col in columns:
        if col.dtype != torch.uint8 or col.shape[0] != B or col.shape[-2:] != (H, W):
            raise ValueError("image_grid: every column must be uint8 with the same batch size and image size")
    h, w = H * scale, W * scale
    title_h = 14 if titles else 0
    n_cols = len(columns)
    canvas = Image.new("RGB", (pad + n_cols * (w + pad), title_h + pad + B * (h + pad)), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for j, col in enumerate(columns):
        x0 = pad + j * (w + pad)
        if titles:
            draw.text((x0, 1), titles[j], fill=(0, 0, 0))
        for i in range(B):
            tile = Image.fromarray(col[i].permute(1, 2, 0).contiguous().numpy(), "RGB")
            if scale != 1:
                tile = tile.resize((w, h), Image.NEAREST)
            canvas.paste(tile, (x0, title_h + pad + i * (h + pad)))
    return canvas


def mae_reconstruction_figure(images: Tensor, reconstruction: Tensor, pixel_mask: Tensor,
                              scale: int = 1) -> Image.Image:
    """MAE's picture: original | masked (hidden patches gray) | reconstruction with the visible patches pasted in.

    images, reconstruction: (B, 3, H, W) normalised floats; pixel_mask (B, 1, H, W), 1 = masked
    (what ``MaskedAutoencoder.reconstruct`` returns).
    """
    original = to_uint8(images)  # (B, 3, H, W)
    predicted = to_uint8(reconstruction)  # (B, 3, H, W)
    hidden = pixel_mask.detach().cpu().bool().expand_as(original)  # (B, 3, H, W)
    masked = torch.where(hidden, torch.full_like(original, MASK_GRAY), original)
    pasted = torch.where(hidden, predicted, original)
    return image_grid([original, masked, pasted], ["original", "masked", "reconstruction"], scale=scale)


PICTURE_PIXELS = 192  # small images are enlarged (nearest neighbour) to about this size in the PNGs


def picture_scale(image_size: int) -> int:
    """How many times the PNGs enlarge an image: 64 px -> 3 (192 px), 256 px -> 1."""
    return max(1, PICTURE_PIXELS // image_size)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as PNG, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------
# Captions and cross-attention (evaluate.py)
# --------------------------------------------------------------------------------------------------

REFERENCE_GRAY = (110, 110, 110)  # reference captions in gray, so that the generated one stands out
# A caption's verdict (truth.py): the colour of the bar under its image, and the word before it.
VERDICT_MARKS = {True: ((20, 160, 40), "true"), False: ((210, 30, 30), "false"), None: ((150, 150, 150), "unparsed")}
VERDICT_BAR = 5  # pixels
# Heat-map colours from no attention to the most: dark blue, light blue, yellow, red.
HEAT_STOPS = ((0, 0, 140), (0, 170, 255), (255, 230, 0), (220, 0, 0))


def wrap_text(text: str, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """Break ``text`` at spaces into lines at most ``width`` pixels wide in ``draw``'s font.

    A word wider than ``width`` gets a line of its own (and overflows it); ``""`` gives ``[]``.
    Example: with a 6-pixel-per-letter font and width 40, "a red circle here" -> ["a red", "circle", "here"].
    """
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _tile(image: Tensor, scale: int) -> Image.Image:
    """One uint8 (3, H, W) image as a PIL image, enlarged ``scale`` times (nearest neighbour)."""
    tile = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST) if scale != 1 else tile


def captions_figure(images: Tensor, captions: Sequence[str], references: Sequence[str | None], scale: int = 1,
                    columns: int = 4, pad: int = 6, background: int = 255,
                    verdicts: Sequence[bool | None] | None = None) -> Image.Image:
    """Sample images in a grid, each with its generated caption (black) and one reference (gray) below.

    images (B, 3, H, W) uint8; captions: B generated captions; references: B reference captions,
    None where there is none (an uncaptioned split). ``scale`` enlarges the images (nearest
    neighbour) so that small ones stay readable; the text wraps at the image width. ``verdicts``
    (B, optional): whether each caption is true of its image, None where that is unknown; then a
    bar under the image shows it (green true, red false, gray unknown) and the caption starts
    with "model (true):", "model (false):" or "model (unparsed):".
    """
    B, _, H, W = images.shape
    if images.dtype != torch.uint8 or len(captions) != B or len(references) != B:
        raise ValueError("captions_figure needs uint8 images and one caption and one reference (or None) per image")
    if verdicts is not None and len(verdicts) != B:
        raise ValueError(f"captions_figure needs one verdict per image, got {len(verdicts)} for {B}")
    w, h = W * scale, H * scale
    bar = VERDICT_BAR + 2 if verdicts is not None else 0  # the verdict bar and a gap under it
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # the default font, to measure text with
    texts = []  # per image: [(line, colour)]
    for i, (caption, reference) in enumerate(zip(captions, references)):
        label = "model" if verdicts is None else f"model ({VERDICT_MARKS[verdicts[i]][1]})"
        lines = [(line, (0, 0, 0)) for line in wrap_text(f"{label}: {caption}", w, measure)]
        if reference is not None:
            lines += [(line, REFERENCE_GRAY) for line in wrap_text(f"ref: {reference}", w, measure)]
        texts.append(lines)
    line_h = measure.textbbox((0, 0), "Ag")[3] + 2  # bottom of the tallest letters, plus a gap
    cell_h = h + bar + 3 + line_h * max(len(lines) for lines in texts)
    n_cols = min(columns, B)
    n_rows = -(-B // n_cols)
    canvas = Image.new("RGB", (pad + n_cols * (w + pad), pad + n_rows * (cell_h + pad)), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    for i in range(B):
        x0 = pad + (i % n_cols) * (w + pad)
        y0 = pad + (i // n_cols) * (cell_h + pad)
        canvas.paste(_tile(images[i], scale), (x0, y0))
        if verdicts is not None:
            draw.rectangle((x0, y0 + h + 1, x0 + w - 1, y0 + h + VERDICT_BAR), fill=VERDICT_MARKS[verdicts[i]][0])
        for k, (line, colour) in enumerate(texts[i]):
            draw.text((x0, y0 + h + bar + 3 + k * line_h), line, fill=colour)
    return canvas


def heat_colours(values: Tensor) -> Tensor:
    """Values in [0, 1] (any shape ...) -> RGB (..., 3) float on 0..255, interpolated along HEAT_STOPS.

    Example: 0 -> (0, 0, 140), 1 -> (220, 0, 0), 0.5 -> halfway between light blue and yellow.
    """
    stops = torch.tensor(HEAT_STOPS, dtype=torch.float32)  # (K, 3)
    position = values.float().clamp(0, 1) * (len(stops) - 1)  # (...) in stop units
    low = position.floor().long().clamp(max=len(stops) - 2)  # (...) the stop below
    frac = (position - low)[..., None]  # (..., 1)
    return stops[low] * (1 - frac) + stops[low + 1] * frac  # (..., 3)


def attention_overlay(image: Tensor, maps: Tensor, opacity: tuple[float, float] = (0.3, 0.8)) -> Tensor:
    """Blend attention maps over one image as heat maps: (3, H, W) uint8 + (n, gh, gw) -> (n, 3, H, W) uint8.

    Each (gh x gw) patch map is upsampled bilinearly to the image size. All n maps share one
    scale, their common maximum, so a word whose attention is spread thin looks cool next to a
    word that looks at one spot. The heat colour covers the image from ``opacity[0]`` where the
    attention is 0 to ``opacity[1]`` at the maximum, so the unattended scene stays recognisable.
    """
    H, W = image.shape[-2:]
    if maps.shape[0] == 0:  # an empty caption has no words to show
        return torch.empty(0, 3, H, W, dtype=torch.uint8)
    up = F.interpolate(maps[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # (n, H, W)
    up = up / up.max().clamp_min(1e-12)
    heat = heat_colours(up).permute(0, 3, 1, 2)  # (n, 3, H, W)
    cover = (opacity[0] + (opacity[1] - opacity[0]) * up)[:, None]  # (n, 1, H, W)
    blended = (1 - cover) * image.float()[None] + cover * heat  # (n, 3, H, W)
    return blended.round().clamp(0, 255).to(torch.uint8)


def stack_vertically(figures: Sequence[Image.Image], gap: int = 0, background: int = 255) -> Image.Image:
    """Paste PIL images top to bottom, left-aligned, ``gap`` pixels apart."""
    width = max(f.width for f in figures)
    height = sum(f.height for f in figures) + gap * (len(figures) - 1)
    canvas = Image.new("RGB", (width, height), (background,) * 3)
    y = 0
    for figure in figures:
        canvas.paste(figure, (0, y))
        y += figure.height + gap
    return canvas


def attention_figure(images: Tensor, words: Sequence[Sequence[str]], maps: Sequence[Tensor], scale: int = 1,
                     per_row: int = 8) -> Image.Image:
    """For each image: the image, then one panel per generated word, titled with the word, showing
    where the decoder looked while producing it (see :func:`attention_overlay`).

    images (B, 3, H, W) uint8; words[b]: the n_b words of image b's caption; maps[b]: (n_b, gh, gw).
    Panels wrap after ``per_row`` to a line; the images follow each other top to bottom.
    """
    blocks = []
    for image, image_words, image_maps in zip(images, words, maps):
        panels = [image[None], *(panel[None] for panel in attention_overlay(image, image_maps))]  # each (1, 3, H, W)
        titles = ["image", *image_words]
        lines = [image_grid(panels[i : i + per_row], titles[i : i + per_row], scale=scale)
                 for i in range(0, len(panels), per_row)]
        blocks.append(stack_vertically(lines))
    return stack_vertically(blocks, gap=12)


def retrieval_figure(images: Tensor, ranked: Sequence[Sequence[str]], true: Sequence[Sequence[bool]], scale: int = 1,
                     pad: int = 6, width: int = 360, background: int = 255) -> Image.Image:
    """One row per image: the image, then its retrieved captions best first, a true one in green with "*".

    images (B, 3, H, W) uint8; ranked: B lists of k captions; true: B lists of k flags, whether each
    caption is true of the image. ``width``: pixels for the text column.
    """
    B, _, H, W = images.shape
    if images.dtype != torch.uint8 or len(ranked) != B or len(true) != B:
        raise ValueError("retrieval_figure needs uint8 images and one list of captions and flags per image")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = measure.textbbox((0, 0), "Ag")[3] + 2
    rows = []  # per image: [(line, colour)]
    for captions, flags in zip(ranked, true):
        lines = []
        for rank, (caption, ok) in enumerate(zip(captions, flags), start=1):
            colour = VERDICT_MARKS[True][0] if ok else (0, 0, 0)
            lines += [(line, colour) for line in wrap_text(f"{rank}.{'*' if ok else ' '} {caption}", width, measure)]
        rows.append(lines)
    h, w = H * scale, W * scale
    row_h = [max(h, line_h * len(lines)) for lines in rows]
    canvas = Image.new("RGB", (pad * 3 + w + width, pad + sum(r + pad for r in row_h)), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    y = pad
    for i, lines in enumerate(rows):
        canvas.paste(_tile(images[i], scale), (pad, y))
        for k, (line, colour) in enumerate(lines):
            draw.text((pad * 2 + w, y + k * line_h), line, fill=colour)
        y += row_h[i] + pad
    return canvas
