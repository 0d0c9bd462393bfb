"""A threaded HTTP server on 127.0.0.1 that serves images and, on chosen paths, every fault a web image
list meets (tests/test_urls.py, bench/bench_urls.py).

    >>> with UrlServer({"/a.png": png}) as server:          # doctest: +SKIP
    ...     server.url("/a.png"), server.url("/fault/404")

Paths:
``/<name>`` in ``images``: the bytes, as ``image/png`` (after ``latency`` seconds, as every answer).
``/fault/404``, any unknown path: 404. ``/fault/403``: 403. ``/fault/500``: always 500. ``/fault/flaky/<name>``: 500 the first
``flaky_failures`` times for each name, then image ``/<name>``. ``/fault/slow/<name>``: image ``/<name>``
after ``slow`` more seconds. ``/fault/stall``: headers, then nothing until the server stops.
``/fault/drip``: a byte every 0.05 s, for far longer than any test's timeout. ``/fault/truncated``: half
of an image, then the connection closes. ``/fault/text``: an HTML page. ``/fault/notimage``: bytes that
are no image, labelled ``image/jpeg``. ``/fault/wrongtype/<name>``: image ``/<name>``, labelled ``text/html``.
``/fault/huge``: a body of ``huge_bytes`` bytes. ``/fault/bomb``: a PNG whose header claims 9000 x 9000
pixels. ``/fault/loop``: redirects to ``/fault/loop2``, which redirects back. ``/fault/redirect/<name>``:
a redirect to image ``/<name>``.
"""

import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from http_server import LocalServer


def png_header_only(width, height):
    """A PNG that claims ``width x height`` pixels in a few dozen bytes (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of connections at once: the default backlog of 5 would drop SYNs

    def handle_error(self, request, client_address):
        pass  # a client that hangs up on a stalled, dripping or huge answer is what the faults are for


class UrlServer(LocalServer):
    """Serves ``images`` (``{"/name.png": bytes}``) and the fault paths of the module docstring."""

    def __init__(self, images, latency=0.0, slow=0.3, flaky_failures=1, huge_bytes=2_000_000):
        self.images = dict(images)
        self.latency, self.slow, self.flaky_failures, self.huge_bytes = latency, slow, flaky_failures, huge_bytes
        self.requests = []  # every path asked for, in order of arrival
        self._flaky = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        super().__init__(self._handler(), _Server)

    def __exit__(self, *exc):
        self._stop.set()  # the stalled and dripping answers end, so their threads do
        super().__exit__(*exc)

    def count(self, path):
        with self._lock:
            return self.requests.count(path)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body, content_type="image/png", length=None):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def redirect(self, location):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                path = self.path
                with server._lock:
                    server.requests.append(path)
                if server.latency:
                    time.sleep(server.latency)
                first_image = next(iter(server.images.values()))
                name = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else None
                if path in server.images:
                    self.send(200, server.images[path])
                elif path == "/fault/403":
                    self.send(403, b"forbidden", "text/plain")
                elif path == "/fault/500":
                    self.send(500, b"server error", "text/plain")
                elif path.startswith("/fault/flaky/") and name in server.images:
                    with server._lock:
                        server._flaky[name] = server._flaky.get(name, 0) + 1
                        failing = server._flaky[name] <= server.flaky_failures
                    self.send(500, b"busy", "text/plain") if failing else self.send(200, server.images[name])
                elif path.startswith("/fault/slow/") and name in server.images:
                    time.sleep(server.slow)
                    self.send(200, server.images[name])
                elif path == "/fault/stall":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(first_image)))
                    self.end_headers()
                    self.wfile.flush()
                    server._stop.wait()
                elif path == "/fault/drip":
                    self.send(200, b"", length=100_000)
                    for _ in range(100_000):
                        if server._stop.wait(0.05):
                            break
                        self.wfile.write(b"\x00")
                        self.wfile.flush()
                elif path == "/fault/truncated":
                    self.send(200, first_image[: len(first_image) // 2], length=len(first_image))
                    self.close_connection = True
                elif path == "/fault/text":
                    self.send(200, b"<html><body>Not here any more</body></html>", "text/html; charset=utf-8")
                elif path == "/fault/notimage":
                    self.send(200, b"GIF89a but then nothing an image decoder can use" * 10, "image/jpeg")
                elif path.startswith("/fault/wrongtype/") and name in server.images:
                    self.send(200, server.images[name], "text/html")
                elif path == "/fault/huge":
                    self.send(200, b"\x00" * server.huge_bytes)
                elif path == "/fault/bomb":
                    self.send(200, png_header_only(9000, 9000))
                elif path == "/fault/loop":
                    self.redirect("/fault/loop2")
                elif path == "/fault/loop2":
                    self.redirect(server.url("/fault/loop"))
                elif path.startswith("/fault/redirect/") and name in server.images:
                    self.redirect(name)
                else:
                    self.send(404, b"not found", "text/plain")

        return Handler
