"""The web page of ``python caption.py -c CHECKPOINT --serve``: Python's own HTTP server, no framework.

Two routes, nothing else::

    GET  /          the page (page.html, held in memory: no request ever names a file to read)
    POST /caption   an image (see uploads.py) -> JSON: the caption, every beam with its score, the
                    image as the model saw it and, per word of each beam, a PNG of the cross-attention
                    heat map over it (data: URLs the page shows on hover); ``"attention": false`` and
                    no words for a decoder that does not attend (Show and Tell). With a retrieval
                    checkpoint: the training captions nearest to the image, ``"kind": "retrieval"``.

(``GET /favicon.ico`` is answered 204, no content, so that a browser's automatic request is not a 404.)

Every refusal is a 4xx with ``{"error": message}`` and the server keeps serving: 400 malformed
request, 404 any other path, 405 any other method (HEAD too, without a body), 408 a request that
did not arrive in time, 411 no Content-Length, 413 upload over the size limit or a decompression
bomb, 415 not an image or an unsupported Content-Type.

Memory is bounded, so that a server open to the network (``--host 0.0.0.0``) cannot be run out of it
(figures: docs/serving.md#memory):

- at most ``MAX_CONNECTIONS`` connections are served at once, each in its own thread; further ones
  wait in the listen queue, unread, until a thread is free;
- a connection must deliver its whole request (headers and body) within ``REQUEST_DEADLINE_S``
  seconds, whatever its pace, or it is dropped, so slow clients cannot hold the threads;
- an upload's body is at most ``max_upload_bytes``; parsing and decoding it (up to MAX_IMAGE_PIXELS
  pixels, a few hundred MB for the largest PNG) happen for at most ``DECODE_SLOTS`` uploads at once;
- the model runs under one lock, so two requests never run it at once.

One log line per request.
"""

from __future__ import annotations

import base64
import io
import json
import socket
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
from captioner.evaluation.caption_bank import CaptionRetriever
from captioner.evaluation.own_images import CaptionedImage, load_image_bytes
from captioner.evaluation.pictures import attention_overlay
from captioner.serve.uploads import RequestError, parse_upload, printable

MAX_UPLOAD_BYTES = 20 * 2**20  # default size limit of an upload's body
DRAIN_LIMIT = 64 * 2**20  # a too-large body up to this size is read and dropped, so the client sees the 413
MAX_BEAM = 10  # the largest beam a request may ask for (or the checkpoint's own, if larger)
MAX_CONNECTIONS = 16  # connections served at once (one thread each); the others wait unread
DECODE_SLOTS = 2  # uploads parsed and decoded at once: a 64 MP PNG takes a few hundred MB while it decodes
REQUEST_DEADLINE_S = 60.0  # a connection's whole request must arrive within this, however slowly it trickles
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
    Tell) has no maps: ``"attention"`` is false and its beams' ``words`` are empty.
    """
    beams = []
    for hypothesis in result.beams:
        words = []
        if hypothesis.maps is not None:
            heat = attention_overlay(result.image, hypothesis.maps)  # (n_words, 3, S, S) uint8
            words = [{"word": word, "heat": png_data_url(panel)} for word, panel in zip(hypothesis.words, heat)]
        beams.append({"caption": hypothesis.caption, "score": round(hypothesis.score, 4), "words": words})
    return {"kind": "captioner", "caption": result.caption, "score": beams[0]["score"], "beam_size": beam_size,
            "alpha": alpha, "attention": result.beams[0].maps is not None, "image": png_data_url(result.image),
            "beams": beams}


def image_error_status(reason: str) -> int:
    """The status for an upload the image loader refused, from its reason (captioner/data/image_io.py)."""
    if reason.startswith("decompression bomb"):
        return 413
    if reason.startswith(("not a recognised image", "cannot convert mode")):
        return 415
    return 400  # empty, truncated or corrupt image data


class CaptionServer(ThreadingHTTPServer):
    """Serves the page and captions uploads with one loaded :class:`ImageCaptioner` (or, for a retrieval
    checkpoint, :class:`~captioner.evaluation.caption_bank.CaptionRetriever`).

    ``port`` 0 picks a free port (see :attr:`url`). ``log``: a text stream for the request lines
    (default stderr). The bounds of the module docstring are attributes, so tests can narrow them.
    """

    daemon_threads = True  # a stalled client does not keep the process alive
    request_queue_size = 64  # connections waiting to be accepted (socketserver's default is 5)

    def __init__(self, captioner, host: str = "127.0.0.1", port: int = 8000,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, log=None, max_connections: int = MAX_CONNECTIONS,
                 decode_slots: int = DECODE_SLOTS, request_deadline_s: float = REQUEST_DEADLINE_S):
        self.captioner = captioner
        self.retrieval = isinstance(captioner, CaptionRetriever)
        self.max_upload_bytes = max_upload_bytes
        self.max_beam = max(MAX_BEAM, captioner.beam_size)
        self.model_lock = threading.Lock()  # the model runs for one request at a time
        self.decode_slots = threading.BoundedSemaphore(decode_slots)  # uploads parsed and decoded at once
        self.connection_slots = threading.BoundedSemaphore(max_connections)  # connections served at once
        self.request_deadline_s = request_deadline_s
        self.deadlines: dict[socket.socket, tuple[float, str]] = {}  # connection -> (time it must be read by, client)
        self.deadlines_lock = threading.Lock()
        self.stopping = threading.Event()
        self.log_lock = threading.Lock()  # one whole line at a time
        self.log_stream = log if log is not None else sys.stderr
        self.replying = 0  # replies being sent and logged; Ctrl-C waits for them (wait_for_replies)
        self.replies_done = threading.Condition()
        control = "captions shown" if self.retrieval else "beam size"
        page = PAGE_TEMPLATE.replace("__BEAM__", str(captioner.beam_size)).replace("__MAX_BEAM__", str(self.max_beam))
        page = page.replace("__CONTROL__", control)
        self.page = page.replace("__MAX_UPLOAD__", str(max_upload_bytes)).encode("utf-8")
        super().__init__((host, port), CaptionRequestHandler)
        threading.Thread(target=self.drop_late_requests, daemon=True, name="request deadlines").start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def process_request(self, request, client_address) -> None:
        """Start the connection's thread once one of ``max_connections`` slots is free; until then the
        connection waits, unread (the listen queue holds it, not this process's memory)."""
        while not self.connection_slots.acquire(timeout=0.1):
            if self.stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connection_slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connection_slots.release()

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()

    def server_close(self) -> None:
        self.stopping.set()
        super().server_close()

    def drop_late_requests(self) -> None:
        """Shut the reading side of every connection whose request has not arrived by its deadline: its
        handler then reads the end of the stream and gives up (a body cut short is answered 408)."""
        while not self.stopping.wait(min(0.25, self.request_deadline_s / 4)):
            now = time.monotonic()
            with self.deadlines_lock:
                late = [(connection, client) for connection, (deadline, client) in self.deadlines.items()
                        if deadline < now]
                for connection, client in late:
                    self.deadlines[connection] = (float("inf"), client)  # dropped once
            for connection, client in late:
                try:
                    connection.shutdown(socket.SHUT_RD)  # the answer can still be written
                except OSError:
                    continue
                self.write_log(f"{client} dropped: its request did not arrive within {self.request_deadline_s:g} s")

    def wait_for_replies(self, timeout: float = 5.0) -> None:
        """Let replies already being sent finish and log their line (the handler threads are daemons,
        so without this a Ctrl-C right after a reply could lose its log line)."""
        with self.replies_done:
            self.replies_done.wait_for(lambda: self.replying == 0, timeout)

    def write_log(self, line: str) -> None:
        with self.log_lock:
            print(line, file=self.log_stream, flush=True)

    def caption_upload(self, content_type: str | None, body: bytes) -> tuple[str, dict]:
        """Parse and decode an upload (RequestError, BadImageError) and caption it with all its beams, or
        for a retrieval checkpoint find its nearest training captions: ``(the upload's name, the answer)``."""
        with self.decode_slots:  # the copies of the body and the decoded pixels, for a few uploads at once
            upload = parse_upload(content_type, body, self.max_beam)
            del body  # the caller holds no reference: the body's memory goes now, not after the model ran
            image, kept = load_image_bytes(upload.data, self.captioner.image_size, upload.name)  # (S, S, 3) uint8
            name, beam = upload.name, upload.beam_size or self.captioner.beam_size
            del upload
        with self.model_lock:
            if self.retrieval:
                result = self.captioner.retrieve([image], beam)[0]
            else:
                result = self.captioner.caption([image], beam_size=beam, top=beam, attention=True)[0]
        if self.retrieval:
            answer = retrieval_json(result, self.captioner.bank_size)
        else:
            answer = caption_json(result, beam, self.captioner.alpha)
        return name, {**answer, "kept": round(kept, 4)}


def retrieval_json(result: CaptionedImage, bank_size: int) -> dict:
    """The answer to ``POST /caption`` for a retrieval checkpoint: the nearest captions of the bank, best
    first, in the shape of :func:`caption_json` (a beam's ``score`` is the caption's cosine similarity)."""
    beams = [{"caption": h.caption, "score": round(h.score, 4), "words": []} for h in result.beams]
    return {"kind": "retrieval", "caption": result.caption, "score": beams[0]["score"], "top_k": len(beams),
            "bank_size": bank_size, "attention": False, "image": png_data_url(result.image), "beams": beams}


class CaptionRequestHandler(BaseHTTPRequestHandler):
    """One request: ``GET /`` or ``POST /caption``; see the module docstring."""

    server: CaptionServer
    server_version = "caption.py"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped

    def setup(self) -> None:
        super().setup()
        self.started = time.perf_counter()
        with self.server.deadlines_lock:
            self.server.deadlines[self.connection] = (time.monotonic() + self.server.request_deadline_s,
                                                      self.client_address[0])

    def request_arrived(self) -> None:
        """The whole request is read: its deadline no longer applies (the model may take its time)."""
        with self.server.deadlines_lock:
            self.server.deadlines.pop(self.connection, None)

    def finish(self) -> None:
        self.request_arrived()
        super().finish()

    def do_GET(self) -> None:
        self.started = time.perf_counter()
        self.request_arrived()
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self.reply(200, self.server.page, "text/html; charset=utf-8", "page")
        elif path == "/favicon.ico":  # asked by every browser: no icon, and no error either
            self.reply(204, b"", "image/x-icon", "no icon")
        else:
            self.reply_json(404, {"error": "not found: the page is at / and captions come from POST /caption"})

    def do_POST(self) -> None:
        self.started = time.perf_counter()
        try:
            if urlsplit(self.path).path != "/caption":
                self.read_body()  # read (up to the limit), so the client reads the refusal, not a reset
                raise RequestError(404, "not found: post images to /caption")
            name, answer = self.server.caption_upload(self.headers.get("Content-Type"), self.read_body())
            self.reply_json(200, answer, f"{name}: {answer['caption']!r}")
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

    def refuse_method(self) -> None:
        """Any method but GET and POST: 405 naming the two (for HEAD the same headers, no body)."""
        self.started = time.perf_counter()
        self.close_connection = True  # a body it may have sent is left unread
        self.reply_json(405, {"error": f"method {printable(self.command, 20)} not allowed: GET the page at /, "
                                       "POST images to /caption"})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, headers too long...), as JSON too."""
        self.started = getattr(self, "started", time.perf_counter())
        self.close_connection = True
        self.request_version = "HTTP/1.0"  # a status line and headers even for a request line it could not read
        short, long = self.responses.get(code, ("error", ""))
        self.reply_json(code, {"error": f"{message or short}" + (f": {explain or long}" if explain or long else "")})

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # http.server looks up do_<METHOD>: every other method is refused alike
            return self.refuse_method
        raise AttributeError(name)

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
            if self.server.deadlines.get(self.connection, (0.0,))[0] == float("inf"):
                raise RequestError(408, f"the request did not arrive within {self.server.request_deadline_s:g} s")
            raise RequestError(400, f"the body ended after {len(body)} of its {n} bytes")
        self.request_arrived()
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
            if status != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            if status == 405:
                self.send_header("Allow", "GET, POST")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError as e:  # the client went away; nothing to answer
            note = f"{note} (not delivered: {type(e).__name__})"
        seconds = time.perf_counter() - self.started
        path = printable(getattr(self, "path", ""))  # none when the request line was unreadable
        self.server.write_log(f"{self.client_address[0]} {self.command} {path} {status} "
                              f"{len(body)} B {seconds:.3f} s {printable(note, 160)}")

    def log_request(self, code="-", size="-") -> None:
        """Silenced: :meth:`reply` writes the one line per request."""

    def log_message(self, format: str, *args) -> None:
        """Requests the base class refuses itself (a malformed request line, an unknown method)."""
        self.server.write_log(f"{self.client_address[0]} {printable(format % args, 200)}")
