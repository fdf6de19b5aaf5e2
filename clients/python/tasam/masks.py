"""Masks: COCO compressed RLE (the encoding of pycocotools' rleToString /
rleFrString, the default output of tasamd), the grey PNG of `output: "png"`,
and conversion to NumPy arrays when NumPy is installed.

A decoded mask is `bytes` of height * width values 0 or 1, row by row (the
layout of a NumPy array of shape (height, width)). RLE runs are column by
column, as COCO's are.
"""
import re
import struct
import zlib

_RUNS = re.compile(rb"\x00+|\x01+")
_BINARY = bytes([0] + [1] * 255)


def rle_counts(s):
    """The run lengths of a compressed RLE string (first run: zeros)."""
    if isinstance(s, (bytes, bytearray)):
        s = s.decode("ascii")
    cnts = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(s[p]) - 48
            if not 0 <= c <= 63:
                raise ValueError("bad character %r in an RLE string" % s[p])
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        if x < 0:
            raise ValueError("negative run in an RLE string")
        cnts.append(x)
    return cnts


def rle_string(counts):
    """The compressed RLE string of run lengths (pycocotools' rleToString)."""
    out = bytearray()
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def _counts_of(rle):
    """Run lengths from an RLE dict ({"size", "counts"}), a string or a list."""
    if isinstance(rle, dict):
        rle = rle["counts"]
    if isinstance(rle, (str, bytes, bytearray)):
        return rle_counts(rle)
    return [int(c) for c in rle]


def rle_decode(rle, height=None, width=None):
    """Decode an RLE (dict with size and counts, or counts with height and
    width) to row-major bytes of 0 and 1."""
    if isinstance(rle, dict) and height is None:
        height, width = rle["size"]
    counts = _counts_of(rle)
    if height is None or width is None:
        raise ValueError("the mask's height and width are needed")
    if sum(counts) != height * width:
        raise ValueError("the RLE covers %d pixels, the mask has %d" % (sum(counts), height * width))
    col = bytearray(height * width)
    i = 0
    for r, n in enumerate(counts):
        if r & 1 and n:
            col[i:i + n] = b"\x01" * n
        i += n
    # column-major to row-major: row y is every height-th byte from y
    return b"".join(bytes(col[y::height]) for y in range(height))


def rle_encode(mask, height=None, width=None):
    """Encode a mask (row-major bytes-like of height * width values, nonzero
    meaning inside, or a 2-D NumPy array) as a COCO RLE dict."""
    if hasattr(mask, "shape") and hasattr(mask, "tobytes"):
        height, width = mask.shape
        mask = (mask != 0).astype("uint8").tobytes()
    if height is None or width is None:
        raise ValueError("the mask's height and width are needed")
    data = bytes(mask).translate(_BINARY)
    if len(data) != height * width:
        raise ValueError("the mask has %d values, not %d x %d" % (len(data), height, width))
    col = b"".join(data[x::width] for x in range(width))
    counts = [] if col[:1] == b"\x00" else [0]
    counts.extend(m.end() - m.start() for m in _RUNS.finditer(col))
    return {"size": [height, width], "counts": rle_string(counts)}


def rle_area(rle):
    """Pixels inside the mask."""
    return sum(_counts_of(rle)[1::2])


def png_decode(data):
    """Decode the 8-bit grey PNG of `output: "png"` to (width, height,
    row-major bytes of 0 and 1)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    p, idat, ihdr = 8, [], None
    while p + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[p:p + 8])
        body = data[p + 8:p + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        p += 12 + n
    if not ihdr:
        raise ValueError("PNG without IHDR")
    w, h, depth, color, _, _, interlace = ihdr
    if depth != 8 or color != 0 or interlace:
        raise ValueError("only 8-bit grey, non-interlaced PNGs are masks")
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != h * (w + 1):
        raise ValueError("PNG data has the wrong size")
    out = bytearray(w * h)
    prev = bytearray(w)
    for y in range(h):
        f = raw[y * (w + 1)]
        line = bytearray(raw[y * (w + 1) + 1:(y + 1) * (w + 1)])
        for x in range(w if f else 0):
            a = line[x - 1] if x else 0
            b = prev[x]
            c = prev[x - 1] if x else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            elif f != 0:
                raise ValueError("bad PNG filter %d" % f)
        out[y * w:(y + 1) * w] = line
        prev = line
    return w, h, bytes(out).translate(_BINARY)


def png_encode(pixels, width, height, channels=3):
    """A PNG of 8-bit pixels (row-major, `channels` 1, 3 or 4 a pixel): how
    an array is sent as an image without Pillow."""
    color = {1: 0, 3: 2, 4: 6}[channels]
    stride = width * channels
    raw = b"".join(b"\x00" + bytes(pixels[y * stride:(y + 1) * stride]) for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def to_numpy(rle, height=None, width=None):
    """A (height, width) boolean NumPy array of an RLE (needs NumPy)."""
    import numpy as np
    if isinstance(rle, dict) and height is None:
        height, width = rle["size"]
    counts = np.asarray(_counts_of(rle), dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError("the RLE covers %d pixels, the mask has %d" % (counts.sum(), height * width))
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(width, height).T
