"""Printing transcripts as they arrive: partials rewritten in place on a terminal, finals on their own line.

Shared by the microphone client and the file streamer so both look the same. On a terminal the current
partial is one line rewritten with `\\r` + erase-line (cut to the terminal's width, keeping its end, since a
wrapped line cannot be rewritten); elsewhere (a pipe, a test) every message is a plain line, as logs want.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, TextIO

from client.protocol import Received, is_transcription

ERASE = "\r\x1b[K"


class TranscriptPrinter:
    def __init__(
        self,
        out: TextIO | None = None,
        *,
        tty: bool | None = None,
        show_partials: bool = True,
        timestamps: bool = False,
        prefix: str = "",
    ) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.show_partials = show_partials
        self.timestamps = timestamps
        self.prefix = prefix
        self._partial_shown = False

    def __call__(self, item: Received) -> None:
        msg = item.message
        kind = msg.get("type")
        if is_transcription(msg):
            text = transcript_text(msg)
            if is_transcription(msg, final=True):
                self.final(text, item.t, msg)
            elif self.show_partials:
                self.partial(text)
        elif kind == "error":
            body = msg.get("body") or {}
            self.line(f"[error {body.get('error_type', '?')}] {body.get('message', '')}")
        elif kind == "end_audio" and (msg.get("body") or {}).get("status") == "finished":
            self.clear()

    def partial(self, text: str) -> None:
        if not text:
            return
        if self.tty:
            width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
            shown = f"{self.prefix}… {text}"
            if len(shown) > width:
                shown = "…" + shown[-(width - 1) :]
            self.out.write(ERASE + shown)
            self._partial_shown = True
        else:
            self.out.write(f"{self.prefix}[partial] {text}\n")
        self.out.flush()

    def final(self, text: str, t: float, msg: dict[str, Any]) -> None:
        if not text:  # an utterance that turned out to be noise: just drop its partial
            self.clear()
            return
        stamp = ""
        if self.timestamps and msg.get("segments"):
            stamp = f"[{msg['segments'][0]['start_time']:7.2f}-{msg['segments'][-1]['end_time']:7.2f}] "
        self.line(f"{self.prefix}{stamp}{text}")

    def line(self, text: str) -> None:
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()

    def clear(self) -> None:
        if self._partial_shown:
            self.out.write(ERASE)
            self.out.flush()
            self._partial_shown = False


def transcript_text(msg: dict[str, Any]) -> str:
    """A transcription frame's text: `segments` (current servers) or the legacy top-level `transcript`."""
    segments = msg.get("segments")
    if segments:
        return " ".join(s.get("text", "").strip() for s in segments if s.get("text", "").strip())
    return str(msg.get("transcript") or "").strip()
