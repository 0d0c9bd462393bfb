"""Fetching images from URLs: a bounded pool of threads, limits on time, bytes and pixels, and every
failure counted by its reason.

Web-scale caption data (CC3M, CC12M, LAION) is a list of URLs, and a few percent of them fail on any
day: gone (404), server errors, slow or stalled servers, HTML pages where a picture was, truncated
bodies, giant images, redirect loops. :class:`UrlFetcher` turns each URL into either the image's bytes
and its decoded picture, or a skip reason from this module (``HTTP_404`` ... ``REDIRECT_LOOP``), never
an exception::

    >>> fetcher = UrlFetcher(FetchSettings(concurrency=32), cache_dir="data/url_cache")   # doctest: +SKIP
    >>> for result in fetcher.fetch_all(urls):          # in the order of ``urls``   # doctest: +SKIP
    ...     print(result.url, result.reason or result.image.size)

One attempt at a URL has ``timeout`` seconds for the whole reply: the body is read one receive at a
time and the clock is checked after each, so a server that drips a byte a second is cut off as surely
as one that stalls (a stalled receive ends after ``timeout`` seconds of silence). Connecting and
reading the headers are bounded by that silence limit per receive only (http.client reads the
headers itself), so a server that drips its *headers* can hold an attempt longer. Timeouts, 5xx, 408, 429, refused
or reset connections and truncated bodies are retried ``retries`` times, sleeping
``backoff * 2**attempt`` seconds in between, as :func:`captioner.infra.download.download_file` does.
Everything else fails at once. Redirects are followed by hand (up to ``max_redirects``, http and https
only), so that a loop is recognised and counted rather than raised.

A body larger than ``max_bytes`` is refused (from its Content-Length before reading, else while
reading), and an image whose header claims more than ``max_pixels`` pixels is refused before any pixel
is decoded (``captioner/data/image_io.py``). With ``cache_dir``, each good payload is kept as
``cache_dir/<sha256 of the URL>[:2]/<sha256>``, written atomically, and read from there next time.
docs/urls.md has the whole story.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from captioner.data.image_io import MAX_IMAGE_PIXELS, BadImageError, TooManyPixelsError, image_from_bytes
from captioner.infra.fileio import atomic_write_bytes

# Skip reasons, as counted in a SkipLog (captioner/data/coco_annotations.py) and in the logs.
HTTP_404 = "URL answered HTTP 404 (not found)"
HTTP_4XX = "URL answered another HTTP error (4xx, or 3xx without a Location)"
HTTP_5XX = "URL answered HTTP 5xx (server error), every retry too"
TIMEOUT = "URL timed out, every retry too"
CONNECTION_FAILED = "URL connection failed, every retry too"
TRUNCATED = "URL body cut short, every retry too"
WRONG_CONTENT_TYPE = "URL content type is not an image's"
TOO_MANY_BYTES = "URL body over the byte limit"
TOO_MANY_PIXELS = "URL image over the pixel limit (decompression bomb)"
NOT_AN_IMAGE = "URL payload is not an image that decodes"
REDIRECT_LOOP = "URL redirects in a loop or too many times"
NOT_HTTP = "URL is not a valid http(s) URL"

# Content types that may hold an image: image/*, and the generic binary types that many servers send
# for every file. Anything else (text/html: an error page; application/json) is refused unread.
BINARY_CONTENT_TYPES = ("application/octet-stream", "binary/octet-stream")

CHUNK_BYTES = 64 * 1024  # the body is read this much at a time, the clock checked in between


@dataclass(frozen=True)
class FetchSettings:
    """How one URL is fetched; the defaults suit the open web."""

    timeout: float = 10.0  # seconds for one attempt: connection, headers and the whole body
    retries: int = 2  # further attempts after a timeout, 5xx, 408, 429, a failed connection or a cut body
    backoff: float = 0.5  # seconds before the first retry, doubling with each further one
    max_bytes: int = 20_000_000  # a larger body is refused
    max_pixels: int = MAX_IMAGE_PIXELS  # an image whose header claims more is refused undecoded
    max_redirects: int = 5
    concurrency: int = 16  # fetches in flight at once (threads)
    draft_size: int | None = None  # decode a JPEG at 1/2..1/8 scale while its shorter side stays >= this
    user_agent: str = "image-captioner-url-fetcher/1.0"

    def __post_init__(self):
        for name in ("timeout", "max_bytes", "max_pixels", "concurrency"):
            if getattr(self, name) <= 0:
                raise ValueError(f"fetch setting {name} must be positive, got {getattr(self, name)!r}")
        for name in ("retries", "backoff", "max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"fetch setting {name} must not be negative, got {getattr(self, name)!r}")


class Fetched(NamedTuple):
    """The outcome for one URL: ``data`` (the payload's bytes) and ``image`` (decoded, RGB) when it
    succeeded; else ``reason`` (one of this module's skip reasons) and ``detail`` (what happened)."""

    url: str
    data: bytes | None
    image: Image.Image | None
    reason: str | None
    detail: str = ""
    from_cache: bool = False


class _Skip(Exception):
    """One attempt's failure: its reason, and whether another attempt may succeed."""

    def __init__(self, reason: str, detail: str, transient: bool = False):
        super().__init__(detail)
        self.reason, self.detail, self.transient = reason, detail, transient


class _Redirect(Exception):
    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand every 3xx back as an HTTPError, so that :meth:`UrlFetcher.fetch` follows it and sees loops."""

    def redirect_request(self, *args, **kwargs):
        return None


def is_http_url(url: str) -> bool:
    """``"https://a.org/x.jpg" -> True``; ``"file:///etc/passwd"``, ``"a.org/x.jpg"``, ``"http://[::1"`` -> False."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


# Characters left as they are when a URL is percent-encoded: the reserved ones, and % itself (an
# already encoded URL stays the same)
URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def encoded_url(url: str) -> str:
    """The URL with spaces and non-ASCII characters percent-encoded, as a browser sends it.

    >>> encoded_url("http://a.org/café au lait.jpg?size=2")
    'http://a.org/caf%C3%A9%20au%20lait.jpg?size=2'
    """
    return urllib.parse.quote(url, safe=URL_SAFE)


def cache_key(url: str) -> str:
    """The cache's file name for ``url``: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def image_content_type(content_type: str | None) -> bool:
    """True when a Content-Type header may hold an image: none, ``image/*``, or a generic binary type."""
    if not content_type:
        return True
    main = content_type.split(";")[0].strip().lower()
    return main.startswith("image/") or main in BINARY_CONTENT_TYPES


class UrlFetcher:
    """Fetches URLs under :class:`FetchSettings`, optionally through a disk cache; thread-safe."""

    def __init__(self, settings: FetchSettings = FetchSettings(), cache_dir: str | Path | None = None):
        self.settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._opener = urllib.request.build_opener(_NoRedirects)

    # ---- one URL ---------------------------------------------------------------------------------

    def fetch(self, url: str) -> Fetched:
        """The payload of ``url`` and its decoded image, or the reason it failed. Never raises for a bad URL."""
        cached = self._read_cache(url)
        if cached is not None:
            return cached
        seen = [url]
        current = url
        while True:
            if not is_http_url(current):
                return Fetched(url, None, None, NOT_HTTP, f"{url}: {current!r} is not an http(s) URL")
            try:
                data = self._with_retries(current)
            except _Redirect as redirect:
                if redirect.location in seen:
                    return Fetched(url, None, None, REDIRECT_LOOP,
                                   f"{url}: redirect loop ({' -> '.join(seen + [redirect.location])})")
                if len(seen) > self.settings.max_redirects:
                    return Fetched(url, None, None, REDIRECT_LOOP,
                                   f"{url}: more than {self.settings.max_redirects} redirects")
                seen.append(redirect.location)
                current = redirect.location
                continue
            except _Skip as skip:
                return Fetched(url, None, None, skip.reason, f"{url}: {skip.detail}")
            break
        try:
            image = image_from_bytes(data, url, self.settings.draft_size, self.settings.max_pixels)
        except TooManyPixelsError as e:
            return Fetched(url, None, None, TOO_MANY_PIXELS, str(e))
        except BadImageError as e:
            return Fetched(url, None, None, NOT_AN_IMAGE, str(e))
        self._write_cache(url, data)
        return Fetched(url, data, image, None)

    def _with_retries(self, url: str) -> bytes:
        """One URL's bytes, retrying transient failures; raises _Redirect or the last _Skip."""
        for attempt in range(self.settings.retries + 1):
            try:
                return self._attempt(url)
            except _Skip as skip:
                if not skip.transient or attempt == self.settings.retries:
                    raise
            time.sleep(self.settings.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _attempt(self, url: str) -> bytes:
        """One request for ``url``, within ``timeout`` seconds; the body's bytes, or _Skip / _Redirect."""
        settings = self.settings
        deadline = time.monotonic() + settings.timeout
        request = urllib.request.Request(encoded_url(url), headers={"User-Agent": settings.user_agent})
        try:
            response = self._opener.open(request, timeout=settings.timeout)
        except urllib.error.HTTPError as e:
            with e:
                if 300 <= e.code < 400 and e.headers.get("Location"):
                    raise _Redirect(urllib.parse.urljoin(url, e.headers["Location"])) from None
                if e.code == 404:
                    raise _Skip(HTTP_404, "HTTP 404") from None
                if e.code >= 500:
                    raise _Skip(HTTP_5XX, f"HTTP {e.code}", transient=True) from None
                # 408 (request timeout) and 429 (too many requests) may pass on a later attempt
                raise _Skip(TIMEOUT if e.code == 408 else HTTP_4XX, f"HTTP {e.code}",
                            transient=e.code in (408, 429)) from None
        except (ValueError, http.client.InvalidURL) as e:  # a URL that cannot be sent (e.g. a port that is no number)
            raise _Skip(NOT_HTTP, f"{type(e).__name__}: {e}") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError):
                raise _Skip(TIMEOUT, f"no answer within {settings.timeout:g} s", transient=True) from None
            raise _Skip(CONNECTION_FAILED, f"{type(e).__name__}: {reason}", transient=True) from None
        with response:
            content_type = response.headers.get("Content-Type")
            if not image_content_type(content_type):
                raise _Skip(WRONG_CONTENT_TYPE, f"Content-Type {content_type!r}")
            length = response.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if length is not None and length > settings.max_bytes:
                raise _Skip(TOO_MANY_BYTES, f"Content-Length {length} > {settings.max_bytes} bytes")
            chunks, size = [], 0
            try:
                while chunk := response.read1(CHUNK_BYTES):  # what one recv brings: the clock is checked often
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > settings.max_bytes:
                        raise _Skip(TOO_MANY_BYTES, f"more than {settings.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise _Skip(TIMEOUT, f"the body took more than {settings.timeout:g} s "
                                             f"({size} bytes by then)", transient=True)
            except http.client.IncompleteRead as e:
                raise _Skip(TRUNCATED, f"{len(e.partial) + size} of {length} bytes", transient=True) from None
            except TimeoutError:
                raise _Skip(TIMEOUT, f"the body stalled for {settings.timeout:g} s ({size} bytes by then)",
                            transient=True) from None
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                raise _Skip(TRUNCATED, f"{type(e).__name__} after {size} bytes", transient=True) from None
        if length is not None and size < length:
            raise _Skip(TRUNCATED, f"{size} of {length} bytes", transient=True)
        return b"".join(chunks)

    # ---- the cache ---------------------------------------------------------------------------------

    def cache_path(self, url: str) -> Path | None:
        """Where ``url``'s payload is (or would be) cached; None without a cache."""
        if self.cache_dir is None:
            return None
        key = cache_key(url)
        return self.cache_dir / key[:2] / key

    def _read_cache(self, url: str) -> Fetched | None:
        path = self.cache_path(url)
        if path is None or not path.is_file():
            return None
        data = path.read_bytes()
        try:
            image = image_from_bytes(data, path, self.settings.draft_size, self.settings.max_pixels)
        except BadImageError:
            return None  # damaged since it was written (it is written whole): fetch it again
        return Fetched(url, data, image, None, from_cache=True)

    def _write_cache(self, url: str, data: bytes) -> None:
        path = self.cache_path(url)
        if path is not None and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data, fsync=False)  # a cache: a lost entry is fetched again

    # ---- many URLs -----------------------------------------------------------------------------------

    def fetch_all(self, urls: Iterable[str], prepare: Callable[[Fetched], Any] | None = None) -> Iterator:
        """Fetch ``urls`` with ``concurrency`` threads; yields one :class:`Fetched` per URL, in their order,
        or ``prepare(fetched)`` when given (run in the fetching thread: e.g. resizing the image).

        At most ``2 * concurrency`` fetches are submitted ahead of the one being yielded, so memory stays
        bounded however long the list; a slow URL holds back the yield, not the other fetches, and the
        threads keep fetching while the caller works on what it was given.
        """
        def task(url: str):
            result = self.fetch(url)
            return result if prepare is None else prepare(result)

        window = 2 * self.settings.concurrency
        pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="fetch")
        pending = deque()
        try:
            for url in urls:
                pending.append(pool.submit(task, url))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
