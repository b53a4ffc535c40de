"""How the user tools end on a failure: one line on stderr that says what failed, and the exit status."""

from __future__ import annotations

import contextlib
import os
import sys

import websockets

from client.protocol import refusal


def report_failure(prog: str, url: str, exc: BaseException, *, connected: bool) -> int:
    """One line for `exc` (a refusal, a timeout, no server, a lost connection, a closed stdout); status 1.

    `connected`: the server had accepted the connection, so an OSError lost it rather than never reached it.
    """
    if isinstance(exc, BrokenPipeError):  # our own output was closed (`| head`): not the server's doing
        # stdout onto /dev/null: no second BrokenPipeError when Python flushes it at exit
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        message = "output closed (broken pipe): stopped"
    elif isinstance(exc, websockets.InvalidStatus):
        message = refusal(exc)
    elif isinstance(exc, TimeoutError):
        message = f"{url}: timed out (no connection, or no 'finished' in time)"
    elif connected:
        message = f"lost the connection to {url}: {exc}"
    else:
        message = f"cannot connect to {url}: {exc}"
    print(f"{prog}: {message}", file=sys.stderr)
    return 1
