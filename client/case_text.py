"""A verified case as text for people: on the terminal (``handler read``) or in a file (``handler read-all``).

Applicant text is untrusted: terminal escapes, direction overrides and other
control or format characters are removed (:func:`.render.printable`), and every
line of it is put under a margin (``  | ``) so no line can pass for one of ours
(a verdict, a header). Only verified content is rendered; a follow-up that did
not verify is named, never shown.
"""

from __future__ import annotations

from .errors import untrusted_text
from .handler import CaseReading, FollowUpView
from .render import printable


def quoted(text: str) -> str:
    """Applicant text under a margin, so no line of it can pass for a line of ours (a verdict, a header)."""
    return "\n".join(f"  | {line}" for line in printable(text).split("\n"))


def reading_header(reading: CaseReading) -> str:
    case = reading.case
    return f"Case {case.case_id}: pool {case.pool}, arrived {case.day}, status {case.status}"


def reading_body(reading: CaseReading) -> list[str]:
    """Everything after the header and the warnings, line by line (a line may hold several, quoted)."""
    contact = reading.contact
    lines = ["", "Verified on this machine:"]
    lines += [f"  - {line}" for line in reading.verified]
    lines += ["", f"Language: {contact.language}   origin: {contact.origin}"]
    for name, value in sorted(contact.fields.items()):
        lines += [f"{name}:", quoted(value)]
    lines += ["", "--- Message (the applicant's words; every line is marked '  | ')", quoted(contact.message)]
    if reading.attachments:
        lines += ["", "--- Attachments (saved; the names the applicant gave are shown after cleaning)"]
        for saved in reading.attachments:
            media = untrusted_text(saved.info.media_type, 127)
            lines.append(f"  {saved.path}  ({saved.info.size} bytes, declared type {media})")
    for follow_up in reading.follow_ups:
        lines += follow_up_lines(follow_up)
    for sent in reading.replies:
        lines += ["", f"--- Reply {sent.message_id}, {sent.day}"]
        if sent.text is None:
            lines.append(f"({sent.problem})")
        else:
            lines += [f"(by handler {sent.handler_id}, signature verified)", quoted(sent.text)]
    if reading.escalations:
        lines += ["", f"Escalated before: package(s) {', '.join(reading.escalations)}"]
    return lines


def follow_up_lines(follow_up: FollowUpView) -> list[str]:
    """One follow-up: only verified text is shown, and a server-sealed one says so."""
    lines = ["", f"--- Follow-up {follow_up.message_id}, {follow_up.day}"]
    if follow_up.server_sealed:
        lines.append(
            "(sealed by the server: sent from the web page without JavaScript, so the server saw this text"
            " for one request)"
        )
    if follow_up.text is None:
        lines.append(f"(NOT verified, not shown: {follow_up.problem})")
    else:
        lines += ["(signed by the applicant's mailbox key)", quoted(follow_up.text)]
    return lines


def reading_text(reading: CaseReading) -> str:
    """The whole case as one text file: what ``handler read`` prints, warnings included."""
    lines = [reading_header(reading), *(f"warning: {w}" for w in reading.warnings), *reading_body(reading)]
    return "\n".join(lines) + "\n"


__all__ = ["quoted", "reading_body", "reading_header", "reading_text"]
