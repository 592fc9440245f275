// The realtime audio peer: the microphone track out, the avatar's voice track in.
//
// Signalling goes through the session socket: `offer` (with every gathered candidate in the
// SDP, later ones as `ice_candidate`), then the server's `answer`, `ice_candidate`s and
// `connected`. The peer lives as long as the session; the microphone track can be swapped in
// and out (replaceTrack) without negotiating again.
//
// The offer asks for Opus DTX (`usedtx=1`), and the server's answer does too: in silence each
// side sends a packet per ~400 ms instead of one per 20 ms, which is most of what an idle
// session costs the server.

const GATHER_TIMEOUT_MS = 2000;
const CONNECT_TIMEOUT_MS = 20_000;

export class LivePeer {
  constructor({ iceServers, signal, onRemoteStream, onFailed }) {
    this.signal = signal; // (type, fields) => sends a signalling message
    this.onRemoteStream = onRemoteStream;
    this.onFailed = onFailed;
    this.offerSent = false;
    this.connected = false;
    this.pc = new RTCPeerConnection({ iceServers: iceServers ?? [] });
    this.pc.ontrack = (event) => {
      this.onRemoteStream(event.streams[0] ?? new MediaStream([event.track]));
    };
    this.pc.onicecandidate = (event) => {
      // Candidates found before the offer went out are in its SDP already.
      if (event.candidate && this.offerSent) this.signal("ice_candidate", candidateOf(event));
    };
    this.pc.onconnectionstatechange = () => {
      if (this.pc.connectionState === "failed") this.#fail("peer connection failed");
    };
  }

  /** Offer with the microphone track; resolves once the offer is sent. */
  async start(track) {
    this.sender = this.pc.addTrack(track, new MediaStream([track]));
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gathered(this.pc);
    if (this.closed) return;
    this.signal("offer", { sdp: withDtx(this.pc.localDescription.sdp), sdp_type: "offer" });
    this.offerSent = true;
    this.timeout = setTimeout(() => {
      if (!this.connected) this.#fail("no WebRTC connection in time");
    }, CONNECT_TIMEOUT_MS);
  }

  async answer({ sdp }) {
    if (this.closed) return;
    try {
      await this.pc.setRemoteDescription({ type: "answer", sdp });
    } catch (error) {
      this.#fail(`bad answer: ${error}`);
    }
  }

  async candidate({ candidate, sdpMid, sdpMLineIndex }) {
    if (this.closed || !candidate) return;
    try {
      await this.pc.addIceCandidate({ candidate, sdpMid, sdpMLineIndex });
    } catch {
      // a candidate we cannot use is not a failure of the connection
    }
  }

  markConnected() {
    this.connected = true;
    clearTimeout(this.timeout);
  }

  /** Swap the microphone track (null sends nothing) without renegotiating. */
  async useTrack(track) {
    if (this.sender && !this.closed) await this.sender.replaceTrack(track);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timeout);
    this.pc.close();
  }

  #fail(reason) {
    if (this.closed) return;
    this.close();
    this.onFailed(reason);
  }
}

export function webrtcSupported() {
  return typeof RTCPeerConnection === "function" && !!navigator.mediaDevices?.getUserMedia;
}

function candidateOf(event) {
  const { candidate, sdpMid, sdpMLineIndex } = event.candidate;
  return { candidate, sdpMid, sdpMLineIndex };
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

/** The SDP with `usedtx=1` in the fmtp of every Opus codec (one without an fmtp gets one). */
export function withDtx(sdp) {
  const lines = sdp.split("\r\n");
  const opus = new Set(
    lines
      .map((line) => /^a=rtpmap:(\d+) opus\//i.exec(line))
      .filter(Boolean)
      .map((match) => match[1]),
  );
  const hasFmtp = new Set(
    lines.map((line) => /^a=fmtp:(\d+) /.exec(line)).filter(Boolean).map((match) => match[1]),
  );
  const out = [];
  for (const line of lines) {
    const fmtp = /^a=fmtp:(\d+) /.exec(line);
    out.push(fmtp && opus.has(fmtp[1]) && !line.includes("usedtx=") ? `${line};usedtx=1` : line);
    const rtpmap = /^a=rtpmap:(\d+) /.exec(line);
    if (rtpmap && opus.has(rtpmap[1]) && !hasFmtp.has(rtpmap[1])) {
      out.push(`a=fmtp:${rtpmap[1]} usedtx=1`);
    }
  }
  return out.join("\r\n");
}
