"""The few DER shapes the provisioner builds and reads by hand (SM2 keys, SM2 ciphertexts).

A small strict reader and writer over bytes; it knows no key types. It must not be used for
anything pyca/cryptography can already parse: there the library's parser is the better one.
"""

from __future__ import annotations

from dataclasses import dataclass

INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
SEQUENCE = 0x30


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative INTEGER not supported")
    # One leading zero byte keeps a value with its top bit set positive.
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return tlv(INTEGER, body)


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def octet_string(data: bytes) -> bytes:
    return tlv(OCTET_STRING, data)


def bit_string(data: bytes) -> bytes:
    return tlv(BIT_STRING, b"\x00" + data)


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(OID, bytes(body))


def explicit(number: int, content: bytes) -> bytes:
    """A constructed context-specific tag [number] around already-encoded content."""
    return tlv(0xA0 | number, content)


@dataclass(frozen=True)
class Element:
    tag: int
    content: bytes


def read(data: bytes, offset: int = 0) -> tuple[Element, int]:
    """One element at `offset`; returns it and the offset just past it. ValueError if malformed."""
    if offset + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag numbers are not supported")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("indefinite or oversized DER length")
        if pos + count > len(data):
            raise ValueError("truncated DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError("non-minimal DER length")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("DER element runs past the end of its data")
    return Element(tag, data[pos:end]), end


def read_single(data: bytes, tag: int) -> Element:
    """The one element that makes up `data`, which must have `tag` and nothing trailing."""
    element, end = read(data)
    if element.tag != tag:
        raise ValueError(f"expected DER tag 0x{tag:02x}, found 0x{element.tag:02x}")
    if end != len(data):
        raise ValueError("trailing bytes after DER element")
    return element


def children(content: bytes) -> list[Element]:
    """The elements inside a constructed element's content."""
    out: list[Element] = []
    pos = 0
    while pos < len(content):
        element, pos = read(content, pos)
        out.append(element)
    return out


def decode_integer(element: Element) -> int:
    if element.tag != INTEGER or not element.content:
        raise ValueError("expected a DER INTEGER")
    if element.content[0] & 0x80:
        raise ValueError("negative DER INTEGER")
    if len(element.content) > 1 and element.content[0] == 0 and not element.content[1] & 0x80:
        raise ValueError("non-minimal DER INTEGER")
    return int.from_bytes(element.content, "big")


def decode_oid(element: Element) -> str:
    if element.tag != OID or not element.content:
        raise ValueError("expected a DER OBJECT IDENTIFIER")
    first = element.content[0]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in element.content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(a) for a in arcs)


def decode_bit_string(element: Element) -> bytes:
    if element.tag != BIT_STRING or not element.content or element.content[0] != 0:
        raise ValueError("expected a DER BIT STRING with no unused bits")
    return element.content[1:]
