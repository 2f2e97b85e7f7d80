"""Decode image files and bytes, refusing truncated or corrupt ones instead of returning a damaged picture.

libjpeg only warns ("Premature end of JPEG file") and fills the missing rows with grey, and a PNG cut short can
decode to a partial image; both would be used as good frames. So JPEG and PNG are walked structurally first:
a JPEG must reach its end-of-image marker (EOI) through its segments and entropy-coded scans, a PNG must reach
its IEND chunk with every chunk's CRC intact. Images that are not 8-bit (16-bit, float) are scaled to 8 bits;
NaN or infinite pixel values make the image unusable.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STANDALONE = set(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: markers without a length field


class CorruptImage(ValueError):
    """The bytes are not a complete, decodable image; the message says why."""


def _check_jpeg(data: bytes) -> None:
    pos, n = 2, len(data)
    while True:
        while pos < n and data[pos] != 0xFF:  # tolerate junk between segments like libjpeg does
            pos += 1
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise CorruptImage("truncated JPEG: no end-of-image marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            raise CorruptImage("truncated JPEG: cut inside a segment header")
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            raise CorruptImage(f"corrupt JPEG: segment 0xFF{marker:02X} of length {length}")
        pos += length
        if pos > n:
            raise CorruptImage("truncated JPEG: cut inside a segment")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker other than RSTn / FF00
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    raise CorruptImage("truncated JPEG: no end-of-image marker")
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    pos += 1 if following == 0xFF else 2
                    continue
                break


def _check_png(data: bytes) -> None:
    pos, n = len(PNG_SIGNATURE), len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            break
        crc = int.from_bytes(data[end - 4:end], "big")
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            raise CorruptImage(f"corrupt PNG: bad CRC in chunk {kind.decode('latin-1')}")
        if kind == b"IEND":
            return
        pos = end
    raise CorruptImage("truncated PNG: no IEND chunk")


def check_complete(data: bytes) -> None:
    """Raise CorruptImage when JPEG or PNG bytes are cut short or damaged (other formats are left to the decoder)."""
    if not data:
        raise CorruptImage("empty image data")
    if data[:2] == b"\xff\xd8":
        _check_jpeg(data)
    elif data[:8] == PNG_SIGNATURE:
        _check_png(data)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit images as they are; 16-bit and float ones stretched to 0..255 by their maximum (CorruptImage when a
    pixel is NaN or infinite)."""
    if image.dtype == np.uint8:
        return image
    if not np.isfinite(image).all():
        raise CorruptImage("image has NaN or infinite pixel values")
    peak = float(image.max()) if image.size else 0.0
    return cv2.convertScaleAbs(image, alpha=255.0 / max(1.0, peak))


def decode_image(data: bytes, color: bool = False) -> np.ndarray:
    """Image bytes -> uint8 array (BGR when `color`, else as stored: gray, BGR or BGRA); CorruptImage when the
    bytes are truncated, damaged or not an image."""
    data = bytes(data)
    check_complete(data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise CorruptImage(f"not an image, or corrupt: {e.err}") from None
    if image is None or image.size == 0:
        raise CorruptImage("not an image, or corrupt")
    return to_uint8(image)


def read_image(path, color: bool = False) -> np.ndarray:
    """Decode an image file; OSError when it cannot be read, CorruptImage (naming the file) when it is damaged."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return decode_image(data, color)
    except CorruptImage as e:
        raise CorruptImage(f"image {path} cannot be decoded ({e})") from None
