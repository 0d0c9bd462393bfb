"""Robust image reading: every bad input is a BadImageError naming the file; odd images become correct RGB."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from url_server import png_header_only

from captioner.data import image_io
from captioner.data.image_io import (
    BadImageError,
    load_image_rgb,
    resize_and_center_crop,
)
from captioner.infra.fileio import atomic_write_bytes


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def jpeg_bytes(size=(64, 48)):
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def assert_bad(path, reason):
    with pytest.raises(BadImageError, match=reason) as info:
        load_image_rgb(path)
    assert str(path) in str(info.value)
    assert info.value.path == path


# ------------------------------------------------------------------------------------------------
# Bad inputs.

def test_missing_and_empty_files(tmp_path):
    assert_bad(tmp_path / "missing.jpg", "not found")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert_bad(tmp_path / "empty.jpg", "empty file")
    (tmp_path / "folder.jpg").mkdir()
    assert_bad(tmp_path / "folder.jpg", "not a regular file")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not the pixels you are looking for\n")
    assert_bad(tmp_path / "notes.jpg", "not a recognised image")
    # JPEG magic bytes followed by garbage.
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    assert_bad(tmp_path / "garbage.jpg", "not a recognised image|corrupt")


def test_truncated_jpeg_is_never_returned_half_decoded(tmp_path):
    data = jpeg_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert_bad(tmp_path / "cut.jpg", "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    idat = data.index(b"IDAT") + 8
    data[idat:idat + 8] = b"\x00" * 8  # damage the compressed pixels (the chunk CRC no longer matches)
    (tmp_path / "broken.png").write_bytes(bytes(data))
    assert_bad(tmp_path / "broken.png", "truncated or corrupt")


def test_decompression_bombs_are_refused_from_the_header(tmp_path, monkeypatch):
    # 9000 x 9000 = 81 MP: under Pillow's default limit (89 MP), over ours (64 MP).
    (tmp_path / "bomb81.png").write_bytes(png_header_only(9000, 9000))
    assert_bad(tmp_path / "bomb81.png", "decompression bomb")
    # Our check does not depend on Pillow's global setting, which other code may switch off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    assert_bad(tmp_path / "bomb.png", "decompression bomb")
    monkeypatch.undo()
    assert_bad(tmp_path / "bomb.png", "decompression bomb")  # Pillow's own check, rephrased
    assert image_io.MAX_IMAGE_PIXELS == 64_000_000


# ------------------------------------------------------------------------------------------------
# Odd but valid images.

def test_grayscale_and_bilevel(tmp_path):
    gray = load_image_rgb(save(Image.new("L", (8, 6), 100), tmp_path / "g.png"))
    assert gray.mode == "RGB" and gray.size == (8, 6)
    assert gray.getpixel((3, 3)) == (100, 100, 100)
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((1, 1), 1)
    loaded = load_image_rgb(save(bits, tmp_path / "b.png"))
    assert loaded.getpixel((1, 1)) == (255, 255, 255) and loaded.getpixel((0, 0)) == (0, 0, 0)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 1))
    for x, px in enumerate([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128), (0, 200, 0, 255)]):
        rgba.putpixel((x, 0), px)
    out = load_image_rgb(save(rgba, tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent: white, not red
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((2, 0)))  # half-transparent black over white
    assert out.getpixel((3, 0)) == (0, 200, 0)

    la = Image.merge("LA", [Image.new("L", (2, 1), 0), Image.frombytes("L", (2, 1), bytes([0, 255]))])
    out = load_image_rgb(save(la, tmp_path / "la.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 0)


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    plain = load_image_rgb(save(palette, tmp_path / "p.png"))
    assert plain.getpixel((0, 0)) == (255, 0, 0) and plain.getpixel((1, 0)) == (0, 255, 0)
    seethrough = load_image_rgb(save(palette, tmp_path / "pt.png", transparency=0))
    assert seethrough.getpixel((0, 0)) == (255, 255, 255) and seethrough.getpixel((1, 0)) == (0, 255, 0)
    gif = load_image_rgb(save(palette, tmp_path / "pt.gif", transparency=0))
    assert gif.getpixel((0, 0)) == (255, 255, 255) and gif.getpixel((1, 0)) == (0, 255, 0)


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    assert load_image_rgb(save(cmyk, tmp_path / "c.tif")).getpixel((5, 5)) == (255, 0, 0)
    red = load_image_rgb(save(cmyk, tmp_path / "c.jpg", quality=95)).getpixel((5, 5))
    assert red[0] > 230 and red[1] < 25 and red[2] < 25


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 25700, 32768, 65535]], dtype=np.uint16)
    expected = [0, 1, 100, 128, 255]
    path = save(Image.fromarray(values), tmp_path / "16.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image_rgb(path))  # (1, 5, 3)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
    assert out[0, :, 0].tolist() == expected and (out[..., 0] == out[..., 2]).all()
    as_i = save(Image.fromarray(values.astype(np.int32)), tmp_path / "32.tif")
    assert Image.open(as_i).mode == "I"
    assert np.asarray(load_image_rgb(as_i))[0, :, 1].tolist() == expected


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (220, 0, 0))
    stored.paste((0, 0, 220), (20, 0, 40, 20))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image_rgb(save(stored, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)  # upright: portrait
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 180 and top[2] < 40  # red is now on top
    assert bottom[2] > 180 and bottom[0] < 40
    assert out.getexif().get(0x0112) is None  # the tag is gone: nobody rotates the image twice


def test_draft_decodes_a_big_jpeg_at_reduced_scale(tmp_path):
    path = save(Image.new("RGB", (640, 480), (30, 120, 200)), tmp_path / "big.jpg")
    full = load_image_rgb(path)
    small = load_image_rgb(path, draft_size=100)
    assert full.size == (640, 480)
    assert small.size == (160, 120)  # 1/4 scale: the largest that keeps the shorter side >= 100
    assert np.abs(np.asarray(small).astype(int) - (30, 120, 200)).max() <= 3
    png = load_image_rgb(save(Image.new("RGB", (640, 480)), tmp_path / "big.png"), draft_size=100)
    assert png.size == (640, 480)  # only JPEG has a draft mode


# ------------------------------------------------------------------------------------------------
# Resize and crop, atomic writes.

def test_resize_and_center_crop_keeps_the_middle():
    landscape = Image.new("RGB", (80, 40), (255, 0, 0))
    landscape.paste((0, 255, 0), (20, 0, 60, 40))  # the centred 40 x 40 square is green
    out = resize_and_center_crop(landscape, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert (out[:, 2:-2] == (0, 255, 0)).all()
    assert out[:, 0, 0].max() < 128  # no red survives at the edge: it was cropped away

    portrait = Image.new("RGB", (30, 90), (0, 0, 255))
    portrait.paste((255, 255, 0), (0, 30, 30, 60))
    out = resize_and_center_crop(portrait, 30)
    assert out.shape == (30, 30, 3) and (out == (255, 255, 0)).all()

    gradient = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)), "L").convert("RGB")
    up = resize_and_center_crop(gradient, 128)  # upscaling works too
    assert up.shape == (128, 128, 3) and np.all(np.diff(up[64, 4:-4, 0].astype(int)) >= 0)
    with pytest.raises(ValueError, match="RGB"):
        resize_and_center_crop(Image.new("L", (8, 8)), 4)


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second", fsync=False)
    assert target.read_bytes() == b"second"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")
    assert target.read_bytes() == b"second"  # a failed write leaves the old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # and no temporary file
