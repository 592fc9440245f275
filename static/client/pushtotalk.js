// The push-to-talk button: hold to record, release to send; a short tap latches it instead
// (tap again to send), which suits phones; Space or Enter held on the focused button too.

import { Recorder } from "./recorder.js";

const TAP_MS = 350;

export class PushToTalk {
  constructor(button, { canStart, onStart, onRecorded, onError, onChange }) {
    this.canStart = canStart; // () => true when a recording may begin (else it says why)
    this.onStart = onStart;
    this.onRecorded = onRecorded; // (blob) => send it
    this.onError = onError;
    this.onChange = onChange;
    this.#reset();
    this.#bind(button);
  }

  /** "idle", "recording" (held) or "latched" (tapped: tap again to send). */
  get state() {
    if (!this.starting) return "idle";
    return this.latched ? "latched" : "recording";
  }

  #bind(button) {
    button.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      button.setPointerCapture?.(event.pointerId);
      if (this.latched) this.#finish();
      else this.#begin();
    });
    button.addEventListener("pointerup", () => {
      if (!this.starting || this.latched) return;
      if (performance.now() - this.startedAt < TAP_MS) {
        this.latched = true;
        this.onChange();
      } else {
        this.#finish();
      }
    });
    button.addEventListener("keydown", (event) => {
      if ((event.key === " " || event.key === "Enter") && !event.repeat) {
        event.preventDefault();
        this.#begin();
      }
    });
    button.addEventListener("keyup", (event) => {
      if (event.key === " " || event.key === "Enter") this.#finish();
    });
    button.addEventListener("contextmenu", (event) => event.preventDefault());
  }

  #begin() {
    if (this.starting || !this.canStart()) return;
    this.startedAt = performance.now();
    this.latched = false;
    this.starting = Recorder.start().then(
      (recorder) => (this.recorder = recorder),
      () => {
        this.onError("client.micDenied");
        this.#reset();
        this.onChange();
      },
    );
    this.onStart();
    this.onChange();
  }

  async #finish() {
    const starting = this.starting;
    if (!starting) return;
    await starting;
    const recorder = this.recorder;
    this.#reset();
    this.onChange();
    if (!recorder) return;
    const { blob } = await recorder.stop();
    this.onRecorded(blob);
  }

  #reset() {
    this.recorder = null;
    this.starting = null;
    this.startedAt = 0;
    this.latched = false;
  }
}
