"""Schemathesis hooks for tests/test_schema.c: what schema/openapi.yaml
cannot say about a valid request.

Images that are images: the schema can say that an image is base64 text
(format: byte) or a file (format: binary), but not that its bytes are a
JPEG or PNG the server can decode; Schemathesis' own samples for those
formats are random bytes, a GIF or a PDF, which the server rightly answers
415. These strategies draw real PNG files instead (random sizes, colour
types and pixels, and the 1x1 JPEG every client test has).

X-Tasam-Image-Id that names the image: the header must be the SHA-256 of
the image bytes (or the body's image_id), which a schema cannot tie to the
body. A well-formed value generated for it is replaced by the right one, so
the requests that stay valid are valid; malformed values are left alone,
for the server to refuse.

So every rejection Schemathesis reports is a real disagreement.
"""
import base64
import hashlib
import re
import struct
import zlib

import schemathesis
from hypothesis import strategies as st

# 1x1 grey baseline JPEG
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAFA3PEY8MlBGQUZaVVBfeMiCeG5uePWvuZHI//////////////////////////"
    "//////////////////////////////////////////wAALCAABAAEBAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBg"
    "cICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJi"
    "coKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztL"
    "W2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/AKVf/9k="
)


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(w, h, channels, seed):
    """A w x h 8-bit PNG (grey, grey+alpha, RGB or RGBA) with pixels from seed."""
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    row = w * channels
    px = bytearray()
    x = seed & 0xFFFFFFFF
    for _ in range(h):
        px.append(0)  # filter: none
        for _ in range(row):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
            px.append(x >> 24)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(px)))
            + _chunk(b"IEND", b""))


IMAGES = st.one_of(
    st.builds(png, st.integers(1, 48), st.integers(1, 48), st.sampled_from([1, 2, 3, 4]),
              st.integers(0, 2**32 - 1)),
    st.just(JPEG),
)

schemathesis.openapi.format("binary", IMAGES)
schemathesis.openapi.format("byte", IMAGES.map(lambda b: base64.b64encode(b).decode()))


HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def _image_bytes(body):
    """The image bytes (or the image_id) a request body names, or None."""
    if not isinstance(body, dict):
        return None
    image = body.get("image")
    data = getattr(image, "data", None)  # a file part (Schemathesis' Binary, a str subclass)
    if isinstance(data, (bytes, bytearray)):
        return hashlib.sha256(bytes(data)).hexdigest()
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, str):
        payload = image.split(",", 1)[1] if image.startswith("data:") and "," in image else image
        try:
            return hashlib.sha256(base64.b64decode(payload, validate=True)).hexdigest()
        except ValueError:
            return None
    image_id = body.get("image_id")
    if isinstance(image_id, str) and HEX64.match(image_id):
        return image_id.lower()
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "x-tasam-image-id" and isinstance(headers[name], str) and \
                HEX64.match(headers[name]):
            sha = _image_bytes(case.body)
            if sha:
                headers[name] = sha
