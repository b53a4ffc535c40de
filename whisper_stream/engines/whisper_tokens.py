"""Whisper's token ids, decoder prompts and restricted language detection, without the openai-whisper runtime.

Engines that drive a bare Whisper decoder (TensorRT-LLM) must build the prompt ids themselves:
`[<|startofprev|>, previous text...] <|startoftranscript|> <|lang|> <|task|> [<|notimestamps|>] [prefix...]`.

Special token ids follow from the number of languages (OpenAI's `get_encoding`): the 50257 byte-level BPE
ranks come first, then `<|endoftext|>`, `<|startoftranscript|>`, one token per language, `<|translate|>`,
`<|transcribe|>`, `<|startoflm|>`, `<|startofprev|>`, `<|nospeech|>`, `<|notimestamps|>` and 1501 timestamps
(0.00 .. 30.00 s in 0.02 s steps). large-v3 has 100 languages (Cantonese added), large-v2 and earlier
multilingual models 99, so every id after the language block differs by one between them.

Text tokens come from tiktoken with OpenAI's `multilingual.tiktoken` (shipped in the openai-whisper package;
same file for every multilingual model). That is the vocabulary's own definition, the file the TensorRT-LLM
example uses, and needs no model download; HF `tokenizers` would need a large-v3 `tokenizer.json` that is not
available offline. tiktoken is imported only when a tokenizer is built.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from whisper_stream.dsp.mel import whisper_assets_dir

# Language codes in token order (openai-whisper tokenizer.LANGUAGES); large-v3 uses all 100, older 99.
LANGUAGE_CODES: tuple[str, ...] = tuple(
    (
        "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr "
        "bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn "
        "yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su "
        "yue"
    ).split()
)

N_TEXT_TOKENS = 50257  # byte-level BPE ranks in multilingual.tiktoken
N_TIMESTAMPS = 1501
TIME_PRECISION = 0.02
N_TEXT_CTX = 448  # decoder positions of every Whisper model
MAX_PREV_TOKENS = N_TEXT_CTX // 2 - 1  # whisper keeps at most 223 tokens of previous text
# A forced prefix is decoded as part of every request's output: bounded so that one stream cannot make each
# of its decodes cost many times another's (a 500-emoji prefix took 24 s of a 2-core CPU per utterance).
MAX_PREFIX_TOKENS = 64


def check_prefix_tokens(n_tokens: int) -> None:
    """Raise ValueError (a stream refused at its start) for a prefix over MAX_PREFIX_TOKENS."""
    if n_tokens > MAX_PREFIX_TOKENS:
        raise ValueError(f"prefix is {n_tokens} tokens long; at most {MAX_PREFIX_TOKENS} are accepted")


# GPT-2's pre-tokenizer pattern, as openai-whisper gives it to tiktoken.
_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

MODEL_LANGUAGES = {
    "large-v3": 100,
    "large-v3-turbo": 100,
    "turbo": 100,
    "large-v2": 99,
    "large-v1": 99,
    "large": 99,
    "medium": 99,
    "small": 99,
    "base": 99,
    "tiny": 99,
}


@dataclass(frozen=True)
class SpecialTokens:
    """Special token ids of a multilingual Whisper vocabulary with `num_languages` language tokens."""

    num_languages: int = 100

    @property
    def eot(self) -> int:
        return N_TEXT_TOKENS

    @property
    def sot(self) -> int:
        return N_TEXT_TOKENS + 1

    @property
    def translate(self) -> int:
        return self.sot + 1 + self.num_languages

    @property
    def transcribe(self) -> int:
        return self.translate + 1

    @property
    def sot_lm(self) -> int:
        return self.translate + 2

    @property
    def sot_prev(self) -> int:
        return self.translate + 3

    @property
    def no_speech(self) -> int:
        return self.translate + 4

    @property
    def no_timestamps(self) -> int:
        return self.translate + 5

    @property
    def timestamp_begin(self) -> int:
        return self.translate + 6

    @property
    def vocab_size(self) -> int:
        return self.timestamp_begin + N_TIMESTAMPS

    @property
    def languages(self) -> tuple[str, ...]:
        return LANGUAGE_CODES[: self.num_languages]

    def language_token(self, code: str) -> int:
        try:
            index = self.languages.index(code)
        except ValueError:
            raise ValueError(f"language {code!r} is not one of this model's {self.num_languages}") from None
        return self.sot + 1 + index

    def is_timestamp(self, token: int) -> bool:
        return self.timestamp_begin <= token < self.vocab_size

    def timestamp_seconds(self, token: int) -> float:
        return round((token - self.timestamp_begin) * TIME_PRECISION, 2)

    @classmethod
    def for_model(cls, name: str) -> SpecialTokens:
        if name.endswith(".en"):
            raise ValueError(
                f"{name} is English-only (gpt2 vocabulary); only multilingual models are supported"
            )
        base = name.removeprefix("distil-")
        if base not in MODEL_LANGUAGES:
            raise ValueError(f"unknown Whisper model {name!r}; known: {sorted(MODEL_LANGUAGES)}")
        return cls(MODEL_LANGUAGES[base])

    @classmethod
    def from_vocab_size(cls, vocab_size: int) -> SpecialTokens:
        """From the decoder's vocabulary size (51866 for large-v3, 51865 for v2), as TensorRT-LLM does."""
        num_languages = vocab_size - N_TEXT_TOKENS - 8 - N_TIMESTAMPS
        if not 1 <= num_languages <= len(LANGUAGE_CODES):
            raise ValueError(f"vocabulary size {vocab_size} is not a multilingual Whisper vocabulary")
        return cls(num_languages)


def sot_sequence(
    special: SpecialTokens,
    language: str,
    task: Literal["transcribe", "translate"] = "transcribe",
    timestamps: bool = False,
) -> list[int]:
    """`<|startoftranscript|><|lang|><|task|>` plus `<|notimestamps|>` unless timestamps are wanted."""
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
    ids = [
        special.sot,
        special.language_token(language),
        special.transcribe if task == "transcribe" else special.translate,
    ]
    if not timestamps:
        ids.append(special.no_timestamps)
    return ids


def build_prompt(
    special: SpecialTokens,
    language: str,
    task: Literal["transcribe", "translate"] = "transcribe",
    timestamps: bool = False,
    previous: Sequence[int] = (),
    prefix: Sequence[int] = (),
    max_length: int | None = None,
) -> list[int]:
    """The full decoder prompt: `[<|startofprev|> previous...] sot-sequence [prefix...]`.

    Previous text keeps its most recent tokens (at most 223, as whisper does) and is shortened further so the
    prompt fits `max_length` (a built decoder's `max_input_len`); the sot sequence and prefix are never cut
    silently: a prefix that cannot fit raises ValueError.
    """
    core = sot_sequence(special, language, task, timestamps) + list(prefix)
    if max_length is not None and len(core) > max_length:
        raise ValueError(f"prompt of {len(core)} tokens (sot sequence + prefix) exceeds {max_length}")
    budget = MAX_PREV_TOKENS if max_length is None else min(MAX_PREV_TOKENS, max_length - len(core) - 1)
    prev = list(previous)[-budget:] if budget > 0 else []
    return ([special.sot_prev, *prev] if prev else []) + core


def restricted_language(
    scores: np.ndarray | Sequence[float],
    options: Iterable[str] = (),
    special: SpecialTokens | None = None,
    are_probs: bool = False,
) -> tuple[str, float]:
    """The most likely language among `options` (all the model's languages when empty), and its probability.

    `scores` are the decoder's logits (or probabilities, with are_probs) after `<|startoftranscript|>`, either
    over the whole vocabulary or over the language tokens only (in token order). The probability is
    renormalised over the allowed languages, so with options it answers "which of these" rather than
    "which of all".
    """
    special = special or SpecialTokens()
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] == special.num_languages:
        lang_scores = s
    elif s.shape[0] >= special.sot + 1 + special.num_languages:
        lang_scores = s[special.sot + 1 : special.sot + 1 + special.num_languages]
    else:
        raise ValueError(
            f"expected {special.num_languages} language scores or a full vocabulary, got {s.shape[0]}"
        )
    allowed = list(dict.fromkeys(options)) or list(special.languages)
    idx = np.array([special.language_token(code) - special.sot - 1 for code in allowed])
    chosen = lang_scores[idx]
    if are_probs:
        total = chosen.sum()
        probs = chosen / total if total > 0 else np.full(len(chosen), 1.0 / len(chosen))
    else:
        finite = np.where(np.isfinite(chosen), chosen, -np.inf)
        top = finite.max()
        if not math.isfinite(top):
            probs = np.full(len(chosen), 1.0 / len(chosen))
        else:
            e = np.exp(finite - top)
            probs = e / e.sum()
    best = int(np.argmax(probs))
    return allowed[best], float(probs[best])


def forced_prefix_length(prompt: Sequence[int], special: SpecialTokens) -> int:
    """Text tokens after the sot sequence (a `prefix`): CTranslate2 forces them one step each and returns
    them as the start of its output; TensorRT-LLM's executor takes them as prompt and returns what follows."""
    i = list(prompt).index(special.sot)
    while i < len(prompt) and special.sot <= prompt[i] <= special.no_timestamps:
        i += 1
    return len(prompt) - i


def ctranslate2_max_length(prompt_length: int, forced: int, new_tokens: int) -> int:
    """CTranslate2's `max_length` for `new_tokens` after a prompt with `forced` prefix tokens.

    CTranslate2's Whisper decodes at most min(max_length / 2, max_length - tokens before the sot sequence's
    last token) tokens, the prefix among them, so prompt + cap alone would halve a short cap (10 new tokens
    came back as 7). Whisper's context of 448 tokens bounds it: at most 224 tokens a window."""
    want = forced + new_tokens
    start_step = prompt_length - forced - 1
    return min(N_TEXT_CTX, max(2 * want, start_step + want))


def split_segments(
    tokens: Sequence[int], special: SpecialTokens, duration: float
) -> list[tuple[float, float, list[int]]]:
    """Cut decoded tokens at Whisper timestamp tokens: [(start, end, text tokens)], times in seconds.

    `<|t0|> text <|t1|><|t1|> text <|t2|>` gives two segments; text without a closing timestamp ends at
    `duration`; output without any timestamp is one segment spanning [0, duration].
    """
    segments: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    last_end = 0.0
    text: list[int] = []
    for tok in tokens:
        if tok == special.eot:
            break
        if special.is_timestamp(tok):
            t = special.timestamp_seconds(tok)
            if text:
                begin = start if start is not None else last_end
                segments.append((begin, max(t, begin), text))
                text, start, last_end = [], None, t
            else:
                start = t
        elif tok < special.eot:
            text.append(tok)
    if text:
        begin = start if start is not None else last_end
        segments.append((begin, max(duration, begin), text))
    return segments


class WhisperTokenizer:
    """Text <-> ids for multilingual Whisper, from `multilingual.tiktoken` (see module docstring)."""

    def __init__(self, special: SpecialTokens, assets_dir: str | Path | None = None) -> None:
        self.special = special
        root = Path(assets_dir) if assets_dir is not None else whisper_assets_dir()
        if root is None or not (root / "multilingual.tiktoken").is_file():
            raise FileNotFoundError(
                "multilingual.tiktoken not found: pip install openai-whisper (its assets/), "
                "set WHISPER_ASSETS_DIR, or pass assets_dir"
            )
        self.vocab_path = root / "multilingual.tiktoken"

    @cached_property
    def _encoding(self):  # noqa: ANN202 - tiktoken is optional at import time
        import tiktoken

        ranks: dict[bytes, int] = {}
        with open(self.vocab_path, "rb") as f:
            for line in f:
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
        if len(ranks) != N_TEXT_TOKENS:
            raise ValueError(f"{self.vocab_path}: {len(ranks)} ranks, expected {N_TEXT_TOKENS}")
        return tiktoken.Encoding(
            name="whisper-multilingual",
            explicit_n_vocab=N_TEXT_TOKENS,
            pat_str=_PAT,
            mergeable_ranks=ranks,
            special_tokens={},
        )

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; special-token look-alikes in user text stay text."""
        return self._encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text tokens only; special and timestamp tokens are dropped."""
        return self._encoding.decode([t for t in ids if t < N_TEXT_TOKENS])

    def prompt(
        self,
        language: str,
        task: Literal["transcribe", "translate"] = "transcribe",
        timestamps: bool = False,
        previous_text: str = "",
        prefix: str = "",
        max_length: int | None = None,
    ) -> list[int]:
        """Prompt ids from text: previous text and prefix get a leading space, as whisper encodes them."""
        previous = self.encode(" " + previous_text.strip()) if previous_text.strip() else []
        prefix_ids = self.encode(" " + prefix.strip()) if prefix.strip() else []
        return build_prompt(self.special, language, task, timestamps, previous, prefix_ids, max_length)
