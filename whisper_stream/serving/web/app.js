// The page: capture (microphone or a file) -> AudioWorklet (16 kHz pcm_s16le) -> WebSocket to this server,
// speaking Baseten's Whisper Streaming protocol; partials shown dimmed while they change, finals as they settle.

const $ = (id) => document.getElementById(id);
const RATE = 16000;
// Characters a Sec-WebSocket-Protocol value may hold (an HTTP token); other keys go as ?api_key=
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const ERROR_WORDS = {
  CONFIGURATION_ERROR: "The server did not accept the settings",
  AUDIO_PROCESSING_ERROR: "The server could not process the audio",
  TRANSCRIPTION_ERROR: "Transcription failed on the server",
  STREAM_ERROR: "The server stopped the stream",
  WEBSOCKET_ERROR: "The connection failed",
};

let config = { api_key_required: false, websocket_path: "/v1/websocket", model: "", engine: "" };
let run = null; // the current stream: { ws, ctx, node, source, media, sent, sendTimes, lastFinal, errorShown }

// What the tests read: every message with its arrival time, and the audio sent so far.
const page = { log: [], audioSentS: 0, state: "loading", runs: 0, settingsError: false };
window.whisperStream = page;

function wsBase() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
}

function setState(state, text) {
  page.state = state;
  $("status").textContent = text || state;
  $("status").dataset.state = state;
  const busy = state === "connecting" || state === "running" || state === "finishing";
  $("start").disabled = busy || !window.isSecureContext;
  $("file").disabled = busy || !window.isSecureContext;
  $("file-label").classList.toggle("disabled", busy || !window.isSecureContext);
  $("stop").disabled = state !== "running";
  for (const el of $("settings").elements) el.disabled = busy;
}

// The settings, checked here against the limits in index.html (min/max, data-max-length) before anything is
// sent: the first wrong field is named, highlighted and focused. Returns whether all are right.
function settingsProblem(el) {
  const value = el.value.trim();
  if (el.type === "number") {
    const unit = el.dataset.unit ? ` ${el.dataset.unit}` : "";
    const x = Number(value);
    if (value === "" || el.validity.badInput || !Number.isFinite(x)) return "must be a number";
    if (x < Number(el.min) || x > Number(el.max)) return `must be between ${el.min} and ${el.max}${unit}`;
  } else if (el.dataset.maxLength && el.value.length > Number(el.dataset.maxLength)) {
    return `is ${el.value.length} characters long; at most ${el.dataset.maxLength}`;
  }
  return null;
}

function checkSettings(focus) {
  let first = null;
  for (const el of $("settings").querySelectorAll("[data-name]")) {
    const problem = settingsProblem(el);
    el.classList.toggle("invalid", problem !== null);
    el.setAttribute("aria-invalid", String(problem !== null));
    el.title = problem ? `${el.dataset.name} ${problem}` : "";
    if (problem && !first) first = { el, text: `${el.dataset.name} ${problem}` };
  }
  if (first && focus) {
    $("settings").closest("details").open = true;
    showError(`Check the settings: ${first.text}.`);
    page.settingsError = true;
    first.el.focus();
  } else if (!first && page.settingsError) {
    clearError(); // the settings message goes once they are right
  }
  return first === null;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  if (run) run.errorShown = true;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
  page.settingsError = false;
}

// Clear / Copy / Download: the finals on the page, one per line.
function transcriptText() {
  return [...document.querySelectorAll("#finals .final .text")].map((el) => el.textContent).join("\n");
}

function updateTools() {
  const empty = !$("finals").children.length;
  for (const id of ["copy", "download", "clear"]) $(id).disabled = empty;
}

function note(text) {
  const el = $("tool-note");
  el.textContent = text;
  clearTimeout(note.timer);
  note.timer = setTimeout(() => (el.textContent = ""), 3000);
}

async function copyTranscript() {
  try {
    await navigator.clipboard.writeText(transcriptText() + "\n");
    note("copied");
  } catch (err) {
    showError(`Could not copy to the clipboard (${describe(err)}): use Download instead.`);
  }
}

function downloadTranscript() {
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([transcriptText() + "\n"], { type: "text/plain" }));
  link.download = `transcript-${stamp}.txt`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function clearTranscript() {
  $("finals").replaceChildren();
  $("partial").textContent = "";
  $("placeholder").hidden = false;
  updateTools();
}

function metadata() {
  const whisper = { audio_language: $("language").value };
  const prompt = $("prompt").value.trim();
  if (prompt) whisper.prompt = prompt;
  return {
    streaming_vad_config: {
      threshold: Number($("vad-threshold").value),
      min_silence_duration_ms: Math.round(Number($("min-silence").value)),
      speech_pad_ms: 30,
    },
    streaming_params: {
      encoding: "pcm_s16le",
      sample_rate: RATE,
      enable_partial_transcripts: $("partials").checked,
      partial_transcript_interval_s: Number($("partial-interval").value),
    },
    whisper_params: whisper,
  };
}

function connect(current) {
  const key = $("api-key").value.trim();
  let url = wsBase() + config.websocket_path;
  let protocols = [];
  if (key && TOKEN.test(key)) protocols = ["api-key", key]; // stays out of URLs and access logs
  else if (key) url += "?api_key=" + encodeURIComponent(key);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    let opened = false;
    ws.onopen = () => {
      opened = true;
      resolve(ws);
    };
    ws.onmessage = (event) => onMessage(current, event);
    ws.onclose = (event) => {
      if (!opened) {
        reject(
          new Error(
            config.api_key_required
              ? "The server refused the connection: the API key is wrong or missing."
              : `Could not connect to the server at ${wsBase()} (is it still running?).`,
          ),
        );
      } else onClose(current, event);
    };
  });
}

async function start(file) {
  if (run) return;
  clearError();
  if (!checkSettings(true)) return;
  if (config.api_key_required && !$("api-key").value.trim()) {
    showError("This server needs an API key: enter it under Settings, then press Start again.");
    $("api-key").focus();
    return;
  }
  const current = { sent: 0, sendTimes: [], lastFinal: -1, errorShown: false, file: !!file };
  run = current;
  page.runs += 1;
  setState("connecting", file ? `reading ${file.name}…` : "connecting…");
  try {
    current.ctx = new AudioContext();
    await current.ctx.audioWorklet.addModule("capture-worklet.js");
    if (file) {
      const buffer = await current.ctx.decodeAudioData(await file.arrayBuffer());
      current.source = new AudioBufferSourceNode(current.ctx, { buffer });
    } else {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error("This browser gives no microphone access here.");
      current.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      current.source = current.ctx.createMediaStreamSource(current.media);
    }
    current.ws = await connect(current);
    current.ws.send(JSON.stringify(metadata()));
    current.node = new AudioWorkletNode(current.ctx, "pcm16-capture", { outputChannelCount: [1] });
    current.node.port.onmessage = (event) => onAudio(current, event.data);
    current.source.connect(current.node);
    current.node.connect(current.ctx.destination); // it outputs silence; connected so the graph pulls it
    if (file) {
      current.source.connect(current.ctx.destination); // hear the file as it is transcribed
      current.source.onended = () => stop();
      current.source.start();
    }
    await current.ctx.resume();
    $("placeholder").hidden = true;
    setState("running", file ? `transcribing ${file.name}` : "listening");
  } catch (err) {
    showError(describe(err));
    teardown(current);
    setState("idle", "ready");
  }
}

function describe(err) {
  if (err?.name === "NotAllowedError") return "Microphone access was denied: allow it for this page and try again.";
  if (err?.name === "NotFoundError") return "No microphone found. Use “Transcribe a file…” instead.";
  if (err?.name === "EncodingError") return "This file could not be decoded as audio.";
  return err?.message || String(err);
}

function onAudio(current, data) {
  if (data.flushed) {
    if (current.ws?.readyState === WebSocket.OPEN) current.ws.send(JSON.stringify({ type: "end_audio" }));
    return;
  }
  if (current.ws?.readyState !== WebSocket.OPEN || current.stopped) return;
  current.ws.send(data.pcm);
  current.sent += data.pcm.byteLength / 2;
  current.sendTimes.push([current.sent / RATE, performance.now()]);
  page.audioSentS = current.sent / RATE;
  $("clock").textContent = `${page.audioSentS.toFixed(1)} s`;
  const db = 20 * Math.log10(Math.max(data.rms, 1e-6));
  const level = $("level");
  level.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  level.classList.toggle("hot", data.peak > 0.97);
}

function stop() {
  const current = run;
  if (!current || current.stopped) return;
  current.stopped = true;
  setState("finishing", "finishing…");
  current.media?.getTracks().forEach((t) => t.stop());
  try {
    current.source.onended = null;
    current.source.disconnect();
    if (current.file) current.source.stop();
  } catch {
    // already stopped
  }
  current.node?.port.postMessage("flush"); // the worklet sends its last frame, then `flushed` -> end_audio
  $("level").style.width = "0%";
}

function teardown(current) {
  current.stopped = true;
  current.media?.getTracks().forEach((t) => t.stop());
  if (current.ctx && current.ctx.state !== "closed") current.ctx.close().catch(() => {});
  if (current.ws && current.ws.readyState <= WebSocket.OPEN) current.ws.close();
  if (run === current) run = null;
  $("level").style.width = "0%";
}

// Wall-clock time when the audio at `audioS` seconds of the stream was sent.
function sentAt(current, audioS) {
  const times = current.sendTimes;
  let lo = 0, hi = times.length - 1;
  if (hi < 0) return null;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (times[mid][0] < audioS) lo = mid + 1;
    else hi = mid;
  }
  return times[lo][1];
}

function fmt(s) {
  return `${Number(s).toFixed(2)}`;
}

function onMessage(current, event) {
  if (typeof event.data !== "string") return;
  let msg;
  try {
    msg = JSON.parse(event.data);
  } catch {
    return;
  }
  const now = performance.now();
  const entry = { t: now, type: msg.type };
  page.log.push(entry);
  if (msg.type === "transcription") {
    Object.assign(entry, { final: msg.is_final, num: msg.transcription_num, text: msg.transcript || "" });
    if (msg.is_final) addFinal(current, msg, now, entry);
    else if (msg.transcription_num > current.lastFinal) {
      const el = $("partial");
      el.textContent = msg.transcript || "";
      el.dataset.num = msg.transcription_num;
    }
  } else if (msg.type === "error") {
    const body = msg.body || {};
    const lead = ERROR_WORDS[body.error_type] || "Error from the server";
    showError(`${lead}: ${body.message || "no details"}${body.recoverable ? " (the stream goes on)" : ""}`);
  } else if (msg.type === "end_audio" && msg.body?.status === "finished") {
    setState("finished", "finished");
  }
}

function addFinal(current, msg, now, entry) {
  current.lastFinal = Math.max(current.lastFinal, msg.transcription_num);
  const partial = $("partial");
  if (Number(partial.dataset.num) <= msg.transcription_num) partial.textContent = "";
  const text = (msg.transcript || "").trim();
  if (!text) return;
  const segs = msg.segments || [];
  const begin = segs.length ? segs[0].start_time : 0;
  const end = segs.length ? segs[segs.length - 1].end_time : msg.audio_length_sec;
  const sent = sentAt(current, end);
  const latency = sent === null ? null : Math.max(0, now - sent) / 1000;
  entry.latency = latency;
  const li = document.createElement("li");
  li.className = "final";
  const p = document.createElement("span");
  p.className = "text";
  p.textContent = text;
  const meta = document.createElement("span");
  meta.className = "meta";
  const lang = msg.language_code || "?";
  const prob = msg.language_prob == null ? "" : ` ${Math.round(msg.language_prob * 100)}%`;
  for (const [cls, label, title] of [
    ["lang", `${lang}${prob}`, "language (detection confidence)"],
    ["span", `${fmt(begin)}–${fmt(end)} s`, "time span in the stream"],
    ["latency", latency === null ? "" : `latency ${latency.toFixed(2)} s`, "end of speech (the last segment's end) → final shown"],
  ]) {
    if (!label) continue;
    const tag = document.createElement("span");
    tag.className = cls;
    tag.textContent = label;
    tag.title = title;
    meta.append(tag);
  }
  li.append(p, meta);
  $("finals").append(li);
  li.scrollIntoView({ block: "nearest" });
  updateTools();
}

function onClose(current, event) {
  if (event.code !== 1000 && !current.errorShown) {
    const why = event.reason ? `: ${event.reason}` : "";
    showError(
      event.code === 1006
        ? "The connection to the server was lost."
        : `The server closed the stream (code ${event.code}${why}).`,
    );
  }
  const finished = page.state === "finished";
  teardown(current);
  setState(finished || event.code === 1000 ? "finished" : "idle", finished || event.code === 1000 ? "finished" : "stopped");
}

async function init() {
  $("start").addEventListener("click", () => start(null));
  $("stop").addEventListener("click", () => stop());
  $("copy").addEventListener("click", () => copyTranscript());
  $("download").addEventListener("click", () => downloadTranscript());
  $("clear").addEventListener("click", () => clearTranscript());
  $("settings").addEventListener("input", () => checkSettings(false));
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) start(file);
  });
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) config = { ...config, ...(await response.json()) };
  } catch {
    // the defaults
  }
  $("key-row").hidden = !config.api_key_required;
  $("ws-url").textContent = wsBase() + config.websocket_path;
  if (config.model) {
    const named = `Whisper ${config.model} on ${config.engine}`;
    $("model").textContent = named;
    $("model").hidden = false;
    $("model-footer").textContent = ` Model: ${named}.`;
  }
  if (!window.isSecureContext) {
    // Start and the file button stay disabled: say so in the status, not "ready"
    setState("insecure", "unavailable on an insecure page");
    showError(
      `Browsers allow the microphone and audio processing only on secure pages: open this page as ` +
        `http://localhost:${location.port || 80}/ on the server's machine, or serve it over https.`,
    );
    return;
  }
  setState("idle", "ready");
}

init();
