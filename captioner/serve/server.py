"""The web page of ``python caption.py -c CHECKPOINT --serve``: Python's own HTTP server, no framework.

Two routes, nothing else::

    GET  /          the page (page.html, held in memory: no request ever names a file to read)
    POST /caption   an image (see uploads.py) -> JSON: the caption, every beam with its score, the
                    image as the model saw it and, per word of each beam, a PNG of the cross-attention
                    heat map over it (data: URLs the page shows on hover)

Every refusal is a 4xx with ``{"error": message}`` and the server keeps serving: 400 malformed
request, 411 no Content-Length, 413 upload over the size limit or a decompression bomb, 415 not an
image or an unsupported Content-Type, 404 any other path. A ``ThreadingHTTPServer`` answers
each connection in its own thread; the model runs under one lock, so two requests never run it at
once (decoding the upload and drawing the PNGs happen outside the lock). One log line per request.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image
from torch import Tensor

from captioner.data.image_io import BadImageError
from captioner.evaluation.own_images import CaptionedImage, ImageCaptioner, load_image_bytes
from captioner.evaluation.pictures import attention_overlay
from captioner.serve.uploads import RequestError, Upload, parse_upload, printable

MAX_UPLOAD_BYTES = 20 * 2**20  # default size limit of an upload's body
DRAIN_LIMIT = 64 * 2**20  # a too-large body up to this size is read and dropped, so the client sees the 413
MAX_BEAM = 10  # the largest beam a request may ask for (or the checkpoint's own, if larger)
PAGE_TEMPLATE = Path(__file__).with_name("page.html").read_text(encoding="utf-8")


def png_data_url(image: Tensor) -> str:
    """A (3, H, W) uint8 image as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def caption_json(result: CaptionedImage, beam_size: int, alpha: float) -> dict:
    """The answer to ``POST /caption``: the best caption, and every beam with its words' heat maps.

    The maps of one beam share one colour scale (:func:`attention_overlay`), so a word that looked
    everywhere stays cool beside a word that looked at one spot. A decoder without attention (Show and
    Tell) has no maps: its beams' ``words`` are empty.
    """
    beams = []
    for hypothesis in result.beams:
        words = []
        if hypothesis.maps is not None:
            heat = attention_overlay(result.image, hypothesis.maps)  # (n_words, 3, S, S) uint8
            words = [{"word": word, "heat": png_data_url(panel)} for word, panel in zip(hypothesis.words, heat)]
        beams.append({"caption": hypothesis.caption, "score": round(hypothesis.score, 4), "words": words})
    return {"caption": result.caption, "score": beams[0]["score"], "beam_size": beam_size, "alpha": alpha,
            "image": png_data_url(result.image), "beams": beams}


def image_error_status(reason: str) -> int:
    """The status for an upload the image loader refused, from its reason (captioner/data/image_io.py)."""
    if reason.startswith("decompression bomb"):
        return 413
    if reason.startswith(("not a recognised image", "cannot convert mode")):
        return 415
    return 400  # empty, truncated or corrupt image data


class CaptionServer(ThreadingHTTPServer):
    """Serves the page and captions uploads with one loaded :class:`ImageCaptioner`.

    ``port`` 0 picks a free port (see :attr:`url`). ``log``: a text stream for the request lines
    (default stderr).
    """

    daemon_threads = True  # a stalled client does not keep the process alive
    request_queue_size = 64  # connections waiting to be accepted (socketserver's default is 5)

    def __init__(self, captioner: ImageCaptioner, host: str = "127.0.0.1", port: int = 8000,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, log=None):
        self.captioner = captioner
        self.max_upload_bytes = max_upload_bytes
        self.max_beam = max(MAX_BEAM, captioner.beam_size)
        self.model_lock = threading.Lock()  # the model runs for one request at a time
        self.log_lock = threading.Lock()  # one whole line at a time
        self.log_stream = log if log is not None else sys.stderr
        self.replying = 0  # replies being sent and logged; Ctrl-C waits for them (wait_for_replies)
        self.replies_done = threading.Condition()
        page = PAGE_TEMPLATE.replace("__BEAM__", str(captioner.beam_size)).replace("__MAX_BEAM__", str(self.max_beam))
        self.page = page.replace("__MAX_UPLOAD__", str(max_upload_bytes)).encode("utf-8")
        super().__init__((host, port), CaptionRequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def wait_for_replies(self, timeout: float = 5.0) -> None:
        """Let replies already being sent finish and log their line (the handler threads are daemons,
        so without this a Ctrl-C right after a reply could lose its log line)."""
        with self.replies_done:
            self.replies_done.wait_for(lambda: self.replying == 0, timeout)

    def write_log(self, line: str) -> None:
        with self.log_lock:
            print(line, file=self.log_stream, flush=True)

    def caption_upload(self, upload: Upload) -> dict:
        """Decode the upload (BadImageError if it is no usable image) and caption it with all its beams."""
        image = load_image_bytes(upload.data, self.captioner.image_size, upload.name)  # (S, S, 3) uint8
        beam = upload.beam_size or self.captioner.beam_size
        with self.model_lock:
            result = self.captioner.caption([image], beam_size=beam, top=beam, attention=True)[0]
        return caption_json(result, beam, self.captioner.alpha)


class CaptionRequestHandler(BaseHTTPRequestHandler):
    """One request: ``GET /`` or ``POST /caption``; see the module docstring."""

    server: CaptionServer
    server_version = "caption.py"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped

    def do_GET(self) -> None:
        self.started = time.perf_counter()
        if urlsplit(self.path).path in ("/", "/index.html"):
            self.reply(200, self.server.page, "text/html; charset=utf-8", "page")
        else:
            self.reply_json(404, {"error": "not found: the page is at / and captions come from POST /caption"})

    def do_POST(self) -> None:
        self.started = time.perf_counter()
        try:
            body = self.read_body()
            if urlsplit(self.path).path != "/caption":
                raise RequestError(404, "not found: post images to /caption")
            upload = parse_upload(self.headers.get("Content-Type"), body, self.server.max_beam)
            answer = self.server.caption_upload(upload)
            self.reply_json(200, answer, f"{upload.name}: {answer['caption']!r}")
        except RequestError as e:
            self.reply_json(e.status, {"error": e.message})
        except BadImageError as e:
            self.reply_json(image_error_status(e.reason), {"error": str(e)})
        except TimeoutError:
            self.close_connection = True
            self.reply_json(408, {"error": f"the request body did not arrive within {self.timeout} s"})
        except Exception as e:  # a bug must not stop the server: log it, answer 500, keep serving
            self.server.write_log(traceback.format_exc().rstrip())
            self.reply_json(500, {"error": f"internal error ({type(e).__name__}); see the server's log"})

    def read_body(self) -> bytes:
        """The request body, after checking its announced length against the upload limit."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "chunked uploads are not accepted: send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "missing Content-Length: the request has no body (send an image)")
        if not length.strip().isdigit():
            raise RequestError(400, f"bad Content-Length {printable(length, 30)!r}")
        n = int(length)
        if n == 0:
            raise RequestError(400, "empty body: no image was sent")
        limit = self.server.max_upload_bytes
        if n > limit:
            self.drain(n)
            raise RequestError(413, f"upload of {n} bytes refused: the limit is {limit} bytes "
                                    f"({limit / 2**20:.1f} MiB)")
        body = self.rfile.read(n)
        if len(body) < n:
            raise RequestError(400, f"the body ended after {len(body)} of its {n} bytes")
        return body

    def drain(self, n: int) -> None:
        """Read and drop an unwanted body (up to DRAIN_LIMIT), so that the client, still sending,
        reads the refusal instead of a reset connection."""
        self.close_connection = True
        left = min(n, DRAIN_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 2**16))
            if not chunk:
                break
            left -= len(chunk)

    def reply_json(self, status: int, document: dict, note: str | None = None) -> None:
        body = json.dumps(document).encode("utf-8")
        self.reply(status, body, "application/json", note if note is not None else document.get("error", ""))

    def reply(self, status: int, body: bytes, content_type: str, note: str) -> None:
        """Send the response, then log it in one line: client, request, status, size, time, note."""
        with self.server.replies_done:
            self.server.replying += 1
        try:
            self.send_and_log(status, body, content_type, note)
        finally:
            with self.server.replies_done:
                self.server.replying -= 1
                self.server.replies_done.notify_all()

    def send_and_log(self, status: int, body: bytes, content_type: str, note: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)
        except OSError as e:  # the client went away; nothing to answer
            note = f"{note} (not delivered: {type(e).__name__})"
        seconds = time.perf_counter() - self.started
        self.server.write_log(f"{self.client_address[0]} {self.command} {printable(self.path)} {status} "
                              f"{len(body)} B {seconds:.3f} s {printable(note, 160)}")

    def log_request(self, code="-", size="-") -> None:
        """Silenced: :meth:`reply` writes the one line per request."""

    def log_message(self, format: str, *args) -> None:
        """Requests the base class refuses itself (a malformed request line, an unknown method)."""
        self.server.write_log(f"{self.client_address[0]} {printable(format % args, 200)}")
