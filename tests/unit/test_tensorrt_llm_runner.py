"""TensorRTLLMEngine's parsing of ModelRunnerCpp's outputs, through the faithful stand-in, scripted model.

The stand-in (`testing.trtllm_runner`) reproduces ModelRunnerCpp 1.1.0's output layout;
here its backend is a scripted model (fixed tokens and log-probs, known first-step logits), so each defect of
issue #15 that a CPU can show has a fast test that fails if it comes back. The real model runs in
tests/integration/test_tensorrt_llm_cpu.py.
"""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the TensorRT-LLM engine's code path needs torch")

from testing import trtllm_runner as stand_in  # noqa: E402
from whisper_stream.engines.interface import DecodeOptions, TranscribeRequest  # noqa: E402
from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine, _shutdown  # noqa: E402
from whisper_stream.engines.whisper_tokens import SpecialTokens, WhisperTokenizer  # noqa: E402
from whisper_stream.triton.whisper_model import create_engine, option_errors  # noqa: E402

VOCAB = 51865  # Whisper base: 99 languages
SP = SpecialTokens.from_vocab_size(VOCAB)
NO_SPEECH_LOGIT = 1.5  # next to en 2.0 and sv 1.0, every other token -inf
NO_SPEECH = math.exp(1.5) / (math.exp(1.5) + math.exp(2.0) + math.exp(1.0))
GREEDY_LP, SAMPLED_LP = -1.5, -0.2  # greedy fails Whisper's -1.0 log-prob check, the first fallback passes


class ScriptedBackend:
    """Says " Hello world." to every window; its log-probs depend on the temperature."""

    device = "cpu"
    text_ids: list[int] = []

    def __init__(self, **_: Any) -> None:
        pass

    def generate(
        self, features: np.ndarray, prompts: list[list[int]], **kw: Any
    ) -> list[list[stand_in.Beam]]:
        assert features.ndim == 3 and features.shape[1] == 80
        out = []
        for p in prompts:
            if p[-1] == SP.sot:  # the first step: language and no-speech logits
                z = np.full(VOCAB, -np.inf, np.float32)
                z[SP.language_token("en")], z[SP.language_token("sv")] = 2.0, 1.0
                z[SP.no_speech] = NO_SPEECH_LOGIT
                top = int(np.argmax(z))
                out.append([stand_in.Beam([top], [-0.1], -0.1, [z] if kw["want_logits"] else None)])
                continue
            lp = SAMPLED_LP if kw["temperature"] else GREEDY_LP
            tokens = self.text_ids[: kw["max_new_tokens"]]
            beams = []
            for b in range(kw["beam_width"]):
                lps = [lp - 0.1 * b] * len(tokens)
                logits = [np.zeros(VOCAB, np.float32)] * len(tokens) if kw["want_logits"] else None
                beams.append(stand_in.Beam(list(tokens), lps, sum(lps), logits))
            out.append(beams)
        return out


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory):
    ScriptedBackend.text_ids = WhisperTokenizer(SP).encode(" Hello world.")
    stand_in.BACKENDS["scripted"] = ScriptedBackend
    out = stand_in.make_engine_dir(
        tmp_path_factory.mktemp("engine"), backend="scripted", n_mels=80, vocab_size=VOCAB, max_batch_size=4
    )
    yield out
    stand_in.BACKENDS.pop("scripted", None)


@pytest.fixture
def engine(engine_dir):
    return TensorRTLLMEngine(engine_dir, runner="faithful")


def _feats(n: int) -> list[Any]:
    return [torch.zeros(3000, 80, dtype=torch.float16) for _ in range(n)]


SPEECH = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)


# -- the runner's layout (ModelRunnerCpp._fill_output) -------------------------------------------------


def test_output_layout_echoes_the_prompt_and_pads_with_end_id(engine: TensorRTLLMEngine) -> None:
    runner = engine._runner
    prompts = [[SP.sot, SP.language_token("en"), SP.transcribe, SP.no_timestamps], [SP.sot_prev, 11, SP.sot]]
    prompts[1] = [SP.sot_prev, 11, 12, SP.sot, SP.language_token("en"), SP.transcribe, SP.no_timestamps]
    out = runner.generate(
        [torch.tensor(p, dtype=torch.int32) for p in prompts],
        encoder_input_features=_feats(2),
        encoder_output_lengths=[1500, 1500],
        max_new_tokens=10,
        end_id=SP.eot,
        pad_id=SP.eot,
        return_dict=True,
        output_sequence_lengths=True,
        output_cum_log_probs=True,  # without output_log_probs: the executor leaves them at zero
        num_beams=1,
    )
    n = len(ScriptedBackend.text_ids)
    ids = out["output_ids"]
    assert ids.dtype == torch.int32 and tuple(ids.shape) == (2, 1, runner.max_seq_len)
    for k, p in enumerate(prompts):
        row = ids[k, 0].tolist()
        assert row[: len(p)] == p and row[len(p) : len(p) + n] == ScriptedBackend.text_ids
        assert set(row[len(p) + n :]) == {SP.eot}
        assert out["sequence_lengths"][k, 0].item() == len(p) + n
    assert out["cum_log_probs"].abs().sum().item() == 0.0
    assert "log_probs" not in out and "generation_logits" not in out


def test_log_probs_beams_and_logits_shapes(engine: TensorRTLLMEngine) -> None:
    runner = engine._runner
    prompt = [SP.sot, SP.language_token("en"), SP.transcribe, SP.no_timestamps]
    kwargs = dict(encoder_input_features=_feats(3), encoder_output_lengths=[1500] * 3, end_id=SP.eot)
    batch = [torch.tensor(prompt, dtype=torch.int32)] * 3
    out = runner.generate(
        batch, max_new_tokens=2, return_dict=True, output_log_probs=True, output_cum_log_probs=True,
        num_beams=2, **kwargs,
    )  # fmt: skip
    assert tuple(out["output_ids"].shape) == (3, 2, runner.max_seq_len)
    assert tuple(out["log_probs"].shape) == (3, 2, 2)
    assert tuple(out["cum_log_probs"].shape) == (3, 2)
    assert out["cum_log_probs"][0, 1].item() == pytest.approx(2 * (GREEDY_LP - 0.1))
    with pytest.raises(RuntimeError, match="gather_generation_logits"):
        runner.executor_gather_generation_logits = False
        try:
            runner.generate(
                batch, max_new_tokens=1, return_dict=True, output_generation_logits=True, **kwargs
            )
        finally:
            runner.executor_gather_generation_logits = True
    out = runner.generate(batch, max_new_tokens=2, return_dict=True, output_generation_logits=True, **kwargs)
    assert tuple(out["generation_logits"].shape) == (3, 1, 2, VOCAB)
    with pytest.raises(RuntimeError, match="Num beams"):
        runner.generate(batch, max_new_tokens=1, num_beams=8, **kwargs)


# -- the engine's defects (issue #15) -------------------------------------------------------------------


def test_avg_logprob_and_no_speech_reach_the_guards_with_a_given_language(engine: TensorRTLLMEngine) -> None:
    """Defects 1 and 2: avg_logprob was always 0 (cum log-probs without log-probs) and no_speech_prob was 0
    whenever a language was given. Here the fallback ladder also runs on the log-prob check."""
    (res,) = engine.transcribe_sync([TranscribeRequest(SPEECH, DecodeOptions(language="en"))])
    (seg,) = res.segments
    assert seg.text == " Hello world." and res.language == "en" and res.language_prob is None
    assert seg.no_speech_prob == pytest.approx(NO_SPEECH, abs=1e-6)
    assert seg.avg_logprob == pytest.approx(GREEDY_LP)  # one temperature: the greedy decode, as it is
    (res,) = engine.transcribe_sync(
        [TranscribeRequest(SPEECH, DecodeOptions(language="en", temperatures=(0.0, 0.2, 0.4)))]
    )
    assert res.segments[0].avg_logprob == pytest.approx(SAMPLED_LP) and res.segments[0].temperature == 0.2


def test_only_the_first_step_asks_for_generation_logits(engine: TensorRTLLMEngine) -> None:
    """Defect 3: logits for one step of every request, none from the decode; the runtime flag is set and
    the decoder was not built with --gather_generation_logits."""
    runner = engine._runner
    assert runner.executor_gather_generation_logits and not runner.gather_generation_logits
    runner.calls.clear()
    engine.transcribe_sync(
        [TranscribeRequest(SPEECH), TranscribeRequest(SPEECH, DecodeOptions(language=None))]
    )
    first, decode = runner.calls
    assert first["output_generation_logits"] and first["max_new_tokens"] == 1 and first["batch"] == 2
    assert first["prompts"] == [[SP.sot], [SP.sot]]  # no previous text: the prompt up to sot is [sot]
    assert not decode["return_generation_logits"] and decode["output_log_probs"]


def test_detection_restriction_and_previous_text_in_the_first_step(engine: TensorRTLLMEngine) -> None:
    runner = engine._runner
    runner.calls.clear()
    res = engine.transcribe_sync(
        [
            TranscribeRequest(SPEECH, DecodeOptions(language=None)),
            TranscribeRequest(SPEECH, DecodeOptions(language=None, language_options=("sv", "de"))),
            TranscribeRequest(SPEECH, DecodeOptions(language=None, language_detection_only=True)),
            TranscribeRequest(SPEECH, DecodeOptions(prompt="Earlier words", prefix="Hello")),
        ]
    )
    assert [r.language for r in res] == ["en", "sv", "en", "en"]
    assert res[0].language_prob == pytest.approx(math.e / (math.e + 1))
    assert res[1].language_prob == pytest.approx(1.0) and res[2].segments == ()
    first = runner.calls[0]["prompts"]
    assert first[3][0] == SP.sot_prev and first[3][-1] == SP.sot  # no-speech after the previous text
    decode = runner.calls[1]["prompts"]
    assert len(decode) == 3 and decode[1][1] == SP.language_token("sv")  # detection-only is not decoded


def test_requests_differing_in_generate_options_are_decoded_apart(engine: TensorRTLLMEngine) -> None:
    runner = engine._runner
    runner.calls.clear()
    engine.transcribe_sync(
        [
            TranscribeRequest(SPEECH),
            TranscribeRequest(SPEECH, DecodeOptions(prompt="other text")),  # same call: prompts differ only
            TranscribeRequest(SPEECH, DecodeOptions(max_new_tokens=2)),
            TranscribeRequest(SPEECH, DecodeOptions(beam_width=2)),
        ]
    )
    decodes = runner.calls[1:]
    assert sorted((c["batch"], c["max_new_tokens"], c["num_beams"]) for c in decodes) == [
        (1, 2, 1),
        (1, 400, 2),
        (2, 400, 1),
    ]


def test_the_instance_device_reaches_the_runner(engine_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 4: one Triton instance per GPU, each creating its executor on cuda:0."""
    monkeypatch.setenv("WHISPER_STREAM_TRTLLM_RUNNER", "faithful")
    params = {"engine": "tensorrt_llm", "engine_dir": str(engine_dir)}
    e = create_engine(params, "GPU", 4, device_id=1)
    assert e.device_id == 1 and e._runner.device_ids == [1]


def test_close_shuts_down_executor_or_session(engine: TensorRTLLMEngine) -> None:
    """Defect 5: newer runners keep the executor in `.session`."""

    class Box:
        def __init__(self) -> None:
            self.down = False

        def shutdown(self) -> None:
            self.down = True

    class NewRunner:
        session = Box()

    new = NewRunner()
    _shutdown(new)
    assert new.session.down
    runner = engine._runner
    asyncio.run(engine.close())
    assert runner.executor.shut_down and not asyncio.run(engine.ready())


def test_an_unknown_language_fails_only_its_own_request(engine: TensorRTLLMEngine) -> None:
    """Defect 7: the Triton model checks each request's options; one bad code no longer fails the batch."""
    errors = option_errors(
        engine, [DecodeOptions(), DecodeOptions(language="xx"), DecodeOptions(language="sv")]
    )
    assert errors[0] is None and errors[2] is None and "xx" in errors[1]
    assert "show_word_timestamps" in option_errors(engine, [DecodeOptions(word_timestamps=True)])[0]


def test_ctranslate2_subset_copies_a_cuda_encoding_to_the_host() -> None:
    """Defect 8: np.asarray on a CUDA StorageView is refused by CTranslate2."""
    import ctranslate2

    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    host = ctranslate2.StorageView.from_array(np.arange(12, dtype=np.float32).reshape(3, 2, 2))

    class CudaView:
        device = "cuda"

        def __array__(self, *_: Any, **__: Any) -> np.ndarray:
            raise RuntimeError("device memory cannot be exposed to numpy")

        def to_device(self, device: Any) -> Any:
            assert device == ctranslate2.Device.cpu
            return host

    engine = CTranslate2Engine.__new__(CTranslate2Engine)
    engine._ct2 = ctranslate2
    got = np.asarray(engine._subset(CudaView(), [0, 2]))
    assert got.tolist() == np.asarray(host)[[0, 2]].tolist()


def test_a_backend_named_by_import_path_loads_in_any_process():
    # how gpu_check's serving part hands its torch backend to a server process it starts
    assert stand_in.backend_class(f"{__name__}:ScriptedBackend") is ScriptedBackend
    with pytest.raises(ValueError, match="unknown stand-in backend"):
        stand_in.backend_class("no-such-backend")


def test_the_cpu_stand_in_is_not_selectable_where_the_testing_package_is_absent(monkeypatch) -> None:
    """The stand-in lives in the repository's testing/ package, which no installed server carries."""
    from whisper_stream.engines.tensorrt_llm import runner_class

    assert runner_class("faithful") is stand_in.ModelRunnerCpp  # a repository checkout: tests, gpu-check
    monkeypatch.setitem(sys.modules, "testing.trtllm_runner", None)  # as if not installed
    with pytest.raises(ValueError, match="testing/ package"):
        runner_class("faithful")
