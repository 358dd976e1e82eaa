"""Helpers shared by the tests of p8utils.notebook (the root conftest's fixtures apply here too)."""

from __future__ import annotations

import io

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Check that ``data`` is a PNG file and return its (width, height) in pixels."""
    from PIL import Image

    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size
