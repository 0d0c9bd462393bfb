"""A tiny threaded HTTP file server on 127.0.0.1 for download tests, with switchable misbehaviour.

    >>> with FileServer({"/a.bin": b"0123456789"}, cuts={"/a.bin": [4]}) as server:   # doctest: +SKIP
    ...     url = server.url("/a.bin")   # the first GET is cut after 4 bytes, the next succeeds
"""

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) running in a thread while the ``with`` block lasts."""

    def __init__(self, handler, server_class=ThreadingHTTPServer):
        self._server = server_class(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def url(self, path=""):
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class FileServer(LocalServer):
    """Serves ``files`` (``{path: bytes}``) with ``Range: bytes=N-`` support (206 / 416).

    Misbehaviour, consumed one request at a time per path:
    ``cuts[path]``: a list of byte counts; the next GET sends its headers (with the full
    Content-Length) but only that many body bytes, then drops the connection.
    ``failures[path]``: a list of HTTP status codes to answer instead of the file.
    ``ignore_range``: answer 200 with the whole file even when a Range is asked for.
    ``requests``: every GET seen, as ``(path, Range header or None)``.
    """

    def __init__(self, files, cuts=None, failures=None, ignore_range=False):
        self.files = dict(files)
        self.cuts = {path: list(counts) for path, counts in (cuts or {}).items()}
        self.failures = {path: list(codes) for path, codes in (failures or {}).items()}
        self.ignore_range = ignore_range
        self.requests = []
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def _next(self, table, path):
        with self._lock:
            queue = table.get(path)
            return queue.pop(0) if queue else None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                with server._lock:
                    server.requests.append((self.path, range_header))
                failure = server._next(server.failures, self.path)
                if self.path not in server.files or failure is not None:
                    self.send_error(failure or 404)
                    return
                data = server.files[self.path]
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                start = int(match.group(1)) if match and not server.ignore_range else None
                if start is not None and start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if start is None:
                    self.send_response(200)
                    body = data
                else:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server._next(server.cuts, self.path)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        return Handler
