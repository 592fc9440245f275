// Video mode's player: the segments of a render (`video_segment`) play in order on one <video>
// as they arrive; the whole video (`video_ready`) continues where the segments stop. Between
// replies the avatar's idle loop (`init.avatar.idle_video_url`: it breathes and blinks) plays
// muted and looped on a second <video> under the first; the reply's layer is shown only once it
// plays (a frame is there) and hidden again when the reply ends, so neither switch flashes the
// poster or a blank frame. Without an idle loop the reply's layer stays shown, the avatar image
// as its poster, and the whole video stays on it to be watched again.
// #stage-video[data-showing] says which layer is in front: "reply" or "idle".

export class VideoStage {
  constructor(video, idle, { onPlaying, onIdle }) {
    this.video = video;
    this.idle = idle;
    this.onPlaying = onPlaying;
    this.onIdle = onIdle;
    this.#reset(null);
    this.#show("reply");
    idle.addEventListener("loadeddata", () => this.#front());
    video.addEventListener("ended", () => this.#next());
    video.addEventListener("playing", () => {
      this.#show("reply");
      this.onPlaying();
    });
    video.addEventListener("pause", () => {
      if (!video.ended) this.onIdle(); // paused by the person (the end goes through #next)
    });
  }

  /** The avatar's idle loop (a URL), or null when it has none (yet). */
  setIdle(url) {
    const idle = this.idle;
    if (!url) {
      idle.pause();
      idle.removeAttribute("src");
      idle.load(); // lets go of the old clip
      idle.hidden = true;
      this.#show("reply");
      return;
    }
    if (idle.getAttribute("src") !== url) {
      idle.muted = true;
      idle.loop = true;
      idle.src = url;
    }
    idle.hidden = false;
    if (!this.isPlaying) this.#show("idle");
  }

  get hasIdle() {
    return !this.idle.hidden && Boolean(this.idle.getAttribute("src"));
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
    this.#show("idle");
  }

  get isPlaying() {
    return !this.video.paused && !this.video.ended;
  }

  #reset(taskId) {
    this.taskId = taskId;
    this.segments = new Map();
    this.nextIndex = 0;
    this.playedUntil = 0; // ms of the render already shown by segments
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
      this.#show("idle");
      this.onIdle();
      return;
    }
    const segment = this.segments.get(this.nextIndex);
    if (segment) {
      this.nextIndex += 1;
      this.playedUntil = segment.end;
      this.video.dataset.segments = String(this.nextIndex);
      this.#play(segment.url, "segment", 0);
    } else if (this.whole && this.whole.duration - this.playedUntil > 150) {
      this.#play(this.whole.url, "whole", this.playedUntil / 1000);
    } else if (this.whole) {
      this.#park(this.whole.url); // the segments showed it all: keep the whole for replay
    } else {
      this.waiting = true; // the next segment is still being rendered
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
    this.#show("idle");
    this.onIdle();
  }

  /** Bring a layer to the front; the idle loop runs only while it is wanted, and comes to
   * the front once it has a picture (until then the reply's layer shows its poster). */
  #show(layer) {
    this.wanted = layer;
    if (layer === "idle" && this.hasIdle) {
      this.idle.play().catch(() => {}); // muted: autoplay is allowed
    } else {
      this.idle.pause();
    }
    this.#front();
  }

  #front() {
    const idleReady = this.hasIdle && this.idle.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA;
    this.video.dataset.showing = this.wanted === "idle" && idleReady ? "idle" : "reply";
  }

  #hold(url, source) {
    this.source = source;
    this.video.dataset.source = source;
    this.video.src = url;
  }
}
