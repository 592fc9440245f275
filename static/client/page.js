// What the page shows outside the bubbles: gallery, settings, connection, talk buttons, the
// stage (avatar, activity, live caption, render progress) and the error line. Texts go through
// translate() so that they follow a change of language.

import { t, translate, translateError } from "./i18n.js";

export const $ = (id) => document.getElementById(id);
const ERROR_SHOW_MS = 9000;
const BUSY = ["thinking", "speaking", "rendering", "playing"];

export function renderGallery(avatars, selected, onPick) {
  const gallery = $("gallery");
  gallery.dataset.count = String(avatars.length);
  gallery.replaceChildren(...avatars.map((avatar) => galleryCard(avatar, selected, onPick)));
}

function galleryCard(avatar, selected, onPick) {
  const card = element("button", "card");
  card.type = "button";
  card.dataset.slug = avatar.slug;
  card.setAttribute("aria-pressed", String(avatar.slug === selected));
  const image = element("img");
  image.src = avatar.image_url;
  image.alt = "";
  card.append(image, element("span", "name", avatar.name));
  card.append(element("span", "persona", personaLine(avatar.persona)));
  card.onclick = () => onPick(avatar.slug);
  const item = element("li");
  item.append(card);
  return item;
}

export function renderSettings({ mode, lang }) {
  $("app").dataset.mode = mode;
  for (const button of $("mode-switch").querySelectorAll("button")) {
    button.setAttribute("aria-checked", String(button.dataset.mode === mode));
  }
  $("lang-select").value = lang;
  $("stage-video").hidden = mode !== "video";
  $("stage-image").hidden = mode === "video";
}

export function renderConnection(state, detail = {}) {
  $("app").dataset.connection = state;
  $("connection").dataset.state = state;
  if (state === "reconnecting" && detail.inMs) {
    translate($("connection-text"), "conn.reconnectingIn", { s: Math.ceil(detail.inMs / 1000) });
  } else {
    translate($("connection-text"), `conn.${state}`);
  }
  $("reconnect").hidden = state !== "closed";
  $("send-button").disabled = state !== "connected";
}

/** live: { wanted, connecting }; ptt: "idle" | "recording" | "latched". */
export function renderTalkButtons({ live, ptt, usable }) {
  const liveButton = $("live-button");
  const liveState = live.wanted ? (live.connecting ? "connecting" : "on") : "off";
  liveButton.dataset.state = liveState;
  translate(liveButton, { off: "liveStart", connecting: "liveConnecting", on: "liveStop" }[liveState]);
  liveButton.setAttribute("aria-pressed", String(live.wanted));
  liveButton.disabled = !usable || ptt !== "idle";
  const pttButton = $("ptt-button");
  pttButton.dataset.state = ptt;
  translate(pttButton, { idle: "pttIdle", recording: "pttRecording", latched: "pttLatched" }[ptt]);
  pttButton.disabled = !usable || live.wanted;
}

export function showAvatar(avatar) {
  $("stage-image").src = avatar.image_url;
  $("stage-video").poster = avatar.image_url;
  $("avatar-name").textContent = avatar.name;
  $("avatar-persona").textContent = personaLine(avatar.persona);
}

/** Say that spoken `language` ("zh-CN") is not understood by the recogniser, or hide it (null). */
export function showAsrNotice(language) {
  const notice = $("asr-notice");
  notice.hidden = !language;
  if (language) {
    const name = `language.${language.split("-")[0].toLowerCase()}`;
    translate(notice, "asrEnglishOnly", { language: t(name) === name ? language : t(name) });
  }
}

export function showActivity(activity) {
  $("app").dataset.activity = activity;
  translate($("activity"), `activity.${activity}`);
  $("interrupt-button").hidden = !BUSY.includes(activity);
}

export function setCaption(text, final) {
  const caption = $("caption");
  caption.textContent = text;
  caption.dataset.final = String(final);
}

export function showRender(progress, stage, position = 0) {
  const render = $("render");
  render.hidden = false;
  render.dataset.stage = stage;
  render.dataset.progress = String(progress);
  render.querySelector(".bar").setAttribute("aria-valuenow", String(progress));
  $("render-fill").style.width = `${progress}%`;
  translate($("render-stage"), `stage.${stage}`, stage === "queued" ? { n: position + 1 } : null);
  $("render-percent").textContent = stage === "queued" ? "" : `${progress}%`;
}

export function hideRender() {
  $("render").hidden = true;
}

let errorTimer = 0;

/** The short sentence for an error code (or a client text key); the server's own words, for
 * whoever looks closer, go to data-detail and the tooltip. */
export function showError(code, { sticky = false, detail = "" } = {}) {
  const box = $("error");
  $("error-login").hidden = true; // shown by the caller when logging in is the way on
  box.dataset.code = code;
  box.dataset.detail = detail;
  box.title = detail;
  translateError($("error-text"), code);
  box.hidden = false;
  clearTimeout(errorTimer);
  if (!sticky) errorTimer = setTimeout(hideError, ERROR_SHOW_MS);
}

export function hideError() {
  $("error").hidden = true;
}

export function errorShown() {
  return $("error").hidden ? "" : $("error").dataset.code;
}

/** The first sentence of a persona: the gallery's one line about the character. */
export function personaLine(persona = "") {
  const match = persona.match(/^.*?(?:[.!?](?=\s|$)|[。！？])/u);
  return (match ? match[0] : persona).trim();
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text) el.textContent = text;
  return el;
}
