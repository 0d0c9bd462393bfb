"""code_snippets.ipynb: valid nbformat 4 without outputs, examples numbered 1..10, and every code cell
runs top to bottom on a tiny shapes dataset (without matplotlib or IPython, as in CI).

The notebook is read with the json module and its code cells are executed in one namespace, the way
Jupyter would run them, so no nbformat/nbconvert/jupyter is needed.
"""

import contextlib
import io
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tiny_checkpoints import save_untrained_captioner

import process_coco
from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    ViTConfig,
)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "code_snippets.ipynb"
N_EXAMPLES = 10
HEADING = re.compile(r"## (\d+)\. \S")
# What the Pillow fallback of the notebook's show() writes, one picture per illustrated example.
FIGURE_NAMES = ("example3_image", "example6_augmented", "example7_masking")


def read_notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def cell_text(cell: dict) -> str:
    return "".join(cell["source"])


def examples(cells: list[dict]) -> dict[int, list[int]]:
    """Example number -> indices of its code cells (those after its heading, up to the next one)."""
    found, current = {}, None
    for i, cell in enumerate(cells):
        match = HEADING.match(cell_text(cell)) if cell["cell_type"] == "markdown" else None
        if match:
            current = int(match.group(1))
            found[current] = []
        elif cell["cell_type"] == "code" and current is not None:
            found[current].append(i)
    return found


def run_cells(cells: list[dict], indices: list[int], namespace: dict) -> None:
    """exec each code cell in ``namespace``; a cell that raises fails the test with its number and source."""
    for i in indices:
        source = cell_text(cells[i])
        try:
            exec(compile(source, f"<code_snippets.ipynb cell {i}>", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"notebook cell {i} raised {type(e).__name__}: {e}\n--- source of cell {i} ---\n{source}",
                        pytrace=False)


def test_notebook_is_nbformat_4_without_outputs():
    notebook = read_notebook()
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 5  # 4.5: cells carry ids
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["metadata"], dict)
        source = cell["source"]
        assert isinstance(source, list) and source and all(isinstance(line, str) for line in source)
        assert all(line.endswith("\n") for line in source[:-1]) and not source[-1].endswith("\n")
        if cell["cell_type"] == "code":
            assert cell["execution_count"] is None and cell["outputs"] == []
            assert not any(line.lstrip().startswith(("%", "!")) for line in source), "no IPython magics"
        else:
            assert set(cell) == {"cell_type", "id", "metadata", "source"}


def test_examples_are_numbered_in_order_and_each_has_code():
    cells = read_notebook()["cells"]
    headings = [int(m.group(1)) for cell in cells if cell["cell_type"] == "markdown"
                for m in [HEADING.match(cell_text(cell))] if m]
    assert headings == list(range(1, N_EXAMPLES + 1))
    assert all(examples(cells)[n] for n in headings)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run every code cell of the notebook on a tiny processed shapes set, as CI would: no
    matplotlib, no IPython, no trained checkpoint. Returns (cells, namespace, printed text, root)."""
    root = tmp_path_factory.mktemp("notebook")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "20", "--n-val", "6", "--n-test", "2",
                       "--vocab-size", "150", "--workers", "1", "--no-progress"])
    cells = read_notebook()["cells"]
    namespace = {"__name__": "__main__"}
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("CAPTIONER_DATA", str(root / "data"))
        mp.setenv("CAPTIONER_FIGURES", str(root / "figures"))
        mp.setenv("CAPTIONER_CHECKPOINT", str(root / "no_such_checkpoint.pt"))
        mp.chdir(REPO)  # the configs/ paths are relative to the repository root, where Jupyter starts
        mp.setitem(sys.modules, "matplotlib", None)  # an import of either now raises ImportError
        mp.setitem(sys.modules, "IPython", None)
        run_cells(cells, [i for i, c in enumerate(cells) if c["cell_type"] == "code"], namespace)
    return cells, namespace, printed.getvalue(), root


def test_every_code_cell_runs_and_saves_its_pictures(executed):
    _, namespace, printed, root = executed
    for name in FIGURE_NAMES:
        path = root / "figures" / f"{name}.png"
        assert f"saved {path}" in printed
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 64
    assert "no checkpoint at" in printed and namespace["model"] is namespace["captioner"]
    assert len(printed.splitlines()) < 200, "the notebook's cells print too much"


def printed_after(printed: str, heading: str, n: int) -> list[str]:
    """The ``n`` lines printed after the line ``heading``."""
    lines = printed.splitlines()
    start = lines.index(heading) + 1
    return lines[start : start + n]


def shape_of(line: str) -> tuple[int, ...]:
    """``"  images       (2, 3, 64, 64)     torch.uint8"`` -> (2, 3, 64, 64)."""
    return tuple(int(v) for v in re.search(r"\(([\d, ]*)\)", line).group(1).replace(" ", "").split(",") if v)


def test_printed_values_match_independent_computations(executed):
    """What the cells print, against values worked out here from the fixture's arguments, the raw
    JSON files and the published formulas (not from the library)."""
    _, namespace, printed, root = executed
    processed = root / "data" / "processed"

    # Example 1: --n-train 20 images, five captions each
    assert "20 images, 100 captions" in printed

    # Example 4, grouped by image: batch_size 10 = 2 images x 5 captions; T = <sos> + the longest
    # caption's tokens (train.json, read as plain JSON) + <eos>
    grouped = printed_after(printed, "caption_loader, group_by_image=True:", 5)
    images, index, tokens, ids = (shape_of(line) for line in grouped[:4])
    assert images == (2, 3, 64, 64) and index == (10,) and ids == (2,)
    assert grouped[4] == "  image_index: [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]"
    train = json.loads((processed / "train.json").read_text())
    row = {image_id: i for i, image_id in enumerate(train["image_ids"])}
    batch_ids = namespace["batch"]["image_ids"].tolist()
    longest = max(len(t) for image_id in batch_ids for t in train["tokens"][row[image_id]])
    assert tokens == (10, min(24, longest + 2))
    # random pairs: one image row per distinct image, image_index numbering them 0..U-1
    pairs = printed_after(printed, "caption_loader, random pairs:", 5)
    image_index = json.loads(pairs[4].split(":", 1)[1])
    assert shape_of(pairs[0]) == (len(set(image_index)), 3, 64, 64)
    assert sorted(set(image_index)) == list(range(len(set(image_index))))

    # Example 7, from configs/shapes_encoder.yaml: 64 px / 8 px = 8 x 8 patches of 8 * 8 * 3 values;
    # int(64 * (1 - 0.75)) = 16 kept: the 16 patches with the smallest noise of the seeded generator
    encoder = yaml.safe_load((REPO / "configs" / "shapes_encoder.yaml").read_text())
    size, patch, ratio = encoder["model"]["image_size"], encoder["model"]["patch_size"], encoder["mae"]["mask_ratio"]
    L = (size // patch) ** 2
    n_keep = int(L * (1 - ratio))
    assert f"{size} px image, {patch} px patches: L = {L} patches of D = {patch * patch * 3} values" in printed
    assert f"mask ratio {ratio}: {n_keep} patches kept, {L - n_keep} masked" in printed
    noise = torch.rand(1, L, generator=torch.Generator().manual_seed(0))
    assert f"kept patches: {sorted(noise[0].argsort()[:n_keep].tolist())}" in printed

    # Example 9: GNMT's lp(n) = ((5 + n) / 6) ** alpha for n = 4 and 10 tokens, totals -3.0 and -4.5
    for a in (0.0, 0.6, 1.0):
        lp_short, lp_long = ((5 + 4) / 6) ** a, ((5 + 10) / 6) ** a
        short, long = -3.0 / lp_short, -4.5 / lp_long
        assert (f"alpha {a}: lp = {lp_short:.3f}, {lp_long:.3f}  scores: short {short:.3f}, long {long:.3f}"
                f"  -> the {'short' if short > long else 'long'} one wins") in printed
    assert "alpha 0.6: lp = 1.275, 1.733" in printed and "alpha 1.0: lp = 1.500, 2.500" in printed

    # Example 10: a 4-word prefix of the 7-word reference matches every n-gram: BLEU = BP = exp(1 - 7/4)
    bp = round(math.exp(1 - 7 / 4), 3)  # 0.472
    assert f"'a red circle above'                 BLEU-1..4 = {[bp] * 4}" in printed
    assert "'a red circle above a blue square'   BLEU-1..4 = [1.0, 1.0, 1.0, 1.0]" in printed
    # CIDEr-D of {1: "a red circle" (perfect), 2: hyp} against {1: ["a red circle"], 2: ["a blue square"]}:
    # "a" is in both images' references (idf 0), every other n-gram in one (idf log 2). Image 1: cosine 1
    # for n = 1, 2, 3 and no 4-gram: 10 * 3/4 = 7.5. Image 2 "a": only the zero-weight "a": 0, so the
    # mean is 3.75. Image 2 "blue square": n=1 cosine 1, n=2 {blue square} vs {a blue, blue square}
    # 1/sqrt(2), n=3 none; 2 vs 3 words: penalty exp(-1 / (2 * 6**2)) -> 10 * (1 + 1/sqrt 2) / 4 * exp(-1/72).
    blue_square = 10 * (1 + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert f"image 2 captioned 'a'            CIDEr-D = {(7.5 + 0) / 2:.3f}" in printed
    assert f"image 2 captioned 'blue square'  CIDEr-D = {(7.5 + blue_square) / 2:.3f}" in printed


def test_example_9_uses_a_checkpoint_when_there_is_one(executed, tmp_path):
    """The trained-checkpoint branch of example 9, with a tiny random-weight captioner checkpoint
    in train_captioner.py's format (it carries its own architecture and tokenizer)."""
    cells, namespace, _, root = executed
    tokenizer_text = (root / "data" / "processed" / "tokenizer.txt").read_text(encoding="utf-8")
    vocab_size = namespace["tokenizer"].vocab_size
    vit = ViTConfig(image_size=32, patch_size=8, width=16, depth=1, heads=2)
    decoder = CaptionDecoderConfig(width=16, depth=1, heads=2, dropout=0.0)
    cfg = CaptionerRunConfig(decoder=decoder)
    checkpoint = save_untrained_captioner(tmp_path / "checkpoint1.pt", vit, decoder, cfg, tokenizer_text, vocab_size,
                                          max_len=10)
    namespace = dict(namespace, CHECKPOINT=checkpoint)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_cells(cells, examples(cells)[9], namespace)
    assert f"trained weights from {tmp_path / 'checkpoint1.pt'}" in printed.getvalue()
    assert namespace["model"].encoder.config == vit  # the checkpoint's own 32 px ViT
    assert namespace["beams"].shape[:2] == (1, namespace["K"])
    assert namespace["beams"].shape[2] <= 9  # max_len - 1 generated tokens
