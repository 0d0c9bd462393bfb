"""A helper the tests share (not a test module): an untrained captioner checkpoint of the format that
train_captioner.py writes, for the tests of the scripts that read one."""

from pathlib import Path

from captioner.config import CaptionDecoderConfig, CaptionerRunConfig, ViTConfig, config_to_dict
from captioner.models.captioner import KIND, build_captioner
from captioner.training.checkpoints import checkpoint_extras, save_checkpoint


def save_untrained_captioner(path: Path, vit: ViTConfig, decoder: CaptionDecoderConfig, cfg: CaptionerRunConfig,
                             tokenizer_text: str, vocab_size: int, max_len: int) -> Path:
    """Build a captioner with the current torch seed's random weights and save it at ``path`` with what
    a captioner checkpoint carries besides the training state: the ViT architecture, the config, the
    vocabulary size, ``max_len`` and the tokenizer's text."""
    model = build_captioner(vit, decoder, vocab_size, max_len=max_len)
    payload = {"kind": KIND, "epoch": 1, "config": config_to_dict(cfg), "model": model.state_dict(),
               **checkpoint_extras(vit, vocab_size, max_len, tokenizer_text, None)}
    return save_checkpoint(path, payload)
