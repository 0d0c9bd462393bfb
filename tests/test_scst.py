"""Self-critical sequence training: sampling, the loss and its baselines, the rewards, train_scst.py."""

import json
import math

import numpy as np
import pytest
import torch

import process_coco
import train_scst
from captioner.config import CaptionDecoderConfig, CaptionerRunConfig, ViTConfig
from captioner.data.shapes_scene import scene_for
from captioner.evaluation.metrics import cider_d, cider_d_scores, document_frequency
from captioner.evaluation.ptb_tokenizer import tokenize_caption
from captioner.models.caption_decoder import CaptionDecoder
from captioner.training.checkpoints import load_captioner
from captioner.text.tokenizers import load_tokenizer
from captioner.training.checkpoints import CheckpointError, load_checkpoint
from captioner.training.rewards import CaptionRewards
from captioner.training.scst import (
    greedy_baseline,
    mean_of_others_baseline,
    scst_loss,
    sequence_log_probs,
)
from tiny_checkpoints import save_untrained_captioner
from transformer_components import sample

PAD, SOS, EOS, W = 0, 1, 2, 3
FORBIDDEN = [PAD, SOS]


# ---- the loss and the baselines -----------------------------------------------------------------------

def test_loss_against_a_hand_worked_case():
    """Two sampled captions over a vocabulary of <pad>, <sos>, <eos> and one word w.

    Caption 1 is ``w <eos>``: position 0 gives <eos> logit ln 3 and w 0, so p(w) = 1/4; position 1 gives
    them equal logits, so p(<eos>) = 1/2: log p = -3 ln 2. Caption 2 is ``<eos> <pad>``: p(<eos>) = 3/4 at
    position 0, and position 1 is padding, masked whatever its logits. <sos> and <pad> have large logits
    everywhere, which must not count (the sampler never draws them). Advantages 1 and 3:
    loss = -(1 * -3 ln 2 + 3 * ln(3/4)) / 2 = 1.5 ln(8/3).
    """
    logits = torch.full((2, 2, 4), 50.0)  # <pad> and <sos> logits stay 50
    logits[0, 0, EOS], logits[0, 0, W] = math.log(3), 0.0
    logits[0, 1, EOS], logits[0, 1, W] = 0.0, 0.0
    logits[1, 0, EOS], logits[1, 0, W] = math.log(3), 0.0
    logits[1, 1, EOS], logits[1, 1, W] = 9.0, -9.0  # masked
    tokens = torch.tensor([[W, EOS], [EOS, PAD]])
    log_p = sequence_log_probs(logits, tokens, PAD, FORBIDDEN)
    assert log_p.tolist() == pytest.approx([-3 * math.log(2), math.log(3 / 4)])
    loss = scst_loss(logits, tokens, torch.tensor([1.0, 3.0]), PAD, FORBIDDEN)
    assert loss.item() == pytest.approx(1.5 * math.log(8 / 3))


def test_baselines():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 8.0])  # two images, three samples each
    assert mean_of_others_baseline(rewards, 3).tolist() == [4.0, 3.5, 1.5, 6.0, 4.0, 2.0]
    assert greedy_baseline(torch.tensor([5.0, 7.0]), 3).tolist() == [5.0, 5.0, 5.0, 7.0, 7.0, 7.0]
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_of_others_baseline(rewards, 1)


def tiny_decoder(seed=0, max_len=8, vocab=7):
    """A random float64 CaptionDecoder with peaky distributions, so samples vary in words and length."""
    torch.manual_seed(seed)
    decoder = CaptionDecoder(vocab, 16, n_layers=2, n_heads=4, d_ff=32, max_len=max_len, pad_id=PAD).double().eval()
    with torch.no_grad():
        for p in decoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 2.0 / p.shape[1] ** 0.5)
        decoder.token_embedding.weight[PAD] = 0
    return decoder


def sampled_logits(decoder, memory, tokens):
    """Teacher-forced logits of sampled tokens: the decoder reads <sos> and the tokens before each."""
    inputs = torch.cat([torch.full((tokens.shape[0], 1), SOS), tokens[:, :-1]], dim=1)
    return decoder(inputs, memory)


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_zero_gradient_when_every_sample_earns_the_baseline(baseline):
    decoder = tiny_decoder()
    memory = torch.randn(2, 5, 16, dtype=torch.float64).repeat_interleave(3, dim=0)  # 2 images, K = 3
    tokens, _ = sample(decoder, memory, SOS, EOS, PAD, 8, torch.Generator().manual_seed(0))
    reward = torch.full((6,), 2.5, dtype=torch.float64)
    b = greedy_baseline(torch.full((2,), 2.5, dtype=torch.float64), 3) if baseline == "greedy" \
        else mean_of_others_baseline(reward, 3)
    scst_loss(sampled_logits(decoder, memory, tokens), tokens, reward - b, PAD, FORBIDDEN).backward()
    grads = [p.grad for p in decoder.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    # and a sample above the baseline does move the weights
    decoder.zero_grad()
    scst_loss(sampled_logits(decoder, memory, tokens), tokens, reward - b + torch.arange(6.0), PAD,
              FORBIDDEN).backward()
    assert any(torch.count_nonzero(p.grad) > 0 for p in decoder.parameters() if p.grad is not None)


# ---- sampling ---------------------------------------------------------------------------------------------

def test_cached_sampling_equals_uncached_sampling_under_a_fixed_generator():
    decoder = tiny_decoder()
    memory = torch.randn(12, 5, 16, dtype=torch.float64)
    cached, cached_logp = sample(decoder, memory, SOS, EOS, PAD, 8, torch.Generator().manual_seed(3))
    plain, plain_logp = sample(decoder, memory, SOS, EOS, PAD, 8, torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(cached, plain)
    assert torch.allclose(cached_logp, plain_logp)
    lengths = (cached != PAD).sum(dim=1)
    assert len(set(lengths.tolist())) > 1 and len({tuple(r) for r in cached.tolist()}) > 1  # the case is not trivial
    other, _ = sample(decoder, memory, SOS, EOS, PAD, 8, torch.Generator().manual_seed(4))
    assert not torch.equal(cached, other)


def test_samples_are_padded_after_eos_and_never_draw_sos_or_pad():
    decoder = tiny_decoder()
    tokens, _ = sample(decoder, torch.randn(50, 5, 16, dtype=torch.float64), SOS, EOS, PAD, 8,
                       torch.Generator().manual_seed(0))
    for row in tokens.tolist():
        end = row.index(EOS) + 1 if EOS in row else len(row)
        assert all(t not in (PAD, SOS) for t in row[:end]) and all(t == PAD for t in row[end:])


def test_teacher_forced_log_probs_of_the_samples_are_the_samplers():
    """The loss's teacher-forced pass sees each sampled token where the sampler drew it: with nothing
    removed, its log p is the sampler's (the model's log-softmax, summed up to <eos>). The loss then removes
    <sos> and <pad>, which renormalises over the tokens the sampler could draw (the hand-worked case)."""
    decoder = tiny_decoder()
    memory = torch.randn(20, 5, 16, dtype=torch.float64)
    tokens, log_p = sample(decoder, memory, SOS, EOS, PAD, 8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = sampled_logits(decoder, memory, tokens)
        assert torch.allclose(sequence_log_probs(logits, tokens, PAD, forbidden=[]), log_p)
        assert (sequence_log_probs(logits, tokens, PAD, FORBIDDEN) > log_p).all()


def test_first_tokens_are_drawn_with_the_models_probabilities():
    decoder = tiny_decoder(vocab=5)
    memory = torch.randn(1, 5, 16, dtype=torch.float64).expand(4000, -1, -1)
    tokens, _ = sample(decoder, memory, SOS, EOS, PAD, 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = decoder(torch.tensor([[SOS]]), memory[:1])[0, 0]
    logits[FORBIDDEN] = float("-inf")
    expected = torch.softmax(logits, dim=-1)
    observed = torch.bincount(tokens[:, 0], minlength=5).double() / 4000
    assert torch.allclose(observed, expected, atol=0.03)


# ---- the rewards ------------------------------------------------------------------------------------------

REFS = {1: ["A red circle on the left.", "One red circle."], 2: ["a blue square", "the square is blue"],
        3: ["two green triangles", "a green triangle and a green triangle"]}
HYPS = {1: "a red circle", 2: "a blue circle", 3: "two red triangles"}


def test_per_caption_cider_d_reward_agrees_with_cider_d():
    rewards = CaptionRewards(REFS, {"cider_d": 1.0})
    ids = list(HYPS)
    per_caption = rewards.scores(ids, [HYPS[i] for i in ids])["cider_d"]
    tokenized_refs = {i: [tokenize_caption(r) for r in refs] for i, refs in REFS.items()}
    tokenized_hyps = {i: tokenize_caption(h) for i, h in HYPS.items()}
    assert per_caption.mean() == pytest.approx(cider_d(tokenized_refs, tokenized_hyps))
    assert per_caption.min() < per_caption.max()  # the captions score differently: not a trivial agreement
    # a caption's reward does not depend on the other captions scored with it
    alone = rewards.scores([2], [HYPS[2]])["cider_d"]
    assert alone[0] == pytest.approx(per_caption[1])


def test_precomputed_document_frequencies_are_the_corpus_ones():
    refs = {i: [tokenize_caption(r) for r in rs] for i, rs in REFS.items()}
    hyps = {i: tokenize_caption(h) for i, h in HYPS.items()}
    df = document_frequency(refs)
    assert df.n_images == 3 and df.counts[0]["a"] == 3 and df.counts[0]["green"] == 1
    assert df.counts[1]["red circle"] == 1 and df.counts[3]["a green triangle and"] == 1
    np.testing.assert_allclose(cider_d_scores(refs, hyps, document_frequency=df), cider_d_scores(refs, hyps))
    # idf from a larger corpus: "a" is in 3 of 4 images' references, no longer weightless
    wider = document_frequency({**refs, 4: ["an orange star"]})
    assert cider_d_scores({2: refs[2]}, {2: "a blue square"}, document_frequency=wider)[0] != pytest.approx(
        cider_d_scores({2: refs[2]}, {2: "a blue square"}, document_frequency=df)[0])


def test_bleu_and_truth_rewards():
    scene = scene_for(seed=0, split="train", index=0, image_size=64)  # a small green triangle, a small red diamond
    refs = {7: ["the diamond is above the triangle", "a small green triangle and a small red diamond"]}
    rewards = CaptionRewards(refs, {"bleu4": 1.0, "truth": 2.0, "claims": 1.0}, {7: scene})
    captions = ["the diamond is above the triangle", "The diamond is above the circle.", "Two green shapes.",
                "green green"]
    scores = rewards.scores([7] * 4, captions)
    assert scores["bleu4"][0] == pytest.approx(1.0) and scores["bleu4"][3] < 1e-6
    assert scores["truth"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # claims: 3 of 3; diamond yes, circle no, the relation no: 1 of 3; the count is wrong: 0 of 1; unparsed: 0
    assert scores["claims"].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert rewards.total(scores).tolist() == pytest.approx(
        [1.0 + 2.0 + 1.0, scores["bleu4"][1] + 1 / 3, scores["bleu4"][2], scores["bleu4"][3]])


def test_reward_configuration_errors():
    with pytest.raises(ValueError, match="unknown reward 'meteor'"):
        CaptionRewards(REFS, {"meteor": 1.0})
    with pytest.raises(ValueError, match="every reward weight is 0"):
        CaptionRewards(REFS, {"cider_d": 0.0})
    with pytest.raises(ValueError, match="need the shapes dataset"):
        CaptionRewards(REFS, {"truth": 1.0})


# ---- train_scst.py ----------------------------------------------------------------------------------------

VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=2, heads=2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A processed shapes set of 6 training and 3 validation images and an untrained captioner checkpoint."""
    root = tmp_path_factory.mktemp("scst")
    process_coco.main(["--data-dir", str(root / "data"), "--n-train", "6", "--n-val", "3", "--n-test", "1",
                       "--image-size", "32", "--vocab-size", "120", "--workers", "1", "--no-progress"])
    tokenizer_path = root / "data" / "processed" / "tokenizer.txt"
    torch.manual_seed(0)
    save_untrained_captioner(root / "captioner.pt", VIT, CaptionDecoderConfig(width=16, depth=1, heads=2),
                             CaptionerRunConfig(), tokenizer_path.read_text(), load_tokenizer(tokenizer_path).vocab_size,
                             16)
    return root


def run(workdir, run_name, *extra):
    """Epochs of one step (a batch holds all 6 training images), 3 samples each, a learning rate that moves."""
    return train_scst.main(["-p", str(workdir / "captioner.pt"), "--config", "configs/shapes_scst.yaml",
                            "--set", f"data.processed_dir={workdir / 'data' / 'processed'}",
                            "--set", f"run_dir={workdir / run_name}", "--set", "data.batch_size=6",
                            "--set", "scst.samples=3", "--set", "scst.max_len=10", "--set", "eval.max_len=10",
                            "--set", "eval.beam_size=2", "--set", "train.lr=3e-2", "--set", "train.log_every=1",
                            "--no-progress", *extra])


def timeless(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "train_seconds", "captions_per_s")} for h in history]


@pytest.fixture(scope="module")
def straight(workdir):
    return run(workdir, "straight", "--set", "train.epochs=2", "--set", "scst.reward.truth=1")


def test_a_tiny_run_writes_captioner_checkpoints_logs_and_curves(workdir, straight):
    run_dir = workdir / "straight"
    assert [h["epoch"] for h in straight] == [0, 1, 2]  # epoch 0: the starting model
    for h in straight:
        assert {"val_reward", "val_cider_d", "val_truth", "bleu4", "cider_d", "captions_true"} <= set(h)
    assert {"train_reward", "train_baseline", "sample_words", "train_loss"} <= set(straight[1])
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert len(steps) == 2 and all({"reward", "baseline", "sample_words", "loss", "lr"} <= set(r) for r in steps)
    assert (run_dir / "curves.png").stat().st_size > 0
    # a captioner checkpoint: evaluate.py and caption.py load it as they load train_captioner.py's
    model, _, payload = load_captioner(run_dir / "checkpoint2.pt")
    assert payload["scst_config"]["scst"]["reward"]["truth"] == 1.0 and payload["epoch"] == 2
    start = load_checkpoint(workdir / "captioner.pt")["model"]
    changed = {k for k, v in payload["model"].items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # the encoder stays frozen by default


def test_exact_resume(workdir, straight):
    """Two steps straight equal one step, a resume from its checkpoint, and one more step."""
    resumed = train_scst.main(["-c", str(workdir / "straight" / "checkpoint1.pt"),
                               "--set", f"run_dir={workdir / 'resumed'}", "--no-progress"])
    assert timeless(resumed) == timeless(straight)
    a = load_checkpoint(workdir / "straight" / "checkpoint2.pt")
    b = load_checkpoint(workdir / "resumed" / "checkpoint2.pt")
    assert a["step"] == b["step"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_mean_baseline_and_a_trainable_encoder(workdir):
    history = run(workdir, "mean", "--set", "train.epochs=1", "--set", "scst.baseline=mean",
                  "--set", "scst.train_encoder=true")
    assert history[1]["train_baseline"] == pytest.approx(history[1]["train_reward"])  # the mean of the others
    payload = load_checkpoint(workdir / "mean" / "checkpoint1.pt")
    start = load_checkpoint(workdir / "captioner.pt")["model"]
    assert any(not torch.equal(v, start[k]) for k, v in payload["model"].items() if k.startswith("encoder."))


def test_wrong_starts_are_clear_errors(workdir, straight):
    with pytest.raises(CheckpointError, match="not an SCST run's"):
        train_scst.main(["-c", str(workdir / "captioner.pt"), "--no-progress"])
    with pytest.raises(ValueError, match="-p"):
        train_scst.main(["--config", "configs/shapes_scst.yaml", "--no-progress"])
    with pytest.raises(ValueError, match="2 or more"):
        run(workdir, "bad", "--set", "scst.samples=1", "--set", "scst.baseline=mean")
