// The session WebSocket of docs/protocol.md: connect, heartbeat, reconnect with backoff.
//
// Events of the server arrive through `onEvent(event)`, binary frames through `onBinary`, and
// the connection state through `onState(state, detail)` with state one of
// "connecting", "connected", "reconnecting", "closed".

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
const HEALTHY_AFTER_MS = 10_000; // a connection this old resets the backoff
const INIT_TIMEOUT_MS = 15_000; // no `init` by then: try again
const NO_RECONNECT = new Set([4400, 4401, 4404, 4408]); // refused or timed out: a person decides

export class SessionSocket {
  constructor({ url, onEvent, onBinary, onState, heartbeatS = 30 }) {
    this.url = url; // a function: the URL to (re)connect to, or a promise of it
    this.onEvent = onEvent;
    this.onBinary = onBinary ?? (() => {});
    this.onState = onState;
    this.heartbeatMs = heartbeatS * 1000;
    this.ws = null;
    this.failures = 0;
    this.nextId = 1;
    this.stopped = true;
    this.timers = {};
  }

  /** Connect, and keep reconnecting after drops until close(). */
  open() {
    this.stopped = false;
    this.failures = 0;
    this.#connect("connecting");
  }

  /** Close for good (a new session with other settings, or the page going away). */
  close() {
    this.stopped = true;
    this.#clearTimers();
    this.#drop(1000, "client closed");
  }

  /** Drop the connection and reconnect after the backoff (e.g. after ERR_WEBRTC_FAILED). */
  restart(reason = "restart") {
    if (this.stopped) return;
    this.#clearTimers();
    this.#drop(4000, reason);
    this.#scheduleReconnect();
  }

  /** Reconnect at once (the person pressed "Reconnect"). */
  reconnectNow() {
    this.stopped = false;
    this.#clearTimers();
    this.#drop(4000, "reconnect");
    this.#connect("reconnecting");
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN && this.initialized;
  }

  /** Send one message; returns its id (replies carry it back as `ref`). */
  send(type, fields = {}) {
    if (!this.isOpen) return null;
    const id = `c${this.nextId++}`;
    this.ws.send(JSON.stringify({ type, id, ...fields }));
    return id;
  }

  /** Send without an id (ping, signalling messages that need no correlation). */
  sendPlain(type, fields = {}) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify({ type, ...fields }));
    return true;
  }

  sendBinary(data) {
    if (!this.isOpen) return false;
    this.ws.send(data);
    return true;
  }

  async #connect(state) {
    this.#clearTimers();
    this.initialized = false;
    this.ended = false;
    this.onState(state);
    // `url()` may fetch a ticket first; a newer connect or a close meanwhile wins.
    const attempt = (this.attempt = (this.attempt ?? 0) + 1);
    let url;
    try {
      url = await this.url();
    } catch (err) {
      if (attempt !== this.attempt || this.stopped) return;
      if (NO_RECONNECT.has(err?.closeCode)) {
        this.stopped = true; // refused (no ticket for this person): a person decides
        this.onState("closed", { code: err.closeCode });
      } else {
        this.#scheduleReconnect(); // the web app is unreachable: try again
      }
      return;
    }
    if (attempt !== this.attempt || this.stopped) return;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (message) => this.#receive(ws, message);
    ws.onclose = (event) => this.#closed(ws, event);
    ws.onerror = () => {}; // onclose follows and decides
    this.timers.init = setTimeout(() => this.restart("no init"), INIT_TIMEOUT_MS);
  }

  #receive(ws, message) {
    if (ws !== this.ws) return;
    this.lastSeen = Date.now();
    if (typeof message.data !== "string") {
      this.onBinary(message.data);
      return;
    }
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (event.type === "init") this.#initialized(event);
    if (event.type === "session_ended") this.ended = true;
    this.onEvent(event);
  }

  #initialized(init) {
    clearTimeout(this.timers.init);
    this.initialized = true;
    const interval = init.server_info?.heartbeat_interval_s;
    if (interval > 0) this.heartbeatMs = interval * 1000;
    this.timers.heartbeat = setInterval(() => this.#beat(), this.heartbeatMs);
    this.timers.healthy = setTimeout(() => (this.failures = 0), HEALTHY_AFTER_MS);
    this.onState("connected");
  }

  #beat() {
    // Two beats without any frame from the server: the connection is dead even if TCP says not.
    if (Date.now() - this.lastSeen > 2.5 * this.heartbeatMs) {
      this.restart("heartbeat lost");
      return;
    }
    this.sendPlain("ping", { timestamp: Date.now() });
  }

  #closed(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.#clearTimers();
    if (this.stopped) return;
    if (NO_RECONNECT.has(event.code) || this.ended) {
      this.stopped = true;
      this.onState("closed", { code: event.code });
      return;
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.failures);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.failures += 1;
    this.onState("reconnecting", { inMs: delay });
    this.timers.reconnect = setTimeout(() => this.#connect("reconnecting"), delay);
  }

  #drop(code, reason) {
    const ws = this.ws;
    this.ws = null;
    this.initialized = false;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
  }

  #clearTimers() {
    clearInterval(this.timers.heartbeat);
    clearTimeout(this.timers.healthy);
    clearTimeout(this.timers.reconnect);
    clearTimeout(this.timers.init);
    this.timers = {};
  }
}
