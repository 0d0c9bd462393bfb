"""Reading an upload out of an HTTP request body, refusing every malformed one with a 4xx status.

Two forms are accepted at ``POST /caption``:

- ``multipart/form-data`` (what a browser's form and ``curl -F image=@photo.jpg`` send): a file
  field ``image`` and an optional text field ``beam``;
- ``application/json``: ``{"image": "<the file's bytes in base64>", "beam": 3}`` (``beam`` optional).

A multipart body is a list of parts between boundary lines (RFC 7578)::

    --XyZ\\r\\n
    Content-Disposition: form-data; name="image"; filename="cat.jpg"\\r\\n
    Content-Type: image/jpeg\\r\\n
    \\r\\n
    <the file's bytes>\\r\\n
    --XyZ--\\r\\n

:func:`parse_multipart` splits it on ``\\r\\n--XyZ``, which cannot occur inside a part (the client
chose the boundary so). Nothing here touches the file system: the client's file name is kept only
to name the upload in messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from email.message import Message


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    data: bytes  # the image file's bytes
    name: str  # for messages only, never a path
    beam_size: int | None  # None: the server's default


def header_params(name: str, value: str) -> Message:
    """A header parsed with its parameters: ``.get_content_type()``, ``.get_param("boundary")``, ..."""
    header = Message()
    header[name] = value
    return header


def parse_multipart(body: bytes, boundary: str) -> dict[str, tuple[Message, bytes]]:
    r"""``{field name: (its Content-Disposition, its bytes)}`` of a ``multipart/form-data`` body.

    Raises RequestError(400) for a body that does not follow the format (no opening or closing
    boundary line, a part without a blank line after its headers or without a name).

    >>> body = b'--XyZ\r\nContent-Disposition: form-data; name="beam"\r\n\r\n3\r\n--XyZ--\r\n'
    >>> {name: content for name, (_, content) in parse_multipart(body, "XyZ").items()}
    {'beam': b'3'}
    """
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)  # [preamble, part, part, ..., "--" closing]
    fields: dict[str, tuple[Message, bytes]] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the closing boundary: anything after it is an epilogue
            return fields
        if not chunk.startswith(b"\r\n"):
            raise RequestError(400, "malformed multipart body: a boundary line is not followed by a line break")
        head, blank, content = chunk[2:].partition(b"\r\n\r\n")
        if not blank:
            raise RequestError(400, "malformed multipart body: a part has no blank line after its headers")
        disposition = None
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if not colon:
                raise RequestError(400, f"malformed multipart body: bad header line {line[:60]!r}")
            if key.strip().lower() == "content-disposition":
                disposition = header_params("Content-Disposition", value.strip())
        name = disposition.get_param("name", header="content-disposition") if disposition else None
        if not isinstance(name, str) or not name:
            raise RequestError(400, "malformed multipart body: a part has no Content-Disposition name")
        fields[name] = (disposition, content)
    if len(chunks) == 1:
        raise RequestError(400, "malformed multipart body: its boundary never occurs")
    raise RequestError(400, "malformed multipart body: it ends before the closing boundary (truncated?)")


def printable(text: str, limit: int = 80) -> str:
    r"""``text`` safe for a log line or a message: control characters as ``?``, at most ``limit`` characters.

    >>> printable("cat\r\n.jpg"), printable("x" * 12, limit=8)
    ('cat??.jpg', 'xxxxx...')
    """
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_beam(value, max_beam: int) -> int | None:
    """The requested beam size (None when not given); RequestError(400) unless 1 <= beam <= max_beam."""
    if value is None or value == "":
        return None
    try:
        beam = int(value)
    except (TypeError, ValueError):
        beam = 0
    if isinstance(value, (bool, float)) or not 1 <= beam <= max_beam:
        raise RequestError(400, f"beam must be a whole number from 1 to {max_beam}, got {str(value)[:20]!r}")
    return beam


MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")  # type/subtype, RFC 9110 tokens


def media_type(content_type: str) -> str:
    """The ``type/subtype`` of a Content-Type, lower case; RequestError(415) when it has none.

    (``email.message`` would read a malformed value as ``text/plain``, its default.)

    >>> media_type("Multipart/Form-Data; boundary=XyZ")
    'multipart/form-data'
    """
    kind = content_type.split(";", 1)[0].strip()
    if not MEDIA_TYPE.fullmatch(kind):
        raise RequestError(415, f"malformed Content-Type {printable(content_type, 60)!r}: send multipart/form-data "
                                "or application/json")
    return kind.lower()


def parse_upload(content_type: str | None, body: bytes, max_beam: int) -> Upload:
    """The upload in a ``POST /caption`` body of the given Content-Type (see the module docstring).

    Raises RequestError: 415 for another content type, 400 for a malformed body or a missing image.
    """
    if not content_type:
        raise RequestError(400, "missing Content-Type: send multipart/form-data or application/json")
    kind = media_type(content_type)
    header = header_params("Content-Type", content_type)
    if kind == "multipart/form-data":
        boundary = header.get_param("boundary")
        if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
            raise RequestError(400, "multipart/form-data without a valid boundary parameter")
        fields = parse_multipart(body, boundary)
        if "image" not in fields:
            raise RequestError(400, "the form has no 'image' file field")
        disposition, data = fields["image"]
        name = printable(disposition.get_filename() or "upload")
        beam = fields["beam"][1].decode("latin-1").strip() if "beam" in fields else None
        return Upload(data, name, parse_beam(beam, max_beam))
    if kind == "application/json":
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            raise RequestError(400, f"malformed JSON body ({e})") from None
        except RecursionError:  # json.loads recurses once per level: [[[[...]]]] in a few MB is too deep
            raise RequestError(400, "malformed JSON body: nested too deeply") from None
        if not isinstance(document, dict) or not isinstance(document.get("image"), str):
            raise RequestError(400, 'the JSON body must be an object {"image": "<base64 of the file>", "beam": N}')
        try:
            data = base64.b64decode(document["image"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "the JSON 'image' is not valid base64") from None
        name = printable(document["name"]) if isinstance(document.get("name"), str) else "upload"
        return Upload(data, name, parse_beam(document.get("beam"), max_beam))
    raise RequestError(415, f"unsupported Content-Type {kind!r}: send multipart/form-data (a form with an 'image' "
                            "file field) or application/json ({\"image\": base64})")
