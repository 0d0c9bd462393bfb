"""evaluate.py end to end on a tiny checkpoint, the blind baseline, the cross-attention maps and the pictures."""

import doctest
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tiny_checkpoints import save_untrained_captioner

import evaluate
import process_coco
from captioner.cli import run_script
from captioner.config import (
    CaptionDecoderConfig,
    CaptionerRunConfig,
    DataConfig,
    EvalConfig,
    ViTConfig,
)
from captioner.evaluation import blind_baseline
from captioner.evaluation.attention_maps import (
    cross_attention_maps,
    token_words,
    word_attention,
)
from captioner.evaluation.blind_baseline import blind_scores, choose_blind_caption
from captioner.evaluation import official as official_module
from captioner.evaluation.metrics import evaluate_captions
from captioner.evaluation.official import TOOLKIT_METRICS
from captioner.evaluation.pictures import (
    VERDICT_BAR,
    VERDICT_MARKS,
    attention_figure,
    attention_overlay,
    captions_figure,
    heat_colours,
    wrap_text,
)
from captioner.evaluation.truth import shapes_scenes, truth_scores
from captioner.models.captioner import build_captioner
from captioner.text.tokenizers import (
    EOS_ID,
    PAD_ID,
    SOS_ID,
    BPETokenizer,
    load_tokenizer,
)
from captioner.training.checkpoints import save_checkpoint

VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=1, heads=2)  # a 4 x 4 patch grid
DECODER = CaptionDecoderConfig(width=16, depth=2, heads=2, dropout=0.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A processed 12 + 5 + 2 image shapes set and a random-weight captioner checkpoint of the format
    train_captioner.py writes (the architecture, the config and the tokenizer inside)."""
    root = tmp_path_factory.mktemp("evaluate")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "12", "--n-val", "5", "--n-test", "2",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    processed = root / "data" / "processed"
    tokenizer_text = (processed / "tokenizer.txt").read_text(encoding="utf-8")
    vocab_size = load_tokenizer(processed / "tokenizer.txt").vocab_size
    cfg = CaptionerRunConfig(run_dir=str(root / "run"), decoder=DECODER,
                             data=DataConfig(processed_dir=str(processed), batch_size=3, max_caption_len=12),
                             eval=EvalConfig(beam_size=2, alpha=0.6, max_len=8))
    torch.manual_seed(0)
    save_untrained_captioner(root / "run" / "checkpoint1.pt", VIT, DECODER, cfg, tokenizer_text, vocab_size,
                             max_len=12)
    return root


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- evaluate.py end to end


def test_end_to_end_val(workdir, capsys):
    summary = evaluate.main(["-c", str(workdir / "run" / "checkpoint1.pt"), "--no-progress"])
    out = capsys.readouterr().out
    folder = workdir / "run" / "eval_checkpoint1_val"  # the default --out-dir

    # every val image exactly once, with an int id and a string caption
    val = read_json(workdir / "data" / "processed" / "val.json")
    results = read_json(folder / "captions.json")
    assert sorted(r["image_id"] for r in results) == sorted(val["image_ids"])
    assert all(set(r) == {"image_id", "caption"} and type(r["image_id"]) is int and isinstance(r["caption"], str)
               for r in results)

    # the scores file holds the scores of exactly these captions, and the checkpoint's eval defaults
    scores = read_json(folder / "captions.scores.json")
    assert scores == json.loads(json.dumps(summary))
    references = dict(zip(val["image_ids"], val["captions"]))
    expected = evaluate_captions(references, {r["image_id"]: r["caption"] for r in results})
    assert scores["model"] == pytest.approx(expected)
    assert (scores["beam_size"], scores["alpha"], scores["max_len"], scores["n_images"]) == (2, 0.6, 8, 5)
    blind = scores["blind_baseline"]
    assert blind["scores"] == pytest.approx(blind_scores(blind["caption"], references))
    for name in evaluate.METRICS:  # the table prints both columns
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert line.split()[1:] == [f"{scores['model'][name]:.4f}", f"{blind['scores'][name]:.4f}"]
    assert "beam 2, alpha 0.6" in out and "empty captions" in out

    # the truth score of the same captions and of the blind caption, against the scenes of the shapes seed
    scenes = shapes_scenes(workdir / "data" / "processed", val["image_ids"])
    truth = scores["truth"]
    model_truth = truth_scores({r["image_id"]: r["caption"] for r in results}, scenes)
    assert truth["model"] == json.loads(json.dumps(model_truth))
    assert truth["blind_baseline"] == truth_scores(dict.fromkeys(scenes, blind["caption"]), scenes)
    assert truth_scores({i: refs[0] for i, refs in references.items()}, scenes)["captions_true"] == 1
    for label, path in evaluate.TRUTH_ROWS:
        line = next(line for line in out.splitlines() if line.startswith(label))
        expected = [evaluate._at(truth[who], path) for who in ("model", "blind_baseline")]
        assert line[16:].split() == [f"{v:.4f}" if v is not None else "-" for v in expected]
    assert "unparsed captions count as not true" in out

    # 32 px images are enlarged 6x to 192 px: samples.png holds 4 columns of 192 px images with text under
    # them; attention.png one block per image, the image and one panel per word, 8 panels to a line
    with Image.open(folder / "samples.png") as samples:
        assert samples.format == "PNG" and samples.width >= 4 * 192 and samples.height > 2 * 192 + 2 * 24
    panels = [1 + len(r["caption"].split()) for r in results[:evaluate.N_ATTENTION]]  # the image + its words
    line_h = 14 + 2 + 192 + 2  # title strip, padding, image, padding
    with Image.open(folder / "attention.png") as attention:
        assert attention.format == "PNG"
        assert attention.height == sum(-(-n // 8) * line_h for n in panels) + 12 * (len(panels) - 1)
        assert attention.width == 2 + min(8, max(panels)) * (192 + 2)


def test_shapes_test_split_is_scored_with_its_references(workdir, tmp_path):
    summary = evaluate.main(["-c", str(workdir / "run"), "--split", "test", "--out-dir", str(tmp_path), "--no-progress"])
    test = read_json(workdir / "data" / "processed" / "test.json")
    references = dict(zip(test["image_ids"], test["captions"]))
    captions = {r["image_id"]: r["caption"] for r in read_json(tmp_path / "captions.json")}
    assert sorted(captions) == sorted(test["image_ids"]) and summary["split"] == "test"
    assert summary["model"] == evaluate_captions(references, captions)  # scored against the test references
    assert summary["truth"]["model"]["n_captions"] == 2 and summary["official"] is None


def test_a_split_without_references_writes_captions_without_scores(workdir, capsys, tmp_path):
    processed = tmp_path / "processed"  # COCO 2017's test split: images, no public captions
    shutil.copytree(workdir / "data" / "processed", processed)
    test = read_json(processed / "test.json")
    (processed / "test.json").write_text(json.dumps({**test, "captions": [[]] * 2, "tokens": [[]] * 2}))
    out_file = tmp_path / "test_results.json"
    run_script(evaluate.main, ["-c", str(workdir / "run"), "--split", "test", "--out", str(out_file),
                               "--processed-dir", str(processed), "--out-dir", str(tmp_path / "pictures"),
                               "--no-progress"])  # no SystemExit: status 0
    assert "no reference captions" in capsys.readouterr().out
    assert sorted(r["image_id"] for r in read_json(out_file)) == sorted(test["image_ids"])
    scores = read_json(tmp_path / "test_results.scores.json")
    assert scores["model"] is None and scores["blind_baseline"] is None and scores["n_images"] == 2
    # the truth score needs no references: a shapes test split gets it, for the model alone
    assert scores["truth"]["model"]["n_captions"] == 2 and scores["truth"]["blind_baseline"] is None
    with Image.open(tmp_path / "pictures" / "samples.png") as samples:
        assert samples.size[0] >= 2 * 192


def test_official_prints_the_toolkits_table_beside_the_projects(workdir, tmp_path, capsys):
    # CI installs both and sets CAPTIONER_REQUIRE_TOOLKIT=1 (.ci/run): there a missing one fails, never skips
    skip = pytest.fail if os.environ.get("CAPTIONER_REQUIRE_TOOLKIT") == "1" else pytest.skip
    if importlib.util.find_spec("pycocoevalcap") is None:
        skip("the COCO caption toolkit is not installed (pip install pycocoevalcap)")
    if shutil.which("java") is None:
        skip("no Java runtime (apt-get install default-jre-headless): the toolkit's tokenizer and METEOR need it")
    summary = evaluate.main(["-c", str(workdir / "run"), "--official", "--out-dir", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    official = summary["official"]
    assert set(official["scores"]) == set(TOOLKIT_METRICS)
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"):  # the project's own agree
        assert summary["model"][name] == pytest.approx(official["scores"][name], rel=1e-6, abs=1e-12), name
    assert 0 <= official["scores"]["METEOR"] <= 1
    if official["scores"]["SPICE"] is None:  # offline: no CoreNLP jars, said so
        assert "SPICE needs Stanford CoreNLP" in official["unavailable"]["SPICE"]
        assert "SPICE unavailable: SPICE needs Stanford CoreNLP" in out
    assert "the COCO caption toolkit (pycocoevalcap)" in out and "METEOR" in out
    assert read_json(tmp_path / "captions.scores.json")["official"] == official


def test_official_without_the_toolkit_or_java_says_how_to_install(workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(official_module.shutil, "which", lambda name: None)
    with pytest.raises(official_module.ToolkitUnavailable,
                       match=r"needs .*a Java runtime .*pip install pycocoevalcap.*default-jre-headless"):
        evaluate.main(["-c", str(workdir / "run"), "--official", "--out-dir", str(tmp_path), "--no-progress"])
    assert not (tmp_path / "captions.json").exists()  # refused before captioning


def test_limit_and_overrides(workdir, tmp_path):
    summary = evaluate.main(["-c", str(workdir / "run" / "checkpoint1.pt"), "--limit", "2", "--beam", "1",
                             "--alpha", "0", "--max-len", "5", "--batch-size", "1", "--threads", "1", "--out-dir", str(tmp_path),
                             "--no-progress"])
    results = read_json(tmp_path / "captions.json")
    val = read_json(workdir / "data" / "processed" / "val.json")
    assert [r["image_id"] for r in results] == val["image_ids"][:2]  # the first two, in split order
    assert all(len(r["caption"].split()) <= 5 for r in results)  # 5 tokens at most, <eos> included
    assert summary["model"]["n_images"] == 2 and summary["blind_baseline"]["scores"]["n_images"] == 2
    assert (summary["beam_size"], summary["alpha"], summary["max_len"]) == (1, 0.0, 5)


def test_truth_is_null_without_scenes_and_an_error_with_the_wrong_ones(workdir, tmp_path, capsys):
    # a processed folder that is not shapes (COCO): no truth score, reported as null
    coco = tmp_path / "coco" / "processed"
    shutil.copytree(workdir / "data" / "processed", coco)
    meta = read_json(coco / "meta.json")
    (coco / "meta.json").write_text(json.dumps(meta | {"source": "coco"}))
    args = ["-c", str(workdir / "run"), "--limit", "2", "--no-progress"]
    summary = evaluate.main(args + ["--processed-dir", str(coco), "--out-dir", str(tmp_path / "coco_eval")])
    out = capsys.readouterr().out
    assert summary["truth"] is None and summary["model"] is not None and "claims true" not in out

    # shapes, but the raw folder with the seed is gone: a note, and null
    (coco / "meta.json").write_text(json.dumps(meta | {"coco_dir": str(tmp_path / "gone")}))
    summary = evaluate.main(args + ["--processed-dir", str(coco), "--out-dir", str(tmp_path / "gone_eval")])
    assert summary["truth"] is None and "note: no truth score" in capsys.readouterr().out

    # a raw folder whose seed did not make these references: an error before any captioning
    shutil.copytree(workdir / "data" / "raw", tmp_path / "coco" / "raw")
    (tmp_path / "coco" / "raw" / "shapes_params.json").write_text(json.dumps({"seed": 99, "image_size": 32}))
    with pytest.raises(SystemExit) as exit_info:
        run_script(evaluate.main, args + ["--processed-dir", str(coco), "--out-dir", str(tmp_path / "bad_eval")])
    assert exit_info.value.code == 2 and "seed 99" in capsys.readouterr().err
    assert not (tmp_path / "bad_eval").exists()


def test_bad_checkpoints_exit_2_naming_the_file(workdir, tmp_path, capsys):
    mae = tmp_path / "mae.pt"
    save_checkpoint(mae, {"kind": "mae", "epoch": 1, "config": {}, "model": {}})
    with pytest.raises(SystemExit) as exit_info:
        run_script(evaluate.main, ["-c", str(mae), "--no-progress"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert str(mae) in message and "'mae' checkpoint" in message

    with pytest.raises(SystemExit) as exit_info:
        run_script(evaluate.main, ["-c", str(tmp_path / "missing.pt")])
    assert exit_info.value.code == 2 and "missing.pt" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:  # the decoder was built for 12 positions
        run_script(evaluate.main, ["-c", str(workdir / "run"), "--max-len", "13"])
    assert exit_info.value.code == 2 and "between 1 and 12" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--split", "--beam", "--alpha", "--max-len", "--batch-size", "--device", "--precision",
                   "--out", "--out-dir", "--limit", "--no-progress", "--processed-dir", "--threads"):
        assert option in text


# ---------------------------------------------------------------- the blind baseline


def test_blind_baseline_docstring():
    failed, attempted = doctest.testmod(blind_baseline)
    assert attempted >= 2 and failed == 0


def test_blind_baseline_picks_the_obvious_caption():
    # "a red circle" describes 6 of 10 images (in varying spelling); the rest are one-offs
    train = ([["A red circle.", f"picture number {n}"] for n in range(6)]
             + [["a red circle!"], ["a blue square"], ["a green star"], ["the yellow moon"]])
    chosen = [choose_blind_caption(train, n_heldout=5, seed=seed) for seed in range(5)]
    assert {c.caption for c in chosen} == {"a red circle"}
    assert chosen[0] == choose_blind_caption(train, n_heldout=5, seed=0)  # deterministic
    assert chosen[0].n_heldout == 5 and chosen[0].heldout_cider_d > 0


def test_blind_baseline_is_judged_by_cider_not_frequency():
    # "a picture" is the most frequent caption, but it fits every image, so CIDEr-D weighs it 0;
    # "a red circle", on half of the images, is the better guess
    train = [["a picture", "a picture", "a red circle" if i % 2 else f"a thing {i}"] for i in range(12)]
    chosen = choose_blind_caption(train, n_heldout=6)
    assert chosen.caption == "a red circle"
    scores = blind_scores("a picture", {i: refs for i, refs in enumerate(train)})
    assert scores["CIDEr-D"] == 0.0 and scores["BLEU-1"] == pytest.approx(1.0)


def test_blind_baseline_needs_captions():
    with pytest.raises(ValueError, match="at least 2 captioned"):
        choose_blind_caption([["one caption"], [], []])


# ---------------------------------------------------------------- cross-attention per word


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_captioner(VIT, DECODER, vocab_size=30, max_len=16).eval()


def test_attention_rows_are_the_ones_that_chose_each_token(tiny_model):
    images = torch.randn(2, 3, 32, 32)
    tokens, _ = tiny_model.generate(images, SOS_ID, EOS_ID, PAD_ID, max_len=6, beam_size=2)  # (2, L)
    maps = cross_attention_maps(tiny_model, images, tokens)  # (2, L, 4, 4)
    assert maps.shape == (2, tokens.shape[1], 4, 4)
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, tokens.shape[1]), atol=1e-5)
    memory = tiny_model.encode(images)
    for i in range(tokens.shape[1]):  # the decoder fed <sos> t_0 .. t_{i-1}: its last row predicts t_i
        prefix = torch.cat([torch.full((2, 1), SOS_ID), tokens[:, :i]], dim=1)  # (2, i + 1)
        _, layers = tiny_model.decoder(prefix, memory, return_cross_attention=True)
        expected = layers[-1][:, :, -1].mean(dim=1).reshape(2, 4, 4)  # (2, 4, 4)
        assert torch.allclose(maps[:, i], expected, atol=1e-5)


def test_token_words_groups_subwords():
    tokenizer = BPETokenizer().train(["a red circle", "a blue square", "a red square"], vocab_size=30)
    ids = tokenizer.encode("a red ridicules square")
    groups = token_words(ids + [EOS_ID, PAD_ID], tokenizer)
    assert [word for word, _ in groups] == ["a", "red", "ridicules", "square"]
    positions = [p for _, where in groups for p in where]
    assert positions == list(range(len(ids)))  # every token once, in order; <eos> and padding left out
    assert len(groups[2][1]) > 1  # "ridicules" was never seen: several tokens, one word
    assert token_words([EOS_ID, 5], tokenizer) == []


def test_word_attention_averages_a_words_tokens(tiny_model):
    tokenizer = BPETokenizer().train(["a red circle", "a blue square"], vocab_size=26)
    images = torch.randn(1, 3, 32, 32)
    ids = tokenizer.encode("a red secular")
    tokens = torch.tensor([ids + [EOS_ID]])  # (1, L)
    (words, maps), = word_attention(tiny_model, images, tokens, tokenizer)
    token_maps = cross_attention_maps(tiny_model, images, tokens)[0]  # (L, 4, 4)
    assert words == ["a", "red", "secular"] and maps.shape == (3, 4, 4)
    secular = [i for word, where in token_words(ids, tokenizer) if word == "secular" for i in where]
    assert torch.allclose(maps[2], token_maps[secular].mean(dim=0))


# ---------------------------------------------------------------- pictures


def test_wrap_text_keeps_lines_within_the_width():
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = "a small red circle to the left of a large blue square on a speckled background"
    lines = wrap_text(text, 80, draw)
    assert " ".join(lines) == text and len(lines) > 2
    assert all(draw.textlength(line) <= 80 for line in lines)
    assert wrap_text("", 80, draw) == [] and wrap_text("supercalifragilistic", 5, draw) == ["supercalifragilistic"]


def test_captions_figure_layout():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    figure = captions_figure(images, ["a red circle"] * 5, ["a circle", None, "x", "y", "z"], scale=4, columns=3)
    assert figure.width == 6 + 3 * (64 + 6) and figure.height > 6 + 2 * (64 + 6)  # 2 rows, text under each
    first = torch.from_numpy(np.array(figure.crop((6, 6, 70, 70)))).permute(2, 0, 1)
    assert torch.equal(first, images[0].repeat_interleave(4, 1).repeat_interleave(4, 2))  # nearest 4x
    with pytest.raises(ValueError):
        captions_figure(images, ["too few"], [None] * 5)

    # with verdicts: a bar in the verdict's colour under each image, and the verdict before the caption
    verdicts = [True, False, None, True, False]
    marked = captions_figure(images, ["a red circle"] * 5, [None] * 5, scale=4, columns=3, verdicts=verdicts)
    for i, verdict in enumerate(verdicts):
        x0, y0 = 6 + (i % 3) * (64 + 6), 6 + (i // 3) * ((marked.height - 6) // 2)
        r, g, b = marked.getpixel((x0 + 32, y0 + 64 + VERDICT_BAR // 2 + 1))
        assert (r, g, b) == VERDICT_MARKS[verdict][0]
        assert {True: g > r + 80, False: r > g + 80, None: r == g == b}[verdict]  # green, red, gray
    assert marked.height > captions_figure(images, ["a red circle"] * 5, [None] * 5, scale=4, columns=3).height
    with pytest.raises(ValueError, match="one verdict per image"):
        captions_figure(images, ["a red circle"] * 5, [None] * 5, verdicts=[True])


def test_attention_overlay_is_hottest_where_the_word_looks():
    assert heat_colours(torch.tensor([0.0, 1.0])).tolist() == [[0.0, 0.0, 140.0], [220.0, 0.0, 0.0]]
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 3] = 1.0  # word 0 looks at the top-right patch only
    maps[1] = 1 / 16  # word 1 looks everywhere a little
    panels = attention_overlay(image, maps)  # (2, 3, 32, 32)
    red_minus_blue = panels[:, 0].float() - panels[:, 2].float()  # (2, 32, 32)
    assert red_minus_blue[0, :8, 24:].mean() > red_minus_blue[0, 24:, :8].mean() + 50
    assert red_minus_blue[0, :8, 24:].mean() > red_minus_blue[1].mean() + 50  # one shared scale per image
    figure = attention_figure(image[None].expand(2, -1, -1, -1), [["a", "b"], []], [maps, maps[:0]], scale=2,
                              per_row=2)
    # image 0: [image, a] then [b]; image 1 (no words): [image]; 2 + 2 + 2 + 2 + 14 px titles per line
    assert figure.width == 2 + 2 * (64 + 2) and figure.height == 3 * (14 + 2 + 64 + 2) + 12
