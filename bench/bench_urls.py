"""Images per second fetched from URLs (data.source: urls), against the captioner's CPU training step; one table.

A local HTTP server (tests/url_server.py, in its own process so that it does not share this one's
interpreter lock) serves one 640 x 480 JPEG under many URLs, answering each request after an injected
latency (0, 50, 200 ms: a nearby CDN to a slow far host). For each latency and number of concurrent
fetches, one :class:`UrlFetcher` pool fetches, checks and decodes the images and resizes them to the
preset's size, as each loader process of the stream does (``captioner/data/url_stream.py``). Beside
it, in the same run: images/s of train_captioner.py's step on the CPU (``bench/bench_train.py``'s
step, the preset's batch, encoder frozen and unfrozen), i.e. how fast training consumes images. The
ratio column is fetched images/s over the frozen step's images/s (the faster consumer): above 1, one
process fetches faster than training consumes. The last column is this process's CPU time per image
(every thread's: HTTP, checks, decoding, resizing), which bounds one process's rate on one free core.
Figures: docs/benchmarks.md#url-streaming.

Usage: python bench/bench_urls.py [--latencies 0,50,200] [--concurrency 1,8,32,128,256] [--seconds 3]
                                  [--preset shapes] [--steps 10] [--warmup 3]
"""

import argparse
import io
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Run as a script from anywhere: make the repository root and the test server importable.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench.bench_train import CAPTIONER_PRESETS, CAPTIONS_PER_IMAGE, captioner_section  # noqa: E402
from captioner.config import CaptionerRunConfig, EncoderRunConfig, load_config  # noqa: E402
from captioner.data.image_io import resize_and_center_crop  # noqa: E402
from captioner.data.url_fetch import FetchSettings, UrlFetcher  # noqa: E402

N_PATHS = 5000  # distinct URLs the server knows (each fetched at most once per measurement)


def photo_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A COCO-sized JPEG with smooth colour and some grain (so that it compresses like a photo)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)  # (H, W, 3)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def serve(latency: float, port_queue, stop) -> None:
    """The server process: serve the JPEG under N_PATHS URLs until ``stop`` is set."""
    from url_server import UrlServer

    jpeg = photo_jpeg()
    images = {f"/img.jpg?{i}": jpeg for i in range(N_PATHS)}
    with UrlServer(images, latency=latency) as server:
        port_queue.put(server.url(""))
        stop.wait()


def fetch_rate(base_url: str, concurrency: int, n: int, size: int, offset: int) -> tuple[float, float, int]:
    """(images/s, CPU ms of this process per image, failures) of fetching, checking, decoding and resizing
    ``n`` images with ``concurrency`` threads, as a stream's loader process does."""
    fetcher = UrlFetcher(FetchSettings(concurrency=concurrency, draft_size=size, timeout=30))
    urls = [f"{base_url}/img.jpg?{(offset + i) % N_PATHS}" for i in range(n)]

    def prepare(result):
        return None if result.reason else resize_and_center_crop(result.image, size)

    start, cpu_start = time.perf_counter(), time.process_time()
    failures = sum(out is None for out in fetcher.fetch_all(urls, prepare))
    return n / (time.perf_counter() - start), (time.process_time() - cpu_start) * 1000 / n, failures


def step_rates(args, device: torch.device) -> tuple[dict[str, float], int]:
    """Images/s of the captioner's training step (the preset's batch), encoder frozen and unfrozen, as
    bench_train.py's captioner section measures them; and the preset's image size."""
    frozen, unfrozen = captioner_section(args, device)  # captions/s, CAPTIONS_PER_IMAGE per image
    rates = {name: row.images_per_s / CAPTIONS_PER_IMAGE for name, row in (("frozen", frozen), ("unfrozen", unfrozen))}
    print(f"captioner step ({torch.get_num_threads()} threads): frozen encoder {rates['frozen']:.0f} images/s, "
          f"unfrozen {rates['unfrozen']:.0f} images/s")
    cfg = load_config(CaptionerRunConfig, CAPTIONER_PRESETS[args.preset])
    return rates, load_config(EncoderRunConfig, ROOT / cfg.encoder_config).model.image_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", default="0,50,200", help="server latencies in ms (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,8,32,128,256",
                        help="concurrent fetches of one process (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="about this long per measurement (default: 3)")
    parser.add_argument("--preset", choices=("shapes",), default="shapes", help="the captioner preset (CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed captioner steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed captioner steps first (default: %(default)s)")
    args = parser.parse_args()
    # what bench_train's captioner section reads besides --steps, --warmup and --preset
    args.compile, args.compile_mode, args.batch_size, args.peak_tflops = False, "default", None, None

    device = torch.device("cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python "
          f"{platform.python_version()}, torch {torch.__version__}; JPEG of {len(photo_jpeg())} bytes, 640 x 480")
    rates, size = step_rates(args, device)
    context = multiprocessing.get_context("spawn")
    print(f"\n{'latency':>8} {'concurrent':>10} {'images':>7} {'failed':>6} {'images/s':>9} {'x step':>7} "
          f"{'CPU ms/image':>12}")
    for latency_ms in [int(x) for x in args.latencies.split(",")]:
        port_queue, stop = context.Queue(), context.Event()
        server = context.Process(target=serve, args=(latency_ms / 1000, port_queue, stop), daemon=True)
        server.start()
        base_url = port_queue.get(timeout=60)
        offset = 0
        for concurrency in [int(x) for x in args.concurrency.split(",")]:
            guess = concurrency / (latency_ms / 1000 + 0.004)  # images/s if the latency were all
            n = int(min(N_PATHS, max(2 * concurrency, 16, guess * args.seconds)))
            rate, cpu_ms, failures = fetch_rate(base_url, concurrency, n, size, offset)
            offset += n
            print(f"{latency_ms:>6}ms {concurrency:>10} {n:>7} {failures:>6} {rate:>9.0f} "
                  f"{rate / rates['frozen']:>7.2f} {cpu_ms:>12.2f}")
        stop.set()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
