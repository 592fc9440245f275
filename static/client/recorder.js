// Push-to-talk: records one utterance from the microphone into one file for one binary frame.
// WebM/Opus (or Ogg/Opus) through MediaRecorder; where neither is available (older Safari) the
// samples are captured with Web Audio and sent as a 16 kHz WAV, which the server accepts too.

const TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus"];
const WAV_RATE = 16000;

export function recorderSupported() {
  return !!navigator.mediaDevices?.getUserMedia;
}

/** The microphone for recognition: echo cancellation so the avatar's voice is not heard as the
 * person's, but no noise suppression, which smears speech enough for recognisers to miss words. */
export async function openMicrophone() {
  return navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: true },
  });
}

export class Recorder {
  /** Starts recording at once; `stop()` resolves with { blob, ms }. */
  static async start() {
    const stream = await openMicrophone();
    const type = typeof MediaRecorder === "function" && TYPES.find((t) => MediaRecorder.isTypeSupported(t));
    return type ? new OpusRecorder(stream, type) : new WavRecorder(stream);
  }
}

class OpusRecorder {
  constructor(stream, type) {
    this.stream = stream;
    this.started = performance.now();
    this.chunks = [];
    this.media = new MediaRecorder(stream, { mimeType: type, audioBitsPerSecond: 32000 });
    this.media.ondataavailable = (event) => event.data.size && this.chunks.push(event.data);
    this.media.start();
  }

  stop() {
    return new Promise((resolve) => {
      this.media.onstop = () => {
        stopTracks(this.stream);
        const blob = new Blob(this.chunks, { type: this.media.mimeType });
        resolve({ blob, ms: performance.now() - this.started });
      };
      this.media.stop();
    });
  }

  cancel() {
    this.media.onstop = null;
    if (this.media.state !== "inactive") this.media.stop();
    stopTracks(this.stream);
  }
}

class WavRecorder {
  constructor(stream) {
    this.stream = stream;
    this.started = performance.now();
    this.context = new AudioContext();
    this.samples = [];
    const source = this.context.createMediaStreamSource(stream);
    this.node = this.context.createScriptProcessor(4096, 1, 1);
    this.node.onaudioprocess = (event) => {
      this.samples.push(new Float32Array(event.inputBuffer.getChannelData(0)));
    };
    source.connect(this.node);
    this.node.connect(this.context.destination);
  }

  async stop() {
    const rate = this.context.sampleRate;
    this.cancel();
    const blob = new Blob([wav(resample(concat(this.samples), rate, WAV_RATE), WAV_RATE)], {
      type: "audio/wav",
    });
    return { blob, ms: performance.now() - this.started };
  }

  cancel() {
    this.node.disconnect();
    this.context.close();
    stopTracks(this.stream);
  }
}

function stopTracks(stream) {
  for (const track of stream.getTracks()) track.stop();
}

function concat(parts) {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function resample(samples, from, to) {
  if (from === to) return samples;
  const out = new Float32Array(Math.floor((samples.length * to) / from));
  for (let i = 0; i < out.length; i++) out[i] = samples[Math.floor((i * from) / to)];
  return out;
}

function wav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return view.buffer;
}
