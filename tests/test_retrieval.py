"""Retrieval: the contrastive losses, LAMB, Recall@K and the top-k search, and train_retrieval.py end to end.

Every expected value is computed here by hand or by brute force, never by the code under test.
"""

import json
import math

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

import process_coco
import train_retrieval
from captioner.config import EncoderRunConfig, MAEConfig, TextEncoderConfig, ViTConfig, config_to_dict
from captioner.data.processed import read_split
from captioner.evaluation.retrieval import (
    embed_split,
    random_recall,
    recall_at_k,
    relevant_counts,
    top_k_search,
)
from captioner.models.dual_encoder import DualEncoder
from captioner.models.mae import MaskedAutoencoder
from captioner.training.checkpoints import save_checkpoint
from captioner.training.contrastive import cosine_embedding_loss, info_nce_loss, sampled_negatives
from captioner.training.lamb import Lamb

VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=1, heads=2)


# ---- losses -----------------------------------------------------------------------------------------

def test_info_nce_equals_a_hand_computation():
    # images u0 = (1, 0), u1 = (0, 1); texts v0 = (0.6, 0.8), v1 = (0, 1); scale s = 2.
    # cosines S = [[0.6, 0], [0.8, 1]]; logits 2S = [[1.2, 0], [1.6, 2]]
    # image->text rows: -log(e^1.2/(e^1.2+e^0)), -log(e^2/(e^1.6+e^2))
    # text->image rows (columns of 2S): -log(e^1.2/(e^1.2+e^1.6)), -log(e^2/(e^0+e^2))
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    e = math.exp
    i2t = (-math.log(e(1.2) / (e(1.2) + 1)) - math.log(e(2) / (e(1.6) + e(2)))) / 2
    t2i = (-math.log(e(1.2) / (e(1.2) + e(1.6))) - math.log(e(2) / (1 + e(2)))) / 2
    assert info_nce_loss(u, v, torch.tensor(2.0)).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_info_nce_is_symmetric_in_the_two_towers():
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    s = torch.tensor(3.0)
    assert info_nce_loss(u, v, s).item() == pytest.approx(info_nce_loss(v, u, s).item(), rel=1e-6)


def test_cosine_embedding_loss_equals_a_hand_computation():
    # cos(u, v) = 0.6 for both pairs (v is not unit length: 2 * (0.6, 0.8))
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.2, 1.6], [1.2, 1.6]])
    labels = torch.tensor([1.0, -1.0])
    assert cosine_embedding_loss(u, v, labels, margin=0.5).item() == pytest.approx((0.4 + 0.1) / 2, rel=1e-6)
    assert cosine_embedding_loss(u, v, labels, margin=0.7).item() == pytest.approx(0.4 / 2, rel=1e-6)


def test_sampled_negatives_are_other_rows():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        j = sampled_negatives(4, g)
        assert (j != torch.arange(4)).all() and ((j >= 0) & (j < 4)).all()


# ---- the dual encoder ------------------------------------------------------------------------------------

def test_padding_changes_no_caption_embedding():
    from captioner.config import TextEncoderConfig
    from captioner.models.dual_encoder import DualEncoder
    torch.manual_seed(0)
    model = DualEncoder(VIT, TextEncoderConfig(width=16, depth=2, heads=2), vocab_size=30, max_len=12, embed_dim=8)
    tokens = torch.tensor([[1, 7, 8, 9, 2]])  # <sos> 7 8 9 <eos>
    padded = torch.tensor([[1, 7, 8, 9, 2, 0, 0, 0]])
    a, b = model.encode_texts(tokens), model.encode_texts(padded)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a.norm(dim=-1), torch.ones(1))


# ---- LAMB ---------------------------------------------------------------------------------------------

def test_lamb_first_step_equals_a_hand_computation():
    # w = (3, 4), ||w|| = 5; g = (1, -2); betas (0.9, 0.99), eps 1e-6, wd 0.1, lr 0.01.
    # step 1: m_hat = g, v_hat = g^2, so r = g / (|g| + eps) = (1, -1) up to eps
    # u = r + 0.1 w = (1.3, -0.6), ||u|| = sqrt(1.69 + 0.36) = sqrt(2.05)
    # w' = w - 0.01 * 5 / sqrt(2.05) * u
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor([1.0, -2.0])
    Lamb([w], lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1).step()
    r = torch.tensor([1 / (1 + 1e-6), -2 / (2 + 1e-6)])
    u = r + 0.1 * torch.tensor([3.0, 4.0])
    expected = torch.tensor([3.0, 4.0]) - 0.01 * 5 / math.sqrt(float((u**2).sum())) * u
    assert torch.allclose(w.detach(), expected, atol=1e-7)


def test_lamb_second_step_and_weight_norm_clipping():
    # max_weight_norm 1 clips phi(||w||) = 5 to 1. Step 2 with the same gradient: m = g (0.1 + 0.09) / 0.19 = g
    # after bias correction, likewise v_hat = g^2, so the direction is the same and only w has moved.
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = Lamb([w], lr=0.01, betas=(0.9, 0.99), eps=0.0 + 1e-12, weight_decay=0.0, max_weight_norm=1.0)
    for _ in range(2):
        w.grad = torch.tensor([1.0, -2.0])
        opt.step()
    # each step moves w by lr * min(||w||, 1) * r / ||r|| with r = (1, -1): 0.01 / sqrt(2) * (1, -1)
    expected = torch.tensor([3.0, 4.0]) - 2 * 0.01 / math.sqrt(2) * torch.tensor([1.0, -1.0])
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_lamb_without_adaptation_is_adamw_direction():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor([1.0, -2.0])
    Lamb([w], lr=0.1, eps=1e-12, adapt=False).step()
    assert torch.allclose(w.detach(), torch.tensor([2.9, 4.1]), atol=1e-6)  # Adam's first step: lr * sign(g)


# ---- Recall@K and the top-k search ----------------------------------------------------------------------

def brute_force_recall(sim, owner, k):
    """sim (N images, M captions); owner (M,). Counted with Python loops over ranks."""
    n, m = sim.shape
    i2t = 0
    for i in range(n):
        order = sorted(range(m), key=lambda j: -sim[i, j].item())[:k]
        i2t += any(owner[j] == i for j in order)
    t2i = 0
    for j in range(m):
        order = sorted(range(n), key=lambda i: -sim[i, j].item())[:k]
        t2i += owner[j] in order
    return i2t / n, t2i / m


def test_recall_at_k_equals_a_brute_force_count():
    torch.manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(7, 4), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, 1])
    texts = torch.nn.functional.normalize(images[owner] + 0.8 * torch.randn(12, 4), dim=-1)
    got = recall_at_k(images, texts, owner, ks=(1, 2, 5), chunk_size=5)
    for k in (1, 2, 5):
        i2t, t2i = brute_force_recall(images @ texts.T, owner.tolist(), k)
        assert got[f"i2t_R@{k}"] == pytest.approx(i2t) and got[f"t2i_R@{k}"] == pytest.approx(t2i)


def test_chunked_top_k_search_equals_a_full_sort():
    torch.manual_seed(2)
    queries, bank = torch.randn(3, 5), torch.randn(50, 5)
    scores, index = top_k_search(queries, bank, k=4, chunk_size=7)
    full = queries @ bank.T
    for q in range(3):
        order = sorted(range(50), key=lambda j: -full[q, j].item())[:4]
        assert index[q].tolist() == order
        assert torch.allclose(scores[q], full[q, order])


def test_random_recall_by_hand():
    # 2 images with 1 and 2 captions (3 captions). i2t R@1: image 0 hits with 1/3, image 1 with 2/3.
    # R@2: image 0: 1 - C(2,2)/C(3,2) = 2/3, image 1: 1 - 0 = 1.
    r = random_recall([1, 2], [1, 1, 1], ks=(1, 2))
    assert r["i2t_R@1"] == pytest.approx(0.5) and r["i2t_R@2"] == pytest.approx(5 / 6)
    assert r["t2i_R@1"] == pytest.approx(0.5) and r["t2i_R@2"] == pytest.approx(1.0)


def test_random_recall_with_fewer_captions_than_k():
    # K = 5 and 10 rank the whole list (3 captions, 2 images): every hit is found, both ways
    r = random_recall([1, 2], [1, 1, 1], ks=(1, 5, 10))
    assert r["i2t_R@5"] == r["i2t_R@10"] == r["t2i_R@5"] == r["t2i_R@10"] == 1.0
    assert r["i2t_R@1"] == pytest.approx(0.5)


def test_relevant_counts_and_random_recall_count_captions_of_the_same_text():
    # captions 0 and 2 share a text: caption 2 is a hit for image 0 (3 hits: its own two and caption 2),
    # image 1 has 2 hits (caption 2 and caption 0); captions 0 and 2 have 2 image hits each, caption 1 one.
    per_image, per_caption = relevant_counts(torch.tensor([0, 0, 1]), torch.tensor([5, 6, 5]), 2)
    assert per_image == [3, 2] and per_caption == [2, 1, 2]
    # i2t R@1: image 0 finds one of 3 hits among 3 captions: 1; image 1 two of 3: 2/3 -> 5/6.
    # t2i R@1: captions 0, 2 find one of 2 hits among 2 images: 1; caption 1: 1/2 -> 5/6.
    r = random_recall(per_image, per_caption, ks=(1,))
    assert r["i2t_R@1"] == pytest.approx(5 / 6) and r["t2i_R@1"] == pytest.approx(5 / 6)


def tied_split(seed=0):
    """12 images, 3 captions each, every caption's text one of 10 (so many are copies of another image's
    caption, with the very same embedding); a caption's embedding is its text's, a random unit vector."""
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(12, 6, generator=g), dim=-1)
    texts_emb = torch.nn.functional.normalize(torch.randn(10, 6, generator=g), dim=-1)
    owner = torch.arange(12).repeat_interleave(3)  # (36,)
    text = torch.randint(0, 10, (36,), generator=g)  # (36,)
    return images, texts_emb[text], owner, text


def brute_force_recall_by_text(sim, owner, text, k):
    """The hit rule with Python sets: a caption is a hit for image i when its text is one of i's own."""
    n, m = sim.shape
    own_texts = [{text[j] for j in range(m) if owner[j] == i} for i in range(n)]
    # the 10 texts have distinct scores, so ranks are unambiguous up to copies of one text (all hits or none)
    i2t = sum(any(text[j] in own_texts[i] for j in sorted(range(m), key=lambda j: -sim[i, j].item())[:k])
              for i in range(n))
    t2i = sum(any(text[j] in own_texts[i] for i in sorted(range(n), key=lambda i: -sim[i, j].item())[:k])
              for j in range(m))
    return i2t / n, t2i / m


def test_recall_at_k_counts_copies_of_a_true_caption_and_ignores_chunking_and_order():
    images, texts, owner, text = tied_split()
    assert len(set(text.tolist())) < len(text)  # copies exist
    expected = recall_at_k(images, texts, owner, text, ks=(1, 2, 5))
    for k in (1, 2, 5):
        i2t, t2i = brute_force_recall_by_text(images @ texts.T, owner.tolist(), text.tolist(), k)
        assert expected[f"i2t_R@{k}"] == pytest.approx(i2t) and expected[f"t2i_R@{k}"] == pytest.approx(t2i)
    g = torch.Generator().manual_seed(1)
    for chunk_size in (1, 4, 7, 1000):
        captions, pictures = torch.randperm(36, generator=g), torch.randperm(12, generator=g)  # new orders
        new_row = torch.empty(12, dtype=torch.long)
        new_row[pictures] = torch.arange(12)  # image row r moves to new_row[r]
        got = recall_at_k(images[pictures], texts[captions], new_row[owner[captions]], text[captions],
                          ks=(1, 2, 5), chunk_size=chunk_size)
        assert got == pytest.approx(expected), chunk_size


def test_top_k_search_ranks_equal_scores_by_row_whatever_the_chunking():
    queries = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    for chunk_size in (1, 2, 3, 4, 100):
        scores, index = top_k_search(queries, bank, k=4, chunk_size=chunk_size)
        assert index.tolist() == [[1, 3, 4, 2]] and scores.tolist() == [[1.0, 1.0, 1.0, 0.5]], chunk_size


# ---- train_retrieval.py -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "12", "--n-val", "4", "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    (root / "encoder.yaml").write_text(yaml.safe_dump({"model": config_to_dict(VIT)}))
    torch.manual_seed(0)
    mae = MaskedAutoencoder(VIT, MAEConfig(decoder_width=16, decoder_depth=1, decoder_heads=2))
    save_checkpoint(root / "mae.pt", {"kind": "mae", "epoch": 1, "config": config_to_dict(EncoderRunConfig(model=VIT)),
                                      "model": mae.state_dict()})
    config = {
        "run_dir": str(root / "run"), "encoder_config": str(root / "encoder.yaml"),
        "data": {"processed_dir": str(root / "data" / "processed"), "batch_size": 8, "max_caption_len": 24},
        "text": {"width": 16, "depth": 1, "heads": 2},
        "contrastive": {"embed_dim": 8},
        "train": {"epochs": 2, "lr": 3e-3, "warmup_epochs": 0.5, "log_every": 2},
        "eval": {"picture_images": 2, "top_k": 2},
    }
    (root / "retrieval.yaml").write_text(yaml.safe_dump(config))
    return root


def run(workdir, name, *extra):
    return train_retrieval.main(["--config", str(workdir / "retrieval.yaml"), "--set", f"run_dir={workdir / name}",
                                 "--no-progress", *extra])


def comparable(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "pairs_per_s")} for h in history]


@pytest.mark.parametrize("extra", [(), ("--set", "contrastive.loss=cosine", "--set", "contrastive.optimizer=lamb")])
def test_resume_repeats_the_uninterrupted_run(workdir, extra):
    name = "straight_" + "_".join(extra[1::2]).replace("=", "-").replace(".", "-")
    straight = run(workdir, name, *extra)
    resumed = train_retrieval.main(["-c", str(workdir / name / "checkpoint1.pt"),
                                    "--set", f"run_dir={workdir / (name + '_resumed')}", "--no-progress"])
    assert len(resumed) == 2 and comparable(resumed) == comparable(straight)
    a = torch.load(workdir / name / "checkpoint2.pt", weights_only=True)["model"]
    b = torch.load(workdir / (name + "_resumed") / "checkpoint2.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (workdir / name / "retrieval.png").is_file() and (workdir / name / "results.json").is_file()


def test_pretrained_image_tower_comes_from_the_mae_checkpoint(workdir):
    run(workdir, "mae", "-p", str(workdir / "mae.pt"), "--set", "train.epochs=1")
    payload = torch.load(workdir / "mae" / "checkpoint1.pt", weights_only=True)
    assert payload["pretrained"] == str(workdir / "mae.pt") and payload["vit"]["width"] == VIT.width


class PixelsAndTokens(torch.nn.Module):
    """A stand-in dual encoder: an image's "embedding" is its mean pixel, a caption's its padded tokens."""

    def forward(self, images, tokens):
        return images.mean((1, 2, 3))[:, None], torch.nn.functional.pad(tokens.float(), (0, 30 - tokens.shape[1]))


def test_embed_split_maps_each_caption_to_its_image_across_batches(workdir):
    processed = workdir / "data" / "processed"
    record, cache = read_split(processed, "val")
    counts = [len(tokens) for tokens in record["tokens"]]
    # 4 images, 2 per batch of 8 captions: the second batch's image_index counts from 0 again
    image_emb, text_emb, owner, text = embed_split(PixelsAndTokens(), processed, "val", lambda x: x.float(),
                                                   torch.device("cpu"), "fp32", batch_size=8, max_len=24)
    assert owner.tolist() == [i for i, n in enumerate(counts) for _ in range(n)]
    assert image_emb[:, 0].tolist() == pytest.approx(cache.reshape(4, -1).astype("float64").mean(1).tolist())
    captions = [tuple(ids) for tokens in record["tokens"] for ids in tokens]  # the split's order
    ids = text.tolist()
    assert [captions.index(c) for c in captions] == [ids.index(t) for t in ids]  # the same text, the same id
    assert text_emb[:, 1].tolist() == [c[0] for c in captions]  # row j is caption j (its first word)


def test_a_split_with_fewer_captions_than_k_still_gets_its_results(workdir, tmp_path):
    # one validation image: 5 captions, fewer than K = 10 (the random baseline once divided by C(5, 10) = 0)
    process_coco.main(["--data-dir", str(tmp_path / "data"), "--n-train", "8", "--n-val", "1", "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    run(workdir, "one_val_image", "--set", f"data.processed_dir={tmp_path / 'data' / 'processed'}",
        "--set", "train.epochs=1")
    results = json.loads((workdir / "one_val_image" / "results.json").read_text())["val"]
    assert results["images"] == 1 and results["captions"] < 10
    assert (workdir / "one_val_image" / "retrieval.png").is_file()
    # one image: every caption is a hit for it, and it is the only image a caption can find
    assert all(value == 1.0 for value in results["random"].values())
    assert all(value == 1.0 for value in results["model"].values())


def test_the_logit_scale_has_a_gradient_above_the_cap_and_is_capped_after_the_step():
    torch.manual_seed(0)
    model = DualEncoder(VIT, TextEncoderConfig(width=16, depth=1, heads=2), vocab_size=20, max_len=8, embed_dim=8)
    images, tokens = torch.randn(3, 3, 32, 32), torch.randint(4, 20, (3, 6))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(150.0))  # above the cap of 100
    u, v = model(images, tokens)
    info_nce_loss(u, v, model.scale()).backward()
    # the loss as a function of theta = log s alone, by central differences in float64
    u, v = u.detach().double(), v.detach().double()
    h = 1e-4
    numeric = (info_nce_loss(u, v, torch.tensor(150.0 * math.exp(h), dtype=torch.float64))
               - info_nce_loss(u, v, torch.tensor(150.0 * math.exp(-h), dtype=torch.float64))).item() / (2 * h)
    assert abs(numeric) > 1e-3  # a gradient that a clamp in the forward pass would have zeroed
    assert model.logit_scale.grad.item() == pytest.approx(numeric, rel=1e-3)
    model.cap_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100.0), abs=1e-6)
    assert model.scale().item() == pytest.approx(100.0, rel=1e-5)


@pytest.fixture(scope="module")
def instrumented_run(workdir):
    """One epoch with grad_clip=0.01 and the inverse temperature starting at 1000 (above the cap): records
    the gradient norm the optimiser sees at every step, and the logit scale's value and gradient there."""
    models, steps = [], []
    real = train_retrieval.DualEncoder

    def recording_model(*args, **kwargs):
        models.append(real(*args, **kwargs))
        return models[-1]

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scale = models[-1].logit_scale
        steps.append((math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)), scale.item(), scale.grad.item()))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_retrieval, "DualEncoder", recording_model)
        handle = register_optimizer_step_pre_hook(before_step)
        try:
            history = run(workdir, "instrumented", "--set", "train.grad_clip=0.01", "--set", "train.epochs=1",
                          "--set", "contrastive.init_temperature=0.001")
        finally:
            handle.remove()
    return history, steps, models[-1]


def test_retrieval_gradients_are_clipped_to_train_grad_clip(instrumented_run):
    history, steps, _ = instrumented_run
    norms = [norm for norm, _, _ in steps]
    assert len(norms) == history[-1]["step"]
    # clip_grad_norm_ scales by max_norm / (norm + 1e-6): every norm lands just below 0.01 (unclipped,
    # or clipped to another value, InfoNCE's gradients of a fresh model are far larger)
    assert max(norms) <= 0.01 * (1 + 1e-5) and min(norms) >= 0.01 * (1 - 1e-3)


def test_the_script_caps_the_logit_scale_after_each_step(instrumented_run):
    _, steps, model = instrumented_run
    first_value, first_grad = steps[0][1], steps[0][2]
    assert first_value == pytest.approx(math.log(1000.0), rel=1e-6) and first_grad != 0.0  # no clamp in the loss
    assert all(value <= math.log(100.0) + 1e-6 for _, value, _ in steps[1:])  # capped after the first step
    assert model.logit_scale.item() <= math.log(100.0) + 1e-6


def test_bad_loss_name_is_a_clear_error(workdir):
    with pytest.raises(ValueError, match="contrastive.loss"):
        run(workdir, "bad", "--set", "contrastive.loss=triplet")
    with pytest.raises(ValueError, match="data.group_by_length is a train_captioner.py setting"):
        run(workdir, "by_length", "--set", "data.group_by_length=true")


@pytest.mark.parametrize("name", ["shapes_retrieval.yaml", "coco_retrieval.yaml"])
def test_the_presets_load(name):
    from pathlib import Path

    from captioner.config import RetrievalRunConfig, load_config
    cfg = load_config(RetrievalRunConfig, Path(train_retrieval.__file__).parent / "configs" / name)
    assert cfg.contrastive.loss == "info_nce" and cfg.eval.splits == ["val"]
