"""A report as sections: each renderer gives ``Section``s; the terminal prints their text, Markdown gets a
heading and a fenced block per section (built from the sections, not parsed back from terminal text)."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    tag: str  # "STEP 3", "CLIP", "RUN audio_tower", "COMPARISON", …
    title: str  # the rest of the header line
    body: str = ""

    def text(self) -> str:
        """As the terminal shows it: a blank line, ``[TAG] title``, the body."""
        return f"\n[{self.tag}] {self.title}" + (f"\n{self.body}" if self.body else "")

    def heading(self) -> str:
        """'STEP 3' -> 'Step 3', 'LORA DIAGNOSIS' -> 'LoRA diagnosis', 'RUN audio_tower' -> 'Run audio_tower'."""
        words = []
        for i, word in enumerate(self.tag.split(" ")):
            if word.isupper():
                word = "LoRA" if word == "LORA" else (word.capitalize() if i == 0 else word.lower())
            words.append(word)
        return " ".join(words)

    def markdown(self) -> str:
        out = [f"## {self.heading()}: {self.title}", ""]
        if self.body:
            out += ["```", self.body.strip("\n"), "```", ""]
        return "\n".join(out)


VERDICT_COLOURS = {"CONFIRMED": "32", "REFUTED": "31", "NOTED": "33"}
_VERDICT = re.compile(r"\b(CONFIRMED|REFUTED|NOTED)\b|^(  !)", re.M)


def coloured(section: Section) -> str:
    """The terminal text with verdicts in colour (only the confirmation has any)."""
    text = section.text()
    if section.tag != "CONFIRMATION":
        return text
    return _VERDICT.sub(lambda m: f"\033[{VERDICT_COLOURS.get(m.group(1), '31')}m{m.group(0)}\033[0m", text)


def markdown(parts: list, title: str) -> str:
    """The report as Markdown: notes as quotes, then one heading and one fenced block per section."""
    out = [f"# {title}", ""]
    for part in parts:
        out.append(part.markdown() if isinstance(part, Section) else f"> {part}\n")
    return "\n".join(out).rstrip("\n")
