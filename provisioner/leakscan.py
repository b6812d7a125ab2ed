"""Does a rendered string carry key material? A PEM BEGIN line, or 16 bytes of known material.

Pure functions over text and bytes: no I/O, and no result ever holds or shows the material
or the part of the text that matched (callers report only where, never what).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator

PEM_BEGIN = "-----BEGIN"
#: A run of this many material bytes anywhere in a rendered value is a leak.
WINDOW = 16
# Every 16-byte run of a material contains one whole 8-byte chunk at a multiple of 8 (16 >= 8+8-1),
# so the index holds len/8 chunks per material instead of len windows: a 5,000-key set stays small.
_CHUNK = 8

_HEX_RUN = re.compile(rf"[0-9A-Fa-f]{{{2 * WINDOW},}}")
# Both base64 alphabets at once: + and - are 62, / and _ are 63. 22 characters hold 16 bytes.
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{22,}")
_B64_TO_STANDARD = str.maketrans("-_", "+/")
_SPACE = re.compile(r"\s+")


def holds_pem_begin(text: str) -> bool:
    """Whether `text` holds a PEM BEGIN line (private key, certificate: anything PEM)."""
    return PEM_BEGIN in text


class MaterialIndex:
    """The materials a manifest set reads, indexed so that any text can be scanned in one pass."""

    def __init__(self, materials: Iterable[bytes] = ()) -> None:
        self._materials: list[bytes] = []
        # chunk -> index of the one material holding it, or -1 when several do (verify against all)
        self._chunks: dict[bytes, int] = {}
        for material in materials:
            self.add(material)

    def __bool__(self) -> bool:
        return bool(self._materials)

    def add(self, material: bytes) -> None:
        """Index one material (raw bytes of a source, a DER form, a scalar); shorter than 16: ignored."""
        if len(material) < WINDOW:
            return
        number = len(self._materials)
        self._materials.append(bytes(material))
        for start in range(0, len(material) - _CHUNK + 1, _CHUNK):
            chunk = material[start : start + _CHUNK]
            known = self._chunks.get(chunk)
            self._chunks[chunk] = number if known is None or known == number else -1

    def found_in_bytes(self, data: bytes) -> bool:
        """Whether `data` holds 16 consecutive bytes of an indexed material."""
        if len(data) < WINDOW or not self._materials:
            return False
        chunks = self._chunks
        for i in range(len(data) - _CHUNK + 1):
            owner = chunks.get(data[i : i + _CHUNK])
            if owner is not None and self._confirm(data, i, owner):
                return True
        return False

    def _confirm(self, data: bytes, at: int, owner: int) -> bool:
        # The chunk matched at `at`; a leak is a 16-byte window of `data` around it found in a material.
        candidates = self._materials if owner < 0 else [self._materials[owner]]
        for start in range(max(0, at - (WINDOW - _CHUNK)), at + 1):
            window = data[start : start + WINDOW]
            if len(window) == WINDOW and any(window in m for m in candidates):
                return True
        return False

    def found_in(self, text: str) -> bool:
        """Whether `text` carries 16 bytes of an indexed material: raw (UTF-8), hex (either case,
        either nibble alignment) or base64 (standard or URL-safe, any alignment, padded or not),
        whitespace between characters ignored."""
        if not self._materials:
            return False
        return any(self.found_in_bytes(chunk) for chunk in decodings(text))


def decodings(text: str) -> Iterator[bytes]:
    """Every byte string `text` may encode: itself as UTF-8, then each hex and base64 reading of
    its runs (with whitespace removed, so that split lines join up)."""
    yield text.encode("utf-8", "surrogatepass")
    compact = _SPACE.sub("", text)
    for run in _HEX_RUN.findall(compact):
        for shift in (0, 1):
            part = run[shift:]
            yield binascii.unhexlify(part[: len(part) - len(part) % 2])
    for run in _B64_RUN.findall(compact):
        standard = run.translate(_B64_TO_STANDARD)
        for shift in range(4):
            part = standard[shift:]
            tail = len(part) % 4
            # An unpadded end of 2 or 3 characters still holds 1 or 2 bytes; 1 character holds none.
            part = part[:-1] if tail == 1 else part + "=" * ((4 - tail) % 4)
            if part:
                yield binascii.a2b_base64(part)
