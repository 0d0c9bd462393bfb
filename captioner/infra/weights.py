"""Named published weights: where each is downloaded from, and how the download is checked.

A weights argument (``-p``, ``resnet.weights``) is either a name below or a path to a file. A name is
downloaded once from its publisher's URL with :func:`~captioner.infra.download.download_file`
(resumable, retried, size-checked), checked against its published digest, and kept in the cache folder
(``$CAPTIONER_WEIGHTS_DIR``, default ``data/weights``); ``$CAPTIONER_WEIGHTS_URL`` replaces the
publishers' sites with one base URL (a mirror, or the tests' local server).

**What the digests are.** The publishers give no full SHA-256 for these files, so none is made up here:

- torchvision names each file ``<name>-<the first 8 hex digits of its SHA-256>.pth`` (``torch.hub``
  checks that prefix); that prefix is checked;
- facebookresearch/mae's README gives the first 6 hex digits of each file's MD5; that prefix is checked.

A file that passed is moved to its final name in the cache; only then is it used, and a cached file is
not checked again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from captioner.infra.download import DownloadError, download_file


class PublishedWeights(NamedTuple):
    """One named weights file: its ``url``, the ``algorithm`` of its published ``digest`` (a hex prefix of
    the file's hash, or the whole hash) and the ``family`` of model it holds (resnet or vit)."""

    url: str
    algorithm: str
    digest: str
    family: str


_TORCHVISION = "https://download.pytorch.org/models"
_MAE = "https://dl.fbaipublicfiles.com/mae/pretrain"
# torchvision's ImageNet ResNets (its IMAGENET1K_V1 weights, the ``pretrained=True`` of the original
# projects) and the official MAE encoders (ImageNet-1K, 1600 epochs).
WEIGHTS = {
    "resnet18": PublishedWeights(f"{_TORCHVISION}/resnet18-f37072fd.pth", "sha256", "f37072fd", "resnet"),
    "resnet34": PublishedWeights(f"{_TORCHVISION}/resnet34-b627a593.pth", "sha256", "b627a593", "resnet"),
    "resnet50": PublishedWeights(f"{_TORCHVISION}/resnet50-0676ba61.pth", "sha256", "0676ba61", "resnet"),
    "resnet101": PublishedWeights(f"{_TORCHVISION}/resnet101-63fe2227.pth", "sha256", "63fe2227", "resnet"),
    "resnet152": PublishedWeights(f"{_TORCHVISION}/resnet152-394f9c45.pth", "sha256", "394f9c45", "resnet"),
    "mae_vit_base": PublishedWeights(f"{_MAE}/mae_pretrain_vit_base.pth", "md5", "8cad7c", "vit"),
    "mae_vit_large": PublishedWeights(f"{_MAE}/mae_pretrain_vit_large.pth", "md5", "b8b06e", "vit"),
    "mae_vit_huge": PublishedWeights(f"{_MAE}/mae_pretrain_vit_huge.pth", "md5", "9bdbb0", "vit"),
}


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """The hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("CAPTIONER_WEIGHTS_DIR", "data/weights"))


def weights_url(name: str) -> str:
    """The URL of named weights: the publisher's, or its file name under ``$CAPTIONER_WEIGHTS_URL``."""
    url = WEIGHTS[name].url
    base = os.environ.get("CAPTIONER_WEIGHTS_URL")
    return f"{base.rstrip('/')}/{file_name(name)}" if base else url


def file_name(name: str) -> str:
    """The publisher's file name of named weights (the last part of its URL), as cached here."""
    return WEIGHTS[name].url.rsplit("/", 1)[1]


def fetch_weights(name: str, show: bool = True) -> Path:
    """The cached file of named weights, downloaded (with a progress bar if ``show``) and checked first if
    it is not cached yet."""
    entry = WEIGHTS[name]
    url = weights_url(name)
    dest = cache_dir() / file_name(name)
    if dest.is_file():
        return dest
    with tqdm(desc=f"downloading {name}", unit="B", unit_scale=True, disable=not show) as bar:
        unchecked = download_file(url, dest.with_name(dest.name + ".unchecked"), progress=bar.update)
    digest = file_digest(unchecked, entry.algorithm)
    if not digest.startswith(entry.digest):
        unchecked.unlink()
        raise DownloadError(f"{url}: its {entry.algorithm} is {digest}, but the published one starts with "
                            f"{entry.digest}; the download was deleted")
    os.replace(unchecked, dest)
    return dest


def resolve_weights(spec: str, show: bool = True) -> Path:
    """A weights file: ``spec`` names published weights (downloaded if need be) or is a path."""
    if spec in WEIGHTS:
        return fetch_weights(spec, show)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such checkpoint or weights file, nor named weights "
                                f"(known: {', '.join(WEIGHTS)})")
    return path
