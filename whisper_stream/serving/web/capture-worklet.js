// AudioWorklet: mono capture -> low-pass + resample to 16 kHz -> pcm_s16le frames of 512 samples (32 ms),
// posted to the page with their level. Runs on the audio thread; the page only forwards the frames.

const OUT_RATE = 16000;
const FRAME = 512;
const ZEROS = 16; // zero crossings of the windowed-sinc kernel on each side
const TABLE_STEPS = 512; // kernel samples per input sample

class Resampler {
  // Band-limited resampling: each output sample is the input convolved with a Kaiser-windowed sinc
  // (cutoff 0.92 x the output Nyquist) centred on its fractional input position.
  constructor(inRate, outRate) {
    this.step = inRate / outRate; // input samples per output sample
    this.passthrough = inRate === outRate;
    const cutoff = 0.92 * 0.5 * Math.min(1, outRate / inRate); // cycles per input sample
    this.half = Math.ceil(ZEROS / (2 * cutoff)); // kernel half-width in input samples
    const n = 2 * this.half * TABLE_STEPS + 1;
    this.table = new Float32Array(n + 1);
    const beta = 8.0;
    const i0 = (x) => {
      let sum = 1, term = 1;
      for (let k = 1; k < 30; k++) {
        term *= (x / (2 * k)) ** 2;
        sum += term;
      }
      return sum;
    };
    for (let i = 0; i < n; i++) {
      const t = i / TABLE_STEPS - this.half;
      const x = 2 * cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const r = t / this.half;
      const win = Math.abs(r) <= 1 ? i0(beta * Math.sqrt(1 - r * r)) / i0(beta) : 0;
      this.table[i] = 2 * cutoff * sinc * win;
    }
    this.buf = new Float32Array(0); // input not yet consumed, buf[0] is input sample number `base`
    this.base = 0;
    this.pos = 0; // input position (fractional) of the next output sample
  }

  push(input) {
    if (this.passthrough) return Float32Array.from(input);
    const merged = new Float32Array(this.buf.length + input.length);
    merged.set(this.buf);
    merged.set(input, this.buf.length);
    this.buf = merged;
    const end = this.base + merged.length; // first input sample we do not have yet
    const out = [];
    const { half, table } = this;
    while (this.pos + half < end) {
      const centre = this.pos - this.base;
      const first = Math.max(0, Math.ceil(centre - half));
      const last = Math.min(merged.length - 1, Math.floor(centre + half));
      let acc = 0;
      for (let k = first; k <= last; k++) {
        const f = (k - centre + half) * TABLE_STEPS;
        const j = f | 0;
        acc += merged[k] * (table[j] + (table[j + 1] - table[j]) * (f - j));
      }
      out.push(acc);
      this.pos += this.step;
    }
    const keep = Math.max(0, Math.floor(this.pos - half) - this.base);
    if (keep > 0) {
      this.buf = merged.slice(keep);
      this.base += keep;
    }
    return Float32Array.from(out);
  }
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, OUT_RATE);
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
    this.peak = 0;
    this.sumSquares = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        // the last partial frame, then a marker: the page sends end_audio after it
        if (this.filled > 0) this.post(this.frame.slice(0, this.filled));
        this.filled = 0;
        this.running = false;
        this.port.postMessage({ flushed: true });
      }
    };
  }

  post(pcm) {
    const rms = Math.sqrt(this.sumSquares / Math.max(1, pcm.length));
    this.port.postMessage({ pcm: pcm.buffer, rms, peak: this.peak }, [pcm.buffer]);
    this.peak = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    // downmix to mono
    const mono = new Float32Array(channels[0].length);
    for (const ch of channels) for (let i = 0; i < mono.length; i++) mono[i] += ch[i] / channels.length;
    const out = this.resampler.push(mono);
    for (let i = 0; i < out.length; i++) {
      const s = Math.max(-1, Math.min(1, out[i]));
      this.peak = Math.max(this.peak, Math.abs(s));
      this.sumSquares += s * s;
      this.frame[this.filled++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
      if (this.filled === FRAME) {
        this.post(this.frame);
        this.frame = new Int16Array(FRAME);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
