// Video mode's player: the pieces of a render (`video_segment`) play in order on one <video>
// as they arrive; the whole video (`video_ready`) continues where the pieces stop, and stays
// on the player afterwards so it can be watched again. The avatar image is the poster.

export class VideoStage {
  constructor(video, { onPlaying, onIdle }) {
    this.video = video;
    this.onPlaying = onPlaying;
    this.onIdle = onIdle;
    this.#reset(null);
    video.addEventListener("ended", () => this.#next());
    video.addEventListener("playing", () => this.onPlaying());
    video.addEventListener("pause", () => {
      if (!video.ended) this.onIdle(); // paused by the person (the end goes through #next)
    });
  }

  /** A new render began: whatever was playing stops. */
  begin(taskId) {
    if (this.taskId === taskId) return;
    this.stop();
    this.#reset(taskId);
  }

  segment({ task_id, index, url, start_ms, duration_ms }) {
    this.begin(task_id);
    this.segments.set(index, { url, start: start_ms, end: start_ms + duration_ms });
    if (this.waiting) this.#next();
  }

  ready({ task_id, video_url, duration_ms }) {
    this.begin(task_id);
    this.whole = { url: video_url, duration: duration_ms };
    if (this.waiting) this.#next();
  }

  /** Play a whole video from the start (a bubble's "watch the video"). */
  playWhole(url) {
    this.#reset(null);
    this.#play(url, "whole", 0);
  }

  stop() {
    this.waiting = false;
    this.video.pause();
  }

  get isPlaying() {
    return !this.video.paused && !this.video.ended;
  }

  #reset(taskId) {
    this.taskId = taskId;
    this.segments = new Map();
    this.nextIndex = 0;
    this.playedUntil = 0; // ms of the render already shown by pieces
    this.whole = null;
    this.source = null; // what the player holds: "segment" or "whole"
    this.waiting = taskId !== null; // nothing on the player yet: start with the first arrival
    this.video.dataset.task = taskId ?? "";
    this.video.dataset.segments = "0";
  }

  #next() {
    if (this.taskId === null || this.source === "whole") {
      this.waiting = false;
      this.video.controls = true;
      this.onIdle();
      return;
    }
    const piece = this.segments.get(this.nextIndex);
    if (piece) {
      this.nextIndex += 1;
      this.playedUntil = piece.end;
      this.video.dataset.segments = String(this.nextIndex);
      this.#play(piece.url, "segment", 0);
    } else if (this.whole && this.whole.duration - this.playedUntil > 150) {
      this.#play(this.whole.url, "whole", this.playedUntil / 1000);
    } else if (this.whole) {
      this.#park(this.whole.url); // the pieces showed it all: keep the whole for replay
    } else {
      this.waiting = true; // the next piece is still being rendered
    }
  }

  #play(url, source, from) {
    const video = this.video;
    this.waiting = false;
    this.#hold(url, source);
    video.preload = "auto";
    video.controls = source === "whole";
    if (from > 0) {
      video.addEventListener("loadedmetadata", () => (video.currentTime = from), { once: true });
    }
    video.play().catch(() => {
      video.controls = true; // autoplay refused (no gesture yet): the person can start it
    });
  }

  #park(url) {
    this.waiting = false;
    this.#hold(url, "whole");
    this.video.preload = "none";
    this.video.controls = true;
    this.onIdle();
  }

  #hold(url, source) {
    this.source = source;
    this.video.dataset.source = source;
    this.video.src = url;
  }
}
