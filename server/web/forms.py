"""Reading the web forms: bounded, strict, nothing written anywhere.

The contact form is ``multipart/form-data`` read part by part with
``request.multipart()``, so aiohttp never spools a file to disk: every byte
lands in a bounded in-memory buffer that the caller seals and then wipes.
Attachments cannot be sealed while they arrive, because the contact envelope
(which the chunks are bound to, docs/protocol.md 5) lists each attachment's
size, and a browser without JavaScript does not say a file's size before
sending it. The upload limit (shown on the page) bounds that memory.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import BodyPartReader, web

from safepassage.crypto.envelope import MAX_BODY
from safepassage.crypto.intake import FIELD_NAMES, MAX_FIELD_CHARS

from ..errors import ApiError, bad_request
from ..inputs import BodyPace

MAX_PARTS: Final = 96
MAX_NAME_CHARS: Final = 255
MAX_MEDIA_TYPE_CHARS: Final = 127
DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"
_READ: Final = 64 * 1024
#: Bytes a short text field (pool, language, form token, codename, contact id) may have.
_SHORT: Final = 1024
_TEXT_LIMITS: Final = {
    "form": _SHORT,
    "pool": _SHORT,
    "language": _SHORT,
    "message": MAX_BODY,
    **dict.fromkeys(FIELD_NAMES, 4 * MAX_FIELD_CHARS),
}


@dataclass(slots=True, repr=False)
class UploadedFile:
    name: str
    media_type: str
    data: bytearray

    def wipe(self) -> None:
        # Best effort: the bytes of this buffer are overwritten; copies made
        # by the kernel's socket buffers or by sealing are not ours to reach.
        self.data[:] = bytes(len(self.data))


@dataclass(slots=True, repr=False)
class ContactForm:
    """What the contact form sent. Its repr shows no content."""

    text: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def get(self, name: str) -> str:
        return self.text.get(name, "")

    def fields(self) -> dict[str, str]:
        return {name: self.text[name] for name in FIELD_NAMES if self.text.get(name, "").strip()}

    def wipe(self) -> None:
        for f in self.files:
            f.wipe()
        self.files.clear()


def _media_type(name: str) -> str:
    # From the name, like the command-line client: the browser's own guess
    # would add one more signal about the applicant's system.
    guessed = mimetypes.guess_type(name, strict=False)[0] or DEFAULT_MEDIA_TYPE
    return guessed if len(guessed) <= MAX_MEDIA_TYPE_CHARS else DEFAULT_MEDIA_TYPE


def _file_name(raw: str) -> str:
    # Browsers send the bare name; older ones sent a whole Windows path.
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise bad_request(f"A file name must have 1 to {MAX_NAME_CHARS} characters.", "bad_attachment")
    return name


async def _read_text(part: BodyPartReader, limit: int, pace: BodyPace) -> str:
    buf = bytearray()
    while chunk := await pace.read(part.read_chunk(_READ)):
        pace.add(len(chunk))
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, "field_too_large", "A form field is larger than this form accepts.")
    try:
        return bytes(buf).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("A form field is not valid UTF-8.") from None


async def read_contact_form(request: web.Request, form: ContactForm, *, max_upload: int, max_files: int) -> None:
    """Fill ``form`` part by part; on a refusal the text read so far stays in it (to show it again)."""
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "Send the form as multipart/form-data.")
    reader = await request.multipart()
    pace = BodyPace("form")
    total = 0
    try:
        for _ in range(MAX_PARTS):
            part = await pace.read(reader.next())
            if part is None:
                return
            if not isinstance(part, BodyPartReader):
                raise bad_request("Nested multipart bodies are not accepted.")
            name = part.name or ""
            if part.filename is not None:
                if name != "attachment":
                    raise bad_request("Unexpected file field.")
                data = bytearray()
                while chunk := await pace.read(part.read_chunk(_READ)):
                    pace.add(len(chunk))
                    total += len(chunk)
                    if total > max_upload:
                        raise ApiError(413, "upload_too_large", "The attached files are larger than this form accepts.")
                    data += chunk
                if not part.filename and not data:
                    continue  # an empty file input: the browser sends it with no name
                if len(form.files) >= max_files:
                    raise ApiError(413, "too_many_attachments", "Too many attached files.")
                form.files.append(UploadedFile(_file_name(part.filename), _media_type(part.filename), data))
                continue
            limit = _TEXT_LIMITS.get(name)
            if limit is None or name in form.text:
                raise bad_request("Unknown or repeated form field.")
            form.text[name] = await _read_text(part, limit, pace)
        raise bad_request("The form has too many parts.")
    except BaseException:
        form.wipe()
        raise


async def read_text_form(request: web.Request, allowed: Mapping[str, int]) -> dict[str, str]:
    """A multipart form of text fields only: each name in ``allowed`` at most once, within its byte limit.

    Multipart rather than urlencoded: percent-encoding makes Cyrillic text six
    times longer, and a file part is refused here before anything reads it.
    """
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "Send the form as multipart/form-data.")
    reader = await request.multipart()
    pace = BodyPace("form")
    out: dict[str, str] = {}
    for _ in range(len(allowed) + 1):
        part = await pace.read(reader.next())
        if part is None:
            return out
        if not isinstance(part, BodyPartReader) or part.filename is not None:
            raise bad_request("This form takes no files.")
        name = part.name or ""
        limit = allowed.get(name)
        if limit is None or name in out:
            raise bad_request("Unknown or repeated form field.")
        out[name] = await _read_text(part, limit, pace)
    raise bad_request("The form has too many parts.")
