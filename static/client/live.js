// Live talk: the microphone over WebRTC into a recognition span, the avatar's voice back.
//
// The peer is negotiated once per session (offer → answer → connected → ready → asr_start);
// stopping only ends the span and the microphone, so starting again needs no new negotiation.
// When the peer fails the contract wants a new connection: `onFailed` asks for it, and the new
// session's `init` calls `resume()`, which negotiates again.

import { openMicrophone } from "./recorder.js";
import { LivePeer, webrtcSupported } from "./webrtc.js";

const MAX_FAILURES = 3;

export class LiveTalk {
  constructor({ socket, remoteAudio, iceServers, language, onChange, onError, onFailed }) {
    this.socket = socket;
    this.remoteAudio = remoteAudio;
    this.iceServers = iceServers; // () => the session's ICE servers
    this.language = language; // () => the language to recognise
    this.onChange = onChange;
    this.onError = onError; // (code) => shown to the person
    this.onFailed = onFailed; // () => reconnect, the peer failed
    this.wanted = false;
    this.peer = null;
    this.phase = "off"; // off | negotiating | connected | ready
    this.mic = null;
    this.span = false;
    this.opening = null;
    this.failures = 0; // in a row, without reaching `ready`
  }

  /** Waiting for the peer or the microphone while the person wants to talk. */
  get connecting() {
    return this.wanted && this.phase !== "ready";
  }

  start() {
    this.failures = 0;
    if (!webrtcSupported()) {
      this.onError("client.noWebRTC");
      return;
    }
    this.wanted = true;
    this.resume();
  }

  /** Open what is missing (microphone, peer, span) if the person wants to talk. */
  resume() {
    this.onChange();
    if (!this.wanted || !this.socket.isOpen || this.opening) return;
    this.opening = this.#open().finally(() => {
      this.opening = null;
      this.onChange();
    });
  }

  stop() {
    this.wanted = false;
    if (this.span) this.socket.sendPlain("asr_stop");
    this.span = false;
    this.#stopMic();
    this.peer?.useTrack(null);
    this.onChange();
  }

  answer(event) {
    this.peer?.answer(event);
  }

  candidate(event) {
    this.peer?.candidate(event);
  }

  /** The server's `connected`: say we are ready to send and receive. */
  connected() {
    if (!this.peer) return;
    this.peer.markConnected();
    this.phase = "connected";
    this.socket.sendPlain("ready", { direction: "both" });
  }

  /** The server's `ready`: recognition can start. */
  ready() {
    this.phase = "ready";
    this.failures = 0;
    if (this.wanted && this.mic) this.#startSpan();
    this.onChange();
  }

  /** ERR_WEBRTC_FAILED from the server, or the peer failed here: try a new connection, but
   * after a few failures in a row this network will not do; push-to-talk still works. */
  failed() {
    this.close();
    this.failures += 1;
    if (this.wanted && this.failures >= MAX_FAILURES) {
      this.stop();
      this.onError("client.noWebRTC");
    } else if (this.wanted) {
      this.onFailed();
    }
    this.onChange();
  }

  /** The session is gone: so is its peer (the wish to talk stays, for the next session). */
  close() {
    this.peer?.close();
    this.peer = null;
    this.phase = "off";
    this.span = false;
  }

  async #open() {
    try {
      if (!this.mic || this.mic.readyState === "ended") {
        this.mic = (await openMicrophone()).getAudioTracks()[0];
      }
    } catch {
      this.wanted = false;
      this.onError("client.micDenied");
      return;
    }
    if (!this.wanted) {
      this.#stopMic();
    } else if (this.peer) {
      await this.peer.useTrack(this.mic);
      if (this.phase === "ready") this.#startSpan();
    } else {
      await this.#negotiate();
    }
  }

  async #negotiate() {
    this.phase = "negotiating";
    const peer = new LivePeer({
      iceServers: this.iceServers(),
      signal: (type, fields) => this.socket.sendPlain(type, fields),
      onRemoteStream: (stream) => {
        this.remoteAudio.srcObject = stream;
        this.remoteAudio.play().catch(() => {});
      },
      onFailed: () => {
        if (peer !== this.peer) return;
        this.onError("ERR_WEBRTC_FAILED");
        this.failed();
      },
    });
    this.peer = peer;
    await peer.start(this.mic);
  }

  #startSpan() {
    if (this.span) return;
    this.span = true;
    this.socket.send("asr_start", {
      language: this.language(),
      transport: "webrtc",
      format: "pcm16",
      sample_rate: 16000,
    });
  }

  #stopMic() {
    this.mic?.stop();
    this.mic = null;
  }
}
