// The web client: settings and the session, and every event of docs/protocol.md turned into what
// the page shows.
//
// State a test (or a curious person) can read lives in data-* attributes: #app[data-connection],
// [data-activity], [data-session], [data-mode]; bubbles li.msg[data-role][data-final];
// #error[data-code]; #render[data-stage][data-progress]; #stage-video[data-source][data-showing].

import { ChatView } from "./chat.js";
import { defaultLanguage, language, setLanguage } from "./i18n.js";
import { LiveTalk } from "./live.js";
import * as page from "./page.js";
import { $ } from "./page.js";
import { SessionSocket } from "./protocol.js";
import { PushToTalk } from "./pushtotalk.js";
import { recorderSupported } from "./recorder.js";
import { VideoStage } from "./video.js";

const app = $("app");
const KEEP_GOING = new Set(["ERR_RATE_LIMITED", "ERR_STATE", "ERR_BAD_MESSAGE"]); // turn unaffected

const settings = {
  avatar: localStorage.getItem("echo.avatar") || "",
  mode: localStorage.getItem("echo.mode") === "video" ? "video" : "voice",
  lang: localStorage.getItem("echo.lang") || "",
};

const state = {
  avatars: [],
  init: null,
  sessionKey: "", // avatar|mode|lang of the conversation on the page
  connection: "idle",
  pendingUploads: [], // user bubbles waiting for their transcript
  speech: new Map(), // request_id -> { item, transport }
  speakingLive: false, // reply speech on the WebRTC track
  playing: null, // a reply <audio> playing from its URL
  producing: false, // the server is producing a reply: `interrupt` has something to stop
  render: null, // task_id of the video being rendered
  renders: new Map(), // task_id -> reply bubble
  interruptRefs: new Set(),
};

const chat = new ChatView($("messages"), { onWatch: (url) => watchVideo(url) });
const video = new VideoStage($("stage-video"), $("stage-idle"), {
  onPlaying: refresh,
  onIdle: refresh,
});
const socket = new SessionSocket({
  url: sessionUrl,
  onEvent: (event) => handle(event),
  onState: (s, detail) => connectionChanged(s, detail),
  heartbeatS: Number(app.dataset.heartbeat) || 30,
});
const live = new LiveTalk({
  socket,
  remoteAudio: $("remote-audio"),
  iceServers: () => state.init?.server_info?.ice_servers ?? [],
  language: () => settings.lang || state.init?.language || "en-US",
  onChange: refresh,
  onError: (code) => page.showError(code),
  onFailed: () => socket.restart("webrtc failed"),
});
const ptt = new PushToTalk($("ptt-button"), {
  canStart: canRecord,
  onStart: stopPlayback,
  onRecorded: sendRecording,
  onError: (code) => page.showError(code),
  onChange: refresh,
});

// --- start-up and settings -----------------------------------------------------------------

function main() {
  setLanguage(defaultLanguage());
  bindControls();
  page.renderSettings(settings);
  page.renderConnection("idle");
  refresh();
  loadAvatars();
  window.addEventListener("pagehide", () => socket.close());
  window.addEventListener("pageshow", (event) => event.persisted && socket.open());
}

async function loadAvatars() {
  try {
    const response = await fetch(app.dataset.avatarsUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.avatars = (await response.json()).avatars;
  } catch {
    setTimeout(loadAvatars, 3000);
    return;
  }
  if (!state.avatars.some((a) => a.slug === settings.avatar)) {
    settings.avatar = state.avatars[0]?.slug ?? "";
  }
  renderGallery();
  socket.open();
}

/** The WebSocket URL of a new session, with a fresh ticket from the web app (docs/protocol.md). */
async function sessionUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ mode: settings.mode });
  if (settings.avatar) query.set("avatar", settings.avatar);
  if (settings.lang) query.set("lang", settings.lang);
  const response = await fetch(app.dataset.ticketsUrl, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ mode: settings.mode, avatar: settings.avatar }),
    signal: AbortSignal.timeout(10_000), // a web app that does not answer: try again later
  });
  if (response.status === 401) throw Object.assign(new Error("no ticket"), { closeCode: 4401 });
  if (response.status === 404) throw Object.assign(new Error("no avatar"), { closeCode: 4404 });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const ticket = await response.json();
  query.set("ticket", ticket.ticket);
  query.set("avatar", ticket.avatar);
  return `${scheme}://${location.host}${app.dataset.wsPath}?${query}`;
}

/** New settings: a new session (the server takes avatar, mode and language at the handshake). */
function changeSettings(changes) {
  Object.assign(settings, changes);
  localStorage.setItem("echo.avatar", settings.avatar);
  localStorage.setItem("echo.mode", settings.mode);
  localStorage.setItem("echo.lang", settings.lang);
  live.stop();
  socket.close();
  teardownSession();
  page.renderSettings(settings);
  renderGallery();
  socket.open();
}

function renderGallery() {
  page.renderGallery(state.avatars, settings.avatar, (slug) => {
    if (slug !== settings.avatar) changeSettings({ avatar: slug });
  });
}

function bindControls() {
  $("ui-lang").onclick = () => setLanguage(language() === "zh" ? "en" : "zh");
  $("reconnect").onclick = () => socket.reconnectNow();
  $("error-close").onclick = () => page.hideError();
  for (const button of $("mode-switch").querySelectorAll("button")) {
    button.onclick = () => {
      if (settings.mode !== button.dataset.mode) changeSettings({ mode: button.dataset.mode });
    };
  }
  $("lang-select").onchange = (event) => changeSettings({ lang: event.target.value });
  $("text-form").onsubmit = (event) => {
    event.preventDefault();
    sendText();
  };
  $("live-button").onclick = () => (live.wanted ? stopLive() : live.start());
  $("interrupt-button").onclick = () => interrupt();
  // One medium at a time: a reply played again pauses the one playing.
  document.addEventListener("play", (event) => mediaStarted(event.target), true);
  for (const name of ["pause", "ended"]) {
    document.addEventListener(name, (event) => mediaStopped(event.target), true);
  }
}

// --- the session's events ------------------------------------------------------------------

const handlers = {
  init: onInit,
  pong: (e) => (app.dataset.latencyMs = String(Date.now() - Number(e.timestamp))),
  answer: (e) => live.answer(e),
  ice_candidate: (e) => live.candidate(e),
  connected: () => live.connected(),
  ready: () => live.ready(),
  asr_interim: onInterim,
  asr_result: onTranscript,
  text_delta: onTextDelta,
  text_response: onTextResponse,
  tts_start: onSpeechStart,
  tts_complete: onSpeechComplete,
  turn_progress: onTurnProgress,
  video_queued: onVideoQueued,
  video_progress: (e) => e.task_id === state.render && page.showRender(e.progress, e.stage),
  video_segment: (e) => e.task_id === state.render && video.segment(e),
  video_ready: onVideoReady,
  session_ended: onSessionEnded,
  error: onError,
};

function handle(event) {
  handlers[event.type]?.(event);
  refresh();
}

function onInit(init) {
  state.init = init;
  app.dataset.session = init.session_id;
  if (settings.avatar !== init.avatar.slug) {
    settings.avatar = init.avatar.slug; // the server chose (the default, or ours was gone)
    renderGallery();
  }
  const key = `${settings.avatar}|${settings.mode}|${settings.lang}`;
  chat.expire(); // the files of earlier sessions are deleted with them
  if (key === state.sessionKey) {
    chat.note("reconnected");
  } else {
    state.sessionKey = key;
    chat.clear();
    chat.note("newSession", { name: init.avatar.name }, "divider");
    if (init.avatar.greeting) chat.greeting(init.avatar.greeting);
  }
  page.showAvatar(init.avatar);
  video.setIdle(init.mode === "video" ? init.avatar.idle_video_url : null);
  state.asrGuesses = !recognised(init);
  page.showAsrNotice(state.asrGuesses ? init.language : null);
  page.setCaption("", false);
  if (page.errorShown() === "ERR_WEBRTC_FAILED") page.hideError(); // "reconnecting…" is over
  live.resume();
}

/** Whether the server's recogniser understands the session's language (it says which it does). */
function recognised(init) {
  const heard = init.server_info?.asr_languages;
  return !heard || heard.includes((init.language || "").split("-")[0].toLowerCase());
}

function onInterim(event) {
  chat.setText(chat.utterance(event.utterance_id), event.text);
  if (!state.asrGuesses) page.setCaption(event.text, false); // no English guesses as captions
}

function onTranscript(event) {
  const upload = event.utterance_id?.startsWith("upload-") && state.pendingUploads.length;
  const item = upload ? state.pendingUploads.shift() : chat.utterance(event.utterance_id);
  chat.finishUser(item, event.text, event.message_id);
  chat.settleInterims(null, item);
  if (state.asrGuesses) chat.setStatus(item, "asrGuess"); // say what the text is
  else page.setCaption(event.text, true);
  newTurn();
}

function onTextDelta(event) {
  state.producing = true;
  chat.appendText(chat.reply(event.message_id), event.delta);
}

function onTextResponse(event) {
  chat.finishReply(chat.reply(event.message_id), event.text, event.interrupted);
  if (event.interrupted) state.producing = false;
}

function onSpeechStart(event) {
  const item = chat.reply(event.message_id);
  item.dataset.transport = event.transport;
  state.speech.set(event.request_id, { item, transport: event.transport });
  if (event.transport === "webrtc") state.speakingLive = true;
}

function onSpeechComplete(event) {
  const speech = state.speech.get(event.request_id);
  state.speech.delete(event.request_id);
  if (speech?.transport === "webrtc") state.speakingLive = false;
  if (settings.mode === "voice" || event.interrupted) state.producing = false;
  if (!speech || !event.audio_url) return;
  const audio = chat.replyAudio(speech.item, event.audio_url, event.duration_ms);
  // Speech that came only as a URL is played now; WebRTC speech was heard already, and in video
  // mode the video carries it.
  if (speech.transport === "url" && settings.mode === "voice") audio.play().catch(() => {});
}

function onTurnProgress(event) {
  if (event.state === "redelivered" && event.reply_message_id) {
    chat.setText(chat.reply(event.reply_message_id), ""); // its deltas start again
  }
  const item = state.pendingUploads[0];
  if (item && event.step === "transcribe" && event.state !== "done") {
    chat.setStatus(item, "step.transcribe");
  }
}

function onVideoQueued(event) {
  state.render = event.task_id;
  state.renders.set(event.task_id, chat.reply(event.message_id));
  video.begin(event.task_id);
  page.showRender(0, "queued", event.position);
}

function onVideoReady(event) {
  const item = state.renders.get(event.task_id);
  if (item) chat.replyVideo(item, event.video_url);
  if (event.task_id !== state.render) return; // superseded by a newer turn
  video.ready(event);
  page.showRender(100, "done");
  state.render = null;
  state.producing = false;
  setTimeout(() => state.render || page.hideRender(), 1500);
}

function onSessionEnded() {
  teardownSession();
  chat.note("client.sessionEnded");
}

function onError(event) {
  if (event.code === "ERR_STATE" && state.interruptRefs.has(event.ref)) return;
  page.showError(event.code, { detail: event.message });
  if (event.code === "ERR_WEBRTC_FAILED") {
    live.failed();
    return;
  }
  if (["ERR_AUDIO_INVALID", "ERR_TOO_LARGE", "ERR_ASR_FAILED"].includes(event.code)) {
    const item = state.pendingUploads.shift();
    if (item) chat.failUser(item, event.code);
    else chat.settleInterims(event.code);
  }
  if (["ERR_RENDER_FAILED", "ERR_BUSY"].includes(event.code)) {
    state.render = null;
    page.hideRender();
  }
  if (!KEEP_GOING.has(event.code)) state.producing = false;
}

// --- connection ----------------------------------------------------------------------------

function connectionChanged(s, detail = {}) {
  state.connection = s;
  page.renderConnection(s, detail);
  if (s !== "connected") teardownSession();
  if (s === "closed" && detail.code === 4404 && settings.avatar) {
    settings.avatar = ""; // the avatar went away: the server's default instead
    socket.open();
  } else if (s === "closed" && detail.code === 4401) {
    page.showError("ERR_AUTH", { sticky: true });
    $("error-login").hidden = app.dataset.access !== "login"; // the site's login page
  }
  refresh();
}

/** Everything tied to the session that just ended (a reconnect starts a new one). */
function teardownSession() {
  live.close();
  for (const item of state.pendingUploads) chat.failUser(item, "conn.closed");
  state.pendingUploads = [];
  chat.settleInterims("conn.closed");
  state.speech.clear();
  state.speakingLive = false;
  state.producing = false;
  state.render = null;
  page.hideRender();
}

function stopLive() {
  live.stop();
  page.setCaption("", false);
}

// --- turns: text, recordings, interrupting -------------------------------------------------

function sendText() {
  const input = $("text-input");
  const text = input.value.trim();
  if (!text) return;
  if (!socket.isOpen) {
    page.showError("client.notConnected");
    return;
  }
  socket.send("text_message", { text });
  chat.userText(text);
  page.setCaption("", false);
  input.value = "";
  newTurn();
  refresh();
}

function canRecord() {
  if (!socket.isOpen) page.showError("client.notConnected");
  else if (!recorderSupported()) page.showError("client.noRecorder");
  else return true;
  return false;
}

async function sendRecording(blob) {
  const limit = state.init?.server_info?.max_upload_bytes ?? Infinity;
  if (blob.size > limit) {
    page.showError("ERR_TOO_LARGE");
    return;
  }
  const item = chat.userRecording(blob);
  if (!socket.sendBinary(await blob.arrayBuffer())) {
    chat.failUser(item, "client.notConnected");
    return;
  }
  state.pendingUploads.push(item);
  newTurn();
  refresh();
}

/** A new turn of the person supersedes whatever the avatar was still saying or showing. */
function newTurn() {
  stopPlayback();
  state.producing = true;
  if (settings.mode === "video") {
    video.stop();
    state.render = null;
    page.hideRender();
  }
}

function interrupt() {
  if (state.producing) state.interruptRefs.add(socket.send("interrupt"));
  for (const item of state.pendingUploads) chat.failUser(item, "interrupted");
  state.pendingUploads = [];
  state.producing = false;
  state.speakingLive = false;
  state.render = null;
  stopPlayback();
  video.stop();
  page.hideRender();
  refresh();
}

// --- playback ------------------------------------------------------------------------------

function stopPlayback() {
  for (const media of document.querySelectorAll(".messages audio")) media.pause();
}

function watchVideo(url) {
  stopPlayback();
  video.playWhole(url);
}

function mediaStarted(media) {
  if (!(media instanceof HTMLMediaElement) || media.id === "remote-audio") return;
  for (const other of document.querySelectorAll("audio, video")) {
    if (other !== media && other.id !== "remote-audio" && !other.paused) other.pause();
  }
  if (media.classList.contains("reply-audio")) state.playing = media;
  refresh();
}

function mediaStopped(media) {
  if (media === state.playing) state.playing = null;
  refresh();
}

// --- what the page shows -------------------------------------------------------------------

function refresh() {
  page.showActivity(activity());
  page.renderTalkButtons({
    live: { wanted: live.wanted, connecting: live.connecting },
    ptt: ptt.state,
    usable: state.connection === "connected",
  });
}

function activity() {
  if (ptt.state !== "idle") return "recording";
  if (state.speakingLive || state.playing) return "speaking";
  if (video.isPlaying) return "playing";
  if (state.render) return "rendering";
  if (state.producing) return "thinking";
  if (live.span) return "listening";
  return "idle";
}

window.echo = { state, settings, socket, live }; // for a look from the browser's console
main();
