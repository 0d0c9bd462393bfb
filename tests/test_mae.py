"""The ViT, MAE masking, the MAE loss, the FLOPs helpers and the reconstruction picture."""

import math
from pathlib import Path

import flops  # bench/flops.py (tests/conftest.py puts bench/ on the path)
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from captioner.config import (
    EncoderRunConfig,
    MAEConfig,
    ViTConfig,
    config_to_dict,
    load_config,
)
from captioner.data.transforms import normalize
from captioner.evaluation.pictures import (
    image_grid,
    mae_reconstruction_figure,
    save_png,
    to_uint8,
)
from captioner.models.mae import (
    ImageDecoder,
    MaskedAutoencoder,
    num_visible,
    random_masking,
)
from captioner.models.vit import ImageEncoder, PatchEmbedding, patchify, unpatchify
from captioner.training.checkpoints import (
    CheckpointError,
    encoder_from_mae_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

VIT = ViTConfig(image_size=16, patch_size=4, width=32, depth=2, heads=4)  # 16 patches
VIT_OVERLAP = ViTConfig(image_size=16, patch_size=4, width=32, depth=2, heads=4, patch_overlap=2)
MAE = MAEConfig(mask_ratio=0.75, decoder_width=16, decoder_depth=1, decoder_heads=2)


def tiny_mae(seed=0, vit=VIT, **mae_overrides):
    torch.manual_seed(seed)
    return MaskedAutoencoder(vit, MAEConfig(**{**config_to_dict(MAE), **mae_overrides}))


def images(batch=3, seed=1):
    return torch.randn(batch, 3, VIT.image_size, VIT.image_size, generator=torch.Generator().manual_seed(seed))


# ---- patches ----------------------------------------------------------------------------------


def test_patchify_layout_and_exact_round_trip():
    x = torch.randn(2, 3, 8, 12)
    patches = patchify(x, 4)  # 2 x 3 grid
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[0, 1, :3], x[0, :, 0, 4])  # patch 1 = top row, second column; pixel (0, 4) RGB
    assert torch.equal(patches[1, 3, -3:], x[1, :, 7, 3])  # patch 3 = second row, first column; its last pixel
    square = torch.randn(2, 3, 12, 12)
    assert torch.equal(unpatchify(patchify(square, 4), 4), square)
    with pytest.raises(ValueError, match="multiple"):
        patchify(torch.zeros(1, 3, 10, 10), 4)


def test_patch_embedding_is_a_linear_map_of_patchify():
    torch.manual_seed(0)
    embed = PatchEmbedding(16, 4, 32)
    x = torch.randn(2, 3, 16, 16)
    linear = patchify(x, 4) @ embed.as_linear_weight().T + embed.proj.bias  # (B, L, C)
    torch.testing.assert_close(embed(x), linear, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="16x16"):
        embed(torch.zeros(1, 3, 8, 8))


def test_overlapping_patch_embedding_maps_the_window_around_each_patch():
    p, o = 4, 2
    embed = PatchEmbedding(16, p, 32, overlap=o)
    x = torch.randn(2, 3, 16, 16)
    padded = torch.zeros(2, 3, 16 + 2 * o, 16 + 2 * o)
    padded[:, :, o:-o, o:-o] = x  # zeros outside the image
    expected = torch.empty(2, 16, 32)
    for i in range(4):
        for j in range(4):  # token (i, j) sees rows i*p-o .. i*p+p+o of the image, columns likewise
            window = padded[:, :, i * p : i * p + p + 2 * o, j * p : j * p + p + 2 * o]  # (B, 3, 8, 8)
            expected[:, i * 4 + j] = torch.einsum("bchw,kchw->bk", window, embed.proj.weight) + embed.proj.bias
    torch.testing.assert_close(embed(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="linear map"):
        embed.as_linear_weight()
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="patch_overlap"):
            PatchEmbedding(16, p, 32, overlap=bad)


def test_the_patch_embedding_stays_fp32_under_cpu_bf16_autocast():
    """bf16 convolutions backpropagate slowly on a CPU: the patch embedding computes in fp32 there."""
    torch.manual_seed(0)
    embed = PatchEmbedding(16, 4, 32, overlap=2)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = embed(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, embed(x), rtol=0, atol=0)


# ---- masking ----------------------------------------------------------------------------------


def test_num_visible_uses_integer_counts():
    assert num_visible(196, 0.75) == 49
    assert num_visible(64, 0.75) == 16
    assert num_visible(10, 0.75) == 2  # int(2.5): never a float index
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="kept"):
            num_visible(16, bad)


def test_random_masking_worked_example():
    x = torch.arange(4.0)[None, :, None]  # (1, 4, 1): token i holds value i
    visible, mask, ids_restore = random_masking(x, 0.5, noise=torch.tensor([[0.3, 0.9, 0.1, 0.5]]))
    assert visible.flatten().tolist() == [2.0, 0.0]
    assert mask.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert ids_restore.tolist() == [[1, 3, 0, 2]]


def test_random_masking_is_without_replacement_and_restorable():
    B, L, C = 5, 16, 8
    x = torch.randn(B, L, C)
    visible, mask, ids_restore = random_masking(x, 0.75, generator=torch.Generator().manual_seed(0))
    n_keep = num_visible(L, 0.75)
    assert visible.shape == (B, n_keep, C)
    assert mask.shape == (B, L) and torch.equal(mask.sum(1), torch.full((B,), float(L - n_keep)))
    ids_shuffle = ids_restore.argsort(dim=1)
    arange = torch.arange(L).expand(B, L)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), arange)  # ids_restore is the inverse permutation
    assert torch.equal(ids_restore.gather(1, ids_shuffle), arange)
    for b in range(B):
        kept = ids_shuffle[b, :n_keep]
        masked = ids_shuffle[b, n_keep:]
        assert len(set(kept.tolist())) == n_keep  # distinct: no sampling with replacement
        assert set(kept.tolist()).isdisjoint(masked.tolist())
        assert torch.equal(mask[b, kept], torch.zeros(n_keep)) and torch.equal(mask[b, masked], torch.ones(L - n_keep))
        assert torch.equal(visible[b], x[b, kept])  # the visible tokens are exactly the kept ones
    # the same generator seed gives the same masks
    _, mask2, _ = random_masking(x, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, mask2)


@pytest.mark.parametrize("vit", [VIT, VIT_OVERLAP], ids=["plain", "overlapping"])
def test_masked_patches_never_reach_the_encoder(vit):
    model = tiny_mae(vit=vit).eval()
    x = images()
    noise = torch.rand(x.shape[0], model.num_patches, generator=torch.Generator().manual_seed(3))
    latent, mask, _ = model.forward_encoder(x, noise=noise)
    pixel_mask = unpatchify(mask[..., None].expand(-1, -1, VIT.patch_size**2 * 3), VIT.patch_size).bool()
    changed = torch.where(pixel_mask, torch.randn_like(x) * 100, x)  # scramble only the masked pixels
    assert not torch.equal(changed, x)
    latent2, mask2, _ = model.forward_encoder(changed, noise=noise)
    assert torch.equal(mask, mask2)
    assert torch.equal(latent, latent2)
    # and a visible pixel does matter
    visible_changed = torch.where(pixel_mask, x, x + 1.0)
    assert not torch.allclose(model.forward_encoder(visible_changed, noise=noise)[0], latent)


# ---- loss and model ---------------------------------------------------------------------------


def test_loss_ignores_visible_patches_and_counts_masked_ones():
    model = tiny_mae()
    x = images()
    _, pred, mask = model(x, generator=torch.Generator().manual_seed(0))
    loss = model.forward_loss(x, pred, mask)
    visible = (mask == 0)[..., None]  # (B, L, 1)
    garbage = torch.where(visible, torch.full_like(pred, 1e6), pred)
    assert model.forward_loss(x, garbage, mask).item() == loss.item()
    b, l = torch.nonzero(mask.bool())[0].tolist()
    nudged = pred.clone()
    nudged[b, l] += 1.0
    assert model.forward_loss(x, nudged, mask).item() != loss.item()
    # the value: mean squared error over the masked patches of the (normalised) targets
    target = model.patch_targets(x)
    expected = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(loss, expected)


def test_norm_pix_targets_are_standardised_per_patch():
    x = images()
    normed = tiny_mae(norm_pix_loss=True).patch_targets(x)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(normed.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(-1), torch.ones(normed.shape[:2]), atol=1e-3, rtol=0)
    assert torch.equal(tiny_mae(norm_pix_loss=False).patch_targets(x), patchify(x, VIT.patch_size))


def test_one_optimisation_step_lowers_the_loss():
    model = tiny_mae()
    x = images(batch=4)
    noise = torch.rand(4, model.num_patches, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before, pred, mask = model(x, noise=noise)
    assert pred.shape == (4, model.num_patches, VIT.patch_size**2 * 3)
    before.backward()
    opt.step()
    after, _, _ = model(x, noise=noise)
    assert after.item() < before.item()


def test_encoder_output_shape_and_fixed_positions():
    encoder = tiny_mae().encoder
    features = encoder(images(batch=2))
    assert features.shape == (2, 16, VIT.width)
    assert "pos_embed" not in encoder.state_dict()  # derived from the config, not stored
    assert not any("pos_embed" in name for name, _ in encoder.named_parameters())


def test_reconstruct_maps_perfect_predictions_back_to_the_image():
    model = tiny_mae(norm_pix_loss=True).eval()
    x = images(batch=2)
    model.decoder.forward = lambda latent, ids_restore: model.patch_targets(x)  # a perfect decoder
    reconstruction, pixel_mask = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert pixel_mask.shape == (2, 1, 16, 16)
    assert pixel_mask.mean().item() == pytest.approx(0.75)
    torch.testing.assert_close(reconstruction, x, atol=1e-4, rtol=1e-4)


# ---- the MAE decoder, against a naive reference -----------------------------------------------


def mae_position_code(n: int, grid: int, dim: int) -> list[float]:
    """facebookresearch/mae's 2-D sin-cos code of patch ``n`` written out by hand (row-major patches):
    [sin(col w_k) | cos(col w_k) | sin(row w_k) | cos(row w_k)], w_k = 10000^(-k / (dim/4)), k < dim/4."""
    row, col = divmod(n, grid)
    omegas = [10000 ** (-k / (dim // 4)) for k in range(dim // 4)]
    return ([math.sin(col * w) for w in omegas] + [math.cos(col * w) for w in omegas]
            + [math.sin(row * w) for w in omegas] + [math.cos(row * w) for w in omegas])


def naive_decoder(decoder: ImageDecoder, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """The decoder's input built one token at a time: patch j gets the embedded latent row
    ``ids_restore[b, j]`` when that row exists (j was kept), else the mask token; plus patch j's
    position code. Then the decoder's own transformer and head."""
    B, n_keep, _ = latent.shape
    L = ids_restore.shape[1]
    grid, width = math.isqrt(L), decoder.mask_token.shape[-1]
    rows = []
    for b in range(B):
        tokens = []
        for j in range(L):
            slot = int(ids_restore[b, j])  # where patch j sits in the (kept first) shuffled order
            token = decoder.embed(latent[b, slot]) if slot < n_keep else decoder.mask_token[0, 0]
            tokens.append(token + torch.tensor(mae_position_code(j, grid, width)))
        rows.append(torch.stack(tokens))
    return decoder.head(decoder.transformer(torch.stack(rows)))  # (B, L, D)


def test_decoder_unshuffles_and_adds_positions_like_a_naive_loop():
    """Removing the ``ids_restore`` gather or the decoder's position embedding changes the output."""
    torch.manual_seed(0)
    decoder = ImageDecoder(VIT, MAE).eval()
    B, L = 3, 16
    n_keep = num_visible(L, MAE.mask_ratio)
    latent = torch.randn(B, n_keep, VIT.width)
    ids_restore = torch.rand(B, L, generator=torch.Generator().manual_seed(5)).argsort(1).argsort(1)
    assert not torch.equal(ids_restore, torch.arange(L).expand(B, L))  # a real shuffle
    with torch.no_grad():
        torch.testing.assert_close(decoder(latent, ids_restore), naive_decoder(decoder, latent, ids_restore),
                                   rtol=1e-5, atol=1e-5)


def test_decoder_is_equivariant_to_which_patches_are_visible():
    """Shuffling the visible tokens together with ids_restore leaves every patch's prediction unchanged,
    and mask tokens (all equal on input) come out different at different patches: only their
    position tells them apart."""
    torch.manual_seed(0)
    decoder = ImageDecoder(VIT, MAE).eval()
    L = 16
    n_keep = num_visible(L, MAE.mask_ratio)
    latent = torch.randn(1, n_keep, VIT.width)
    ids_restore = torch.rand(1, L, generator=torch.Generator().manual_seed(1)).argsort(1).argsort(1)
    order = torch.randperm(n_keep, generator=torch.Generator().manual_seed(2))  # a new order of the kept
    assert not torch.equal(order, torch.arange(n_keep))
    # latent row i moves to row rank[i]; the patch that pointed at row i must now point at rank[i]
    rank = order.argsort()
    moved = ids_restore.clone()
    kept = ids_restore < n_keep
    moved[kept] = rank[ids_restore[kept]]
    with torch.no_grad():
        out = decoder(latent, ids_restore)
        torch.testing.assert_close(decoder(latent[:, order], moved), out, rtol=1e-5, atol=1e-5)
    masked = out[0, ~kept[0]]  # (L - n_keep, D): the predictions for the hidden patches
    distances = torch.cdist(masked, masked) + torch.eye(len(masked)) * 1e9
    assert distances.min() > 1e-3  # no two hidden patches get the same prediction


# ---- the pretrained encoder from a checkpoint -------------------------------------------------


def _mae_payload(model, vit=VIT, kind="mae"):
    return {"kind": kind, "model": model.state_dict(),
            "config": {"model": config_to_dict(vit), "mae": config_to_dict(MAE)}}


def test_encoder_from_mae_checkpoint_round_trip(tmp_path):
    model = tiny_mae().eval()
    path = save_checkpoint(tmp_path / "checkpoint1.pt", _mae_payload(model))
    encoder = encoder_from_mae_checkpoint(load_checkpoint(path, kind="mae"), path).eval()
    assert isinstance(encoder, ImageEncoder)
    x = images(batch=2)
    assert torch.equal(encoder(x), model.encoder(x))


def test_encoder_from_mae_checkpoint_errors():
    model = tiny_mae()
    with pytest.raises(CheckpointError, match="ckpt.pt.*'captioner'"):
        encoder_from_mae_checkpoint(_mae_payload(model, kind="captioner"), "ckpt.pt")
    wider = ViTConfig(**{**config_to_dict(VIT), "width": 64, "heads": 4})
    with pytest.raises(CheckpointError, match="ckpt.pt: the weights do not fit"):
        encoder_from_mae_checkpoint(_mae_payload(model, vit=wider), "ckpt.pt")
    payload = _mae_payload(model)
    payload["model"] = {k: v for k, v in payload["model"].items() if not k.startswith("encoder.")}
    with pytest.raises(CheckpointError, match="no 'encoder.' weights"):
        encoder_from_mae_checkpoint(payload, "ckpt.pt")
    payload = _mae_payload(model)
    del payload["config"]
    with pytest.raises(CheckpointError, match="lacks its 'config'"):
        encoder_from_mae_checkpoint(payload, "ckpt.pt")
    payload = _mae_payload(model)
    payload["config"]["model"]["depth"] = "deep"
    with pytest.raises(CheckpointError, match="invalid"):
        encoder_from_mae_checkpoint(payload, "ckpt.pt")


# ---- FLOPs --------------------------------------------------------------------------------------


def _counted_flops(module, *args):
    """Matmul + conv FLOPs per image as torch's FlopCounterMode counts them (manual attention path)."""
    for m in module.modules():
        if hasattr(m, "fused"):
            m.fused = False  # the counter sees the attention matmuls only on the written-out path
    with FlopCounterMode(display=False) as counter:
        module(*args)
    return counter.get_total_flops() / args[0].shape[0]


def test_flop_formulas_match_torch_flop_counter():
    model = tiny_mae()
    x = images(batch=2)
    assert _counted_flops(model.encoder, x) == flops.encoder_flops(VIT)
    overlapping = tiny_mae(vit=VIT_OVERLAP)
    assert _counted_flops(overlapping.encoder, x) == flops.encoder_flops(VIT_OVERLAP)
    assert _counted_flops(model, x) == flops.flops_per_image(VIT, MAE)["total"]
    counts = flops.flops_per_image(VIT, MAE)
    assert counts["encoder"] < flops.encoder_flops(VIT)  # MAE's encoder sees a quarter of the patches


# ---- pictures -----------------------------------------------------------------------------------


def test_to_uint8_inverts_normalize():
    pixels = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(to_uint8(normalize(pixels)), pixels)


def test_image_grid_places_columns_and_rows():
    red = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255
    blue = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    blue[:, 2] = 255
    grid = image_grid([red, blue], pad=1, scale=2)  # 2 rows, 2 columns of 8x8 tiles
    assert grid.size == (1 + 2 * 9, 1 + 2 * 9)
    assert grid.getpixel((1, 1)) == (255, 0, 0) and grid.getpixel((10, 10)) == (0, 0, 255)
    assert grid.getpixel((0, 0)) == (255, 255, 255)  # padding
    with pytest.raises(ValueError, match="uint8"):
        image_grid([red.float()])


def test_mae_reconstruction_figure_png(tmp_path):
    model = tiny_mae().eval()
    x = normalize(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    reconstruction, pixel_mask = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    path = save_png(mae_reconstruction_figure(x, reconstruction, pixel_mask), tmp_path / "sub" / "r.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        width, height = im.size
    assert width == 2 + 3 * (16 + 2) and height == 14 + 2 + 2 * (16 + 2)  # 3 columns, 2 rows, title strip


@pytest.mark.parametrize("preset, expected", [
    ("shapes_encoder.yaml", (0.038, 0.018, 0.057, 0.122)),
    ("coco_encoder.yaml", (2.24, 1.48, 3.72, 9.15)),
])
def test_flops_table_in_the_docstring_matches_the_presets(preset, expected):
    cfg = load_config(EncoderRunConfig, Path(__file__).parent.parent / "configs" / preset)
    counts = flops.flops_per_image(cfg.model, cfg.mae)
    got = (counts["encoder"], counts["decoder"], counts["total"], flops.encoder_flops(cfg.model))
    digits = 3 if preset.startswith("shapes") else 2
    assert tuple(round(f / 1e9, digits) for f in got) == expected
    assert counts["decoder"] < 2 * counts["encoder"]  # the decoder stays light
    assert " ".join(f"{e:g}" for e in expected[:2]) in " ".join(flops.__doc__.split())
