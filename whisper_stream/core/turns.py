"""A stream's turns (utterances) as events: speech started, speech stopped, end of turn, and utterance end
after enough audio without speech. Where an utterance is cut into several finals (a pause, 30 s), its turn
still ends once: the last piece takes the end's cause if it is still on its way, else an empty final does.

The one place a turn's boundaries become events, so every protocol renders the same turns (Deepgram's
`speech_final` and `UtteranceEnd`, OpenAI's `committed`), and an end-of-turn model can join here."""

from __future__ import annotations

from whisper_stream.core.events import Action, Cause, TurnEvent
from whisper_stream.core.inflight import InFlight, Request
from whisper_stream.core.transcripts import transcript_of
from whisper_stream.engines.interface import SAMPLE_RATE


class Turns:
    def __init__(self) -> None:
        self.utterance = 0  # the open (or next) utterance's index
        self.last_piece: Request | None = None  # the open utterance's latest cut final
        self._speech_end: int | None = None  # end of the latest utterance, until utterance_end is reported

    def event(self, kind: str, sample: int) -> TurnEvent:
        return TurnEvent(kind, sample / SAMPLE_RATE, self.utterance)  # type: ignore[arg-type]

    def dropped(self) -> None:
        """The open utterance was cleared untranscribed."""
        self.utterance, self.last_piece = self.utterance + 1, None

    def ended(self, end: int, cause: Cause, has_final: bool) -> TurnEvent:
        """The open utterance ended at stream sample `end` (its final, if any, is on its way)."""
        if has_final:
            self._speech_end = end
        event = TurnEvent("end_of_turn", end / SAMPLE_RATE, self.utterance, cause, has_final)
        self.utterance, self.last_piece = self.utterance + 1, None
        return event

    def piece_ends(
        self, flight: InFlight, cause: Cause, end_of_audio: bool, floor: int, number: int
    ) -> list[Action]:
        """Nothing after the utterance's last cut: that piece, still on its way, becomes its last final;
        already sent, an empty final (`number`) carries the end."""
        piece = self.last_piece
        assert piece is not None
        piece.cause, piece.continues, piece.end_of_audio = cause, False, piece.end_of_audio or end_of_audio
        if flight.delivery.last() == piece.id:
            return []
        end_s = floor / SAMPLE_RATE
        language = flight.cond.last_language or piece.options.language or ""
        return [
            transcript_of(
                None, kind="final", number=number, utterance=self.utterance, start_s=end_s, end_s=end_s,
                language=language, cause=cause, end_of_audio=end_of_audio,
            )
        ]  # fmt: skip

    def utterance_end(
        self, received: int, finals_outstanding: int, utterance_end_ms: int | None
    ) -> list[Action]:
        """utterance_end once `utterance_end_ms` of audio without speech followed the last utterance and all
        its finals were sent."""
        if (
            utterance_end_ms is None
            or self._speech_end is None
            or finals_outstanding
            or received - self._speech_end < utterance_end_ms * SAMPLE_RATE // 1000
        ):
            return []
        end, self._speech_end = self._speech_end, None
        return [TurnEvent("utterance_end", end / SAMPLE_RATE, self.utterance - 1)]
