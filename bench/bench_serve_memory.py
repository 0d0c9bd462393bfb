"""Peak memory of caption.py's web server under concurrent maximum-size uploads (Linux: reads /proc).

    python bench/bench_serve_memory.py                       # a tiny untrained captioner; 1, 8 and 32 uploads
    python bench/bench_serve_memory.py -c runs/shapes_captioner --concurrent 8 32
    python bench/bench_serve_memory.py --decode-slots 1000 --max-connections 1000 --concurrent 8   # bounds off

Each upload is the largest the server accepts: a PNG of MAX_IMAGE_PIXELS pixels (8000 x 8000, the
decompression-bomb limit), padded with an ignored form field to exactly the upload limit (20 MiB by
default). Every row starts a fresh server process (``CaptionServer``, the class ``caption.py --serve``
runs, with the bounds given here), sends N such uploads at once from N threads, and reads the
server's peak resident memory (``VmHWM`` in /proc/PID/status) once all are answered. The first row
(one upload) is the reference the others are divided by. The model itself barely matters: what
grows with N is the bodies held by the connections and the decoded pixels (see the bounds in
captioner/serve/server.py and docs/serving.md#memory).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_metrics import cpu_name  # noqa: E402  (bench/ is the script's folder)
from captioner.data.image_io import MAX_IMAGE_PIXELS  # noqa: E402
from captioner.serve.server import DECODE_SLOTS, MAX_CONNECTIONS, MAX_UPLOAD_BYTES  # noqa: E402

BOUNDARY = "benchBoundary7MA4YWxkTrZu0gW"


def largest_upload(limit: int) -> bytes:
    """A multipart body of exactly ``limit`` bytes holding a PNG of MAX_IMAGE_PIXELS pixels."""
    side = int(MAX_IMAGE_PIXELS**0.5)  # 8000 x 8000 = 64,000,000 pixels: at the limit, not over it
    ramp = np.arange(side, dtype=np.uint16)
    rows, columns = np.broadcast_arrays(ramp[:, None], ramp[None, :])  # (side, side) each
    pixels = np.stack([(rows + columns) % 256, (rows * 3) % 256, (columns * 7) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=6)
    png = buffer.getvalue()
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="largest.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + png
    pad_head = f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="padding"\r\n\r\n'.encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    padding = limit - len(head) - len(pad_head) - len(tail)
    if padding < 0:
        raise SystemExit(f"the {side} x {side} PNG ({len(png)} bytes) is larger than the upload limit ({limit})")
    return head + pad_head + b"p" * padding + tail


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained tiny captioner (the tests' own), for when no checkpoint is given."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_caption import make_tiny_checkpoint

    return make_tiny_checkpoint(folder)


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def start_server(checkpoint: Path, args) -> tuple[subprocess.Popen, int]:
    code = ("import sys, torch; from captioner.evaluation.own_images import ImageCaptioner; "
            "from captioner.serve.server import CaptionServer; "
            f"c = ImageCaptioner.from_checkpoint({str(checkpoint)!r}, torch.device('cpu')); "
            f"s = CaptionServer(c, '127.0.0.1', 0, {args.max_upload_mb * 2**20:.0f}, log=open('/dev/null', 'w'), "
            f"max_connections={args.max_connections}, decode_slots={args.decode_slots}); "
            "print(s.server_address[1], flush=True); s.serve_forever()")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return process, int(process.stdout.readline())


def post(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/caption", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            print(f"  {response.status}: {answer.get('error')}", file=sys.stderr)
        return response.status
    finally:
        connection.close()


def measure(checkpoint: Path, body: bytes, n: int, args) -> dict:
    process, port = start_server(checkpoint, args)
    try:
        idle = kib(process.pid, "VmRSS")
        start = time.perf_counter()
        barrier = threading.Barrier(n)

        def one(_):
            barrier.wait()  # all N connect and send at once
            return post(port, body)

        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(one, range(n)))
        seconds = time.perf_counter() - start
        peak = kib(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(30)
    return {"n": n, "ok": statuses.count(200), "idle_mib": idle / 1024, "peak_mib": peak / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--checkpoint", default=None, help="captioner checkpoint (default: a tiny untrained one)")
    parser.add_argument("--concurrent", type=int, nargs="+", default=[8, 32], help="uploads at once, per row")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20)
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--decode-slots", type=int, default=DECODE_SLOTS)
    args = parser.parse_args()
    if not Path("/proc/self/status").is_file():
        raise SystemExit("needs Linux's /proc to read the server's peak memory")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(Path(folder))
        body = largest_upload(int(args.max_upload_mb * 2**20))
        print(f"caption.py's server: {args.max_connections} connections, {args.decode_slots} decode slots; "
              f"uploads of {len(body)} bytes, each a {MAX_IMAGE_PIXELS / 1e6:g} MP PNG; checkpoint "
              f"{args.checkpoint or 'tiny, untrained'}")
        print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}")
        rows = [measure(checkpoint, body, n, args) for n in [1, *args.concurrent]]
    reference = rows[0]["peak_mib"]
    print(f"{'uploads at once':>15} {'answered 200':>12} {'idle RSS MiB':>12} {'peak RSS MiB':>12} "
          f"{'x one upload':>12} {'seconds':>8}")
    for row in rows:
        print(f"{row['n']:>15} {row['ok']:>12} {row['idle_mib']:>12.0f} {row['peak_mib']:>12.0f} "
              f"{row['peak_mib'] / reference:>12.2f} {row['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
