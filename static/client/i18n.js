// Interface text in English and Chinese, and the contract's error codes as short sentences.

const STRINGS = {
  en: {
    tagline: "Talk with an avatar",
    chooseAvatar: "Choose an avatar",
    mode: "Mode",
    modeVoice: "Voice",
    modeVideo: "Video",
    speechLanguage: "Conversation language",
    langAuto: "The avatar's own",
    uiLanguageToggle: "中文",
    uiLanguageLabel: "切换到中文",
    "conn.idle": "Not connected",
    "conn.connecting": "Connecting…",
    "conn.connected": "Connected",
    "conn.reconnecting": "Reconnecting…",
    "conn.reconnectingIn": "Reconnecting in {s} s…",
    "conn.closed": "Disconnected",
    reconnectNow: "Reconnect",
    "activity.idle": "Ready when you are",
    "activity.listening": "Listening…",
    "activity.recording": "Recording…",
    "activity.thinking": "Thinking…",
    "activity.speaking": "Speaking…",
    "activity.rendering": "Making the video…",
    "activity.playing": "Playing the video",
    liveStart: "Talk live",
    liveStop: "Stop talking",
    liveConnecting: "Connecting audio…",
    pttIdle: "Hold to talk",
    pttRecording: "Release to send",
    pttLatched: "Tap to send",
    interrupt: "Interrupt",
    send: "Send",
    placeholder: "Type a message…",
    voiceMessage: "Voice message",
    transcribing: "Transcribing…",
    asrEnglishOnly:
      "Speech recognition here understands English only: spoken {language} comes out as English guesses. Type your messages, or speak English.",
    asrGuess: "English guess",
    "language.zh": "Chinese",
    "language.en": "English",
    interrupted: "interrupted",
    replay: "Play again",
    watchVideo: "Watch the video",
    newSession: "New conversation with {name}",
    reconnected: "Reconnected — a new session started",
    "stage.queued": "Waiting for a renderer (position {n})",
    "stage.started": "Starting the video",
    "stage.rendering": "Rendering",
    "stage.encoding": "Encoding",
    "stage.done": "Video ready",
    "step.transcribe": "Transcribing…",
    dismiss: "Dismiss",
    logIn: "Log in",
    "client.micDenied": "The microphone could not be opened. Please allow microphone access.",
    "client.noRecorder": "This browser cannot record audio; please type instead.",
    "client.noWebRTC": "Live talk is not available here; use hold-to-talk instead.",
    "client.notConnected": "Not connected yet — please wait a moment.",
    "client.sessionEnded": "The conversation has ended.",
    ERR_BAD_MESSAGE: "The app sent something the server did not understand.",
    ERR_UNKNOWN_TYPE: "The server does not know that request.",
    ERR_STATE: "That cannot be done right now.",
    ERR_AUTH: "You are not allowed to connect. Please sign in again.",
    ERR_AVATAR_NOT_FOUND: "That avatar is no longer available. Please choose another.",
    ERR_MODE_INVALID: "That mode is not supported.",
    ERR_AUDIO_INVALID: "That recording could not be used: it was silent, too short or too long.",
    ERR_TOO_LARGE: "That recording is too large to send.",
    ERR_RATE_LIMITED: "You are going a bit fast. Please wait a moment.",
    ERR_WEBRTC_FAILED: "The live audio connection failed. Reconnecting…",
    ERR_ASR_FAILED: "Sorry, I could not make out what you said.",
    ERR_LLM_FAILED: "The avatar could not come up with a reply. Please try again.",
    ERR_TTS_FAILED: "The avatar's voice failed for this reply.",
    ERR_RENDER_FAILED: "The video for this reply could not be made.",
    ERR_BUSY: "Every video renderer is busy. Please try again shortly.",
    ERR_SESSION_TIMEOUT: "The conversation ended after a long silence.",
    ERR_INTERNAL: "Something went wrong on the server. Please try again.",
    ERR_UNKNOWN: "Something went wrong ({code}).",
  },
  zh: {
    tagline: "和数字人聊天",
    chooseAvatar: "选择一个形象",
    mode: "模式",
    modeVoice: "语音",
    modeVideo: "视频",
    speechLanguage: "对话语言",
    langAuto: "跟随形象",
    uiLanguageToggle: "EN",
    uiLanguageLabel: "Switch to English",
    "conn.idle": "未连接",
    "conn.connecting": "正在连接…",
    "conn.connected": "已连接",
    "conn.reconnecting": "正在重新连接…",
    "conn.reconnectingIn": "{s} 秒后重新连接…",
    "conn.closed": "已断开",
    reconnectNow: "重新连接",
    "activity.idle": "随时可以开始",
    "activity.listening": "正在听…",
    "activity.recording": "正在录音…",
    "activity.thinking": "正在思考…",
    "activity.speaking": "正在说话…",
    "activity.rendering": "正在生成视频…",
    "activity.playing": "正在播放视频",
    liveStart: "实时对话",
    liveStop: "结束对话",
    liveConnecting: "正在连接音频…",
    pttIdle: "按住说话",
    pttRecording: "松开发送",
    pttLatched: "点击发送",
    interrupt: "打断",
    send: "发送",
    placeholder: "输入消息…",
    voiceMessage: "语音消息",
    transcribing: "正在识别…",
    asrEnglishOnly: "这里的语音识别只听得懂英语：说{language}只会得到英语的猜测。请输入文字，或者说英语。",
    asrGuess: "英语猜测",
    "language.zh": "中文",
    "language.en": "英语",
    interrupted: "已打断",
    replay: "重新播放",
    watchVideo: "观看视频",
    newSession: "开始与{name}的新对话",
    reconnected: "已重新连接，开始了新的会话",
    "stage.queued": "等待渲染（排队第 {n} 位）",
    "stage.started": "开始生成视频",
    "stage.rendering": "渲染中",
    "stage.encoding": "编码中",
    "stage.done": "视频已就绪",
    "step.transcribe": "正在识别…",
    dismiss: "关闭",
    logIn: "登录",
    "client.micDenied": "无法打开麦克风，请允许使用麦克风。",
    "client.noRecorder": "此浏览器无法录音，请改用文字。",
    "client.noWebRTC": "这里无法使用实时对话，请改用按住说话。",
    "client.notConnected": "尚未连接，请稍候。",
    "client.sessionEnded": "对话已结束。",
    ERR_BAD_MESSAGE: "应用发送了服务器无法理解的消息。",
    ERR_UNKNOWN_TYPE: "服务器不认识这个请求。",
    ERR_STATE: "现在无法执行这个操作。",
    ERR_AUTH: "没有连接权限，请重新登录。",
    ERR_AVATAR_NOT_FOUND: "这个形象已不可用，请选择其他形象。",
    ERR_MODE_INVALID: "不支持这种模式。",
    ERR_AUDIO_INVALID: "这段录音无法使用：可能是静音、太短或太长。",
    ERR_TOO_LARGE: "录音文件太大，无法发送。",
    ERR_RATE_LIMITED: "操作太频繁了，请稍等片刻。",
    ERR_WEBRTC_FAILED: "实时语音连接失败，正在重新连接…",
    ERR_ASR_FAILED: "抱歉，没有听清你说的话。",
    ERR_LLM_FAILED: "形象暂时无法回答，请再试一次。",
    ERR_TTS_FAILED: "这条回复的语音生成失败了。",
    ERR_RENDER_FAILED: "这条回复的视频生成失败了。",
    ERR_BUSY: "视频渲染全部繁忙，请稍后再试。",
    ERR_SESSION_TIMEOUT: "长时间没有互动，对话已结束。",
    ERR_INTERNAL: "服务器出错了，请再试一次。",
    ERR_UNKNOWN: "出错了（{code}）。",
  },
};

let current = "en";

export function defaultLanguage() {
  const saved = localStorage.getItem("echo.uiLang");
  if (saved && saved in STRINGS) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

export function language() {
  return current;
}

export function setLanguage(lang) {
  current = lang in STRINGS ? lang : "en";
  localStorage.setItem("echo.uiLang", current);
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  applyTo(document);
}

/** Make `el` show the text of `key` now and after every change of language. */
export function translate(el, key, params) {
  el.dataset.i18n = key;
  if (params) el.dataset.i18nParams = JSON.stringify(params);
  else delete el.dataset.i18nParams;
  el.textContent = t(key, params);
}

export function t(key, params = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(params[name] ?? ""));
}

/** Show the short human sentence for an error code of the contract (or a client text key). */
export function translateError(el, code) {
  if (code in STRINGS.en) translate(el, code);
  else translate(el, "ERR_UNKNOWN", { code });
}

/** Fill every element marked data-i18n (text, with data-i18n-params), data-i18n-placeholder,
 * data-i18n-label: the page follows a change of language, bubbles' notes included. */
export function applyTo(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n, el.dataset.i18nParams ? JSON.parse(el.dataset.i18nParams) : {});
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}
