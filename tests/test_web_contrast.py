"""The pages' colours meet WCAG 2.1 AA contrast (4.5:1 for text), read from the stylesheet itself,
and every focusable control shows a visible focus outline (keyboard use)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).resolve().parents[1] / "server" / "web" / "static" / "style.css").read_text(encoding="utf-8")
PAGE = "#fff"


def _rule(selector: str) -> dict[str, str]:
    match = re.search(r"(?m)^" + re.escape(selector) + r" \{([^}]*)\}", CSS)
    assert match, selector
    return {k.strip(): v.strip() for k, v in (d.split(":", 1) for d in match.group(1).split(";") if ":" in d)}


def _luminance(hex_colour: str) -> float:
    digits = hex_colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    channels = [int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_contrast_function_matches_known_values() -> None:
    assert contrast("#000", "#fff") == pytest.approx(21.0)
    assert contrast("#777", "#fff") == pytest.approx(4.48, abs=0.01)


TEXT = _rule("html")["color"]
PAIRS = {
    "body text": (TEXT, _rule("html")["background"]),
    "links": (_rule("a")["color"], PAGE),
    "buttons": (_rule("button, .button")["color"], _rule("button, .button")["background"]),
    "hints": (_rule(".hint")["color"], PAGE),
    "warnings on the page": (_rule(".warning")["color"], PAGE),
    "warnings in an error box": (_rule(".warning")["color"], _rule(".error")["background"]),
    "notice text": (TEXT, _rule(".notice")["background"]),
    "error text": (TEXT, _rule(".error")["background"]),
    "success text": (TEXT, _rule(".success")["background"]),
    "banner text": (TEXT, _rule(".banner")["background"]),
    "links in a notice": (_rule("a")["color"], _rule(".notice")["background"]),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_text_contrast_is_at_least_aa(name: str) -> None:
    fg, bg = PAIRS[name]
    assert contrast(fg, bg) >= 4.5, (name, fg, bg, round(contrast(fg, bg), 2))


def test_focus_is_visible_on_every_control() -> None:
    focus = _rule("a:focus, button:focus, input:focus, select:focus, textarea:focus")
    width, style, colour = focus["outline"].split()
    assert (width, style) == ("3px", "solid")
    assert contrast(colour, PAGE) >= 3.0  # non-text contrast (WCAG 1.4.11)
    assert "outline: none" not in CSS
    assert "outline:0" not in CSS.replace(" ", "")
