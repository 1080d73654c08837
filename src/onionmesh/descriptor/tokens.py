"""A small tokenizer for tor's directory-document meta-format (dir-spec 1.2).

A document is a list of items: ``Keyword [args...] NL`` optionally followed by
one object ``-----BEGIN <TYPE>-----`` / base64 lines / ``-----END <TYPE>-----``.
The descriptor, its two decrypted layers and intro-point blocks all use it.
Every problem is reported as ``MalformedDescriptor`` (or the subclass the caller
passes), never as an IndexError or UnicodeError.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from onionmesh.descriptor.errors import MalformedDescriptor

_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_BEGIN = re.compile(r"^-----BEGIN ([A-Za-z0-9 ]+)-----$")
_B64_LINE = re.compile(r"^[A-Za-z0-9+/=]*$")
MAX_DOCUMENT_CHARS = 200_000  # 4x tor's 50 kB cap; bounds work on hostile input


@dataclass(frozen=True)
class Item:
    """One keyword line and its optional object (type name and decoded bytes)."""

    keyword: str
    args: tuple[str, ...]
    obj_type: str | None
    obj: bytes | None
    obj_text: str | None  # the object exactly as written, BEGIN/END lines included


def tokenize(
    text: str, what: str, error: type[MalformedDescriptor] = MalformedDescriptor
) -> list[Item]:
    """Split ``text`` into items; ``what`` names the document in error messages."""
    if not isinstance(text, str):
        raise error(f"{what} must be text, not {type(text).__name__}")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise error(f"{what} is too long ({len(text)} characters)")
    if not text.isascii():
        raise error(f"{what} contains non-ASCII characters")
    if "\r" in text or "\x00" in text:
        raise error(f"{what} contains CR or NUL characters")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    items: list[Item] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("-----"):
            raise error(f"{what} has an object with no keyword line before it")
        parts = line.split(" ")
        keyword, args = parts[0], tuple(parts[1:])
        if not _KEYWORD.match(keyword) or any(a == "" for a in args):
            raise error(f"{what} has a malformed line {line[:40]!r}")
        obj_type = obj = obj_text = None
        if i < len(lines) and lines[i].startswith("-----BEGIN "):
            obj_type, obj, obj_text, i = _read_object(lines, i, what, error)
        items.append(Item(keyword, args, obj_type, obj, obj_text))
    return items


def _read_object(
    lines: list[str], i: int, what: str, error: type[MalformedDescriptor]
) -> tuple[str, bytes, str, int]:
    begin = _BEGIN.match(lines[i])
    if not begin:
        raise error(f"{what} has a malformed object header")
    obj_type = begin.group(1)
    end_line = f"-----END {obj_type}-----"
    body: list[str] = []
    j = i + 1
    while j < len(lines) and lines[j] != end_line:
        if not _B64_LINE.match(lines[j]):
            raise error(f"{what} has a non-base64 line in a {obj_type} object")
        body.append(lines[j])
        j += 1
    if j >= len(lines):
        raise error(f"{what} has an unterminated {obj_type} object")
    stripped = "".join(body).rstrip("=")
    try:
        if "=" in stripped:
            raise ValueError("padding inside base64")
        data = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} has a {obj_type} object that is not valid base64") from exc
    return obj_type, data, "\n".join(lines[i : j + 1]), j + 1


def exactly_one(
    items: Iterable[Item], keyword: str, what: str,
    error: type[MalformedDescriptor] = MalformedDescriptor,
) -> Item:
    """The single item named ``keyword``; an error if it is missing or repeated."""
    found = [item for item in items if item.keyword == keyword]
    if len(found) != 1:
        state = "missing" if not found else "repeated"
        raise error(f"{what}: {keyword!r} is {state}")
    return found[0]


def at_most_one(
    items: Iterable[Item], keyword: str, what: str,
    error: type[MalformedDescriptor] = MalformedDescriptor,
) -> Item | None:
    """The item named ``keyword`` if present; an error if it is repeated."""
    found = [item for item in items if item.keyword == keyword]
    if len(found) > 1:
        raise error(f"{what}: {keyword!r} is repeated")
    return found[0] if found else None


def need_object(
    item: Item, obj_type: str, what: str, error: type[MalformedDescriptor] = MalformedDescriptor
) -> bytes:
    """The object bytes of ``item``, which must be of ``obj_type``."""
    if item.obj is None or item.obj_type != obj_type:
        raise error(f"{what}: {item.keyword!r} needs a {obj_type} object")
    return item.obj


def parse_uint(value: str, what: str, maximum: int = 2**64 - 1) -> int:
    """A decimal unsigned integer in ``[0, maximum]`` with no sign or spaces."""
    if not value.isdigit() or not value.isascii() or len(value) > 20:
        raise MalformedDescriptor(f"{what} is not an unsigned integer")
    number = int(value)
    if number > maximum:
        raise MalformedDescriptor(f"{what} is out of range")
    return number
