// The conversation as chat bubbles: the person's turns (typed, spoken live with interim text,
// or recorded) and the avatar's replies (streamed text, replayable speech, video).

import { t, translate, translateError } from "./i18n.js";

export class ChatView {
  constructor(list, { onWatch }) {
    this.list = list;
    this.onWatch = onWatch; // (videoUrl) => play it on the stage
  }

  clear() {
    for (const audio of this.list.querySelectorAll("audio.user-audio")) URL.revokeObjectURL(audio.src);
    this.list.replaceChildren();
  }

  /** The session ended and its files with it: replies of earlier sessions no longer play. */
  expire() {
    for (const item of this.list.querySelectorAll("li.msg.avatar:not(.expired)")) {
      item.classList.add("expired");
      for (const button of item.querySelectorAll("button.play, button.watch")) button.disabled = true;
      item.querySelector("audio")?.pause();
    }
  }

  note(key, params, kind = "note") {
    const item = element("li", `note ${kind}`);
    translate(item, key, params);
    return this.#append(item);
  }

  /** A typed message: final at once. */
  userText(text) {
    const item = this.#bubble("user");
    this.setText(item, text);
    item.dataset.final = "true";
    return item;
  }

  /** A recorded utterance waiting for its transcript; its own recording plays from the blob. */
  userRecording(blob) {
    const item = this.#bubble("user");
    item.dataset.final = "false";
    item.classList.add("pending");
    translate(item.querySelector(".text"), "voiceMessage");
    this.setStatus(item, "transcribing");
    this.#attachAudio(item, URL.createObjectURL(blob), "user-audio");
    return item;
  }

  /** The bubble of a live utterance, made on its first interim text. */
  utterance(utteranceId) {
    let item = this.list.querySelector(`li[data-utterance="${CSS.escape(utteranceId)}"]`);
    if (!item) {
      item = this.#bubble("user");
      item.dataset.utterance = utteranceId;
      item.dataset.final = "false";
      item.classList.add("interim");
    }
    return item;
  }

  /** Live utterances that will get no final: those before `item` (finals come in order), or
   * all of them when recognition failed or the session ended. */
  settleInterims(reason, item = null) {
    for (const interim of this.list.querySelectorAll("li.msg.user.interim")) {
      if (item && !(interim.compareDocumentPosition(item) & Node.DOCUMENT_POSITION_FOLLOWING)) continue;
      if (item) interim.remove();
      else this.failUser(interim, reason);
    }
  }

  finishUser(item, text, messageId) {
    item.classList.remove("interim", "pending");
    item.dataset.final = "true";
    if (messageId != null) item.dataset.messageId = String(messageId);
    this.setText(item, text);
    this.setStatus(item, "");
  }

  /** The turn did not go through; `reason` is an error code or an interface text key. */
  failUser(item, reason) {
    item.classList.remove("interim", "pending");
    item.classList.add("failed");
    item.dataset.final = "true";
    this.setStatus(item, reason);
  }

  /** The avatar's bubble for a reply message, made on its first text. */
  reply(messageId) {
    let item = this.list.querySelector(`li.avatar[data-message-id="${messageId}"]`);
    if (!item) {
      item = this.#bubble("avatar");
      item.dataset.messageId = String(messageId);
      item.dataset.final = "false";
      item.classList.add("streaming");
    }
    return item;
  }

  greeting(text) {
    const item = this.#bubble("avatar");
    item.classList.add("greeting");
    this.setText(item, text);
    return item;
  }

  appendText(item, delta) {
    const p = item.querySelector(".text");
    p.textContent += delta;
    this.#scroll();
  }

  finishReply(item, text, interrupted) {
    item.classList.remove("streaming");
    item.dataset.final = "true";
    if (text) this.setText(item, text);
    if (interrupted) {
      item.classList.add("interrupted");
      this.setStatus(item, "interrupted");
    }
  }

  /** The reply's speech, playable again from the bubble; returns the <audio>. */
  replyAudio(item, url, durationMs) {
    const audio = this.#attachAudio(item, url, "reply-audio");
    if (durationMs > 0) item.querySelector(".play .time").textContent = clock(durationMs / 1000);
    return audio;
  }

  replyVideo(item, url) {
    let button = item.querySelector(".watch");
    if (!button) {
      button = element("button", "watch chip");
      button.type = "button";
      translate(button, "watchVideo");
      item.querySelector(".meta").append(button);
    }
    button.onclick = () => this.onWatch(url);
  }

  setText(item, text) {
    const p = item.querySelector(".text");
    delete p.dataset.i18n;
    p.textContent = text;
    this.#scroll();
  }

  /** A line under the bubble's text: an interface text key or an error code ("" hides it). */
  setStatus(item, key) {
    const status = item.querySelector(".status");
    if (key) translateError(status, key);
    status.hidden = !key;
  }

  #bubble(role) {
    const item = element("li", `msg ${role}`);
    item.dataset.role = role;
    const bubble = element("div", "bubble");
    const meta = element("div", "meta");
    const status = element("span", "status");
    status.hidden = true;
    meta.append(status);
    bubble.append(element("p", "text"), meta);
    item.append(bubble);
    return this.#append(item);
  }

  #attachAudio(item, url, kind) {
    let audio = item.querySelector("audio");
    if (!audio) {
      audio = element("audio", kind);
      audio.preload = "auto";
      const button = element("button", "play chip");
      button.type = "button";
      button.setAttribute("aria-label", t("replay"));
      button.append(element("span", "icon"), element("span", "time"));
      button.onclick = () => (audio.paused ? audio.play().catch(() => {}) : audio.pause());
      const sync = () => {
        item.dataset.playing = String(!audio.paused && !audio.ended);
        button.classList.toggle("playing", item.dataset.playing === "true");
      };
      for (const name of ["play", "pause", "ended"]) audio.addEventListener(name, sync);
      audio.addEventListener("loadedmetadata", () => {
        button.querySelector(".time").textContent = clock(audio.duration);
      });
      item.querySelector(".meta").prepend(button, audio);
    }
    audio.src = url;
    return audio;
  }

  #append(item) {
    this.list.append(item);
    this.#scroll();
    return item;
  }

  #scroll() {
    this.list.scrollTop = this.list.scrollHeight;
  }
}

function element(tag, className) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  return el;
}

function clock(seconds) {
  if (!Number.isFinite(seconds)) return "";
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}
