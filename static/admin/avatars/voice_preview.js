// The avatar admin's voice: "Preview voice" speaks the greeting in the voice chosen in the form
// (saved or not) and plays it; an enrolling cloned voice's state is followed until it settles.
"use strict";

const PREVIEWED_FIELDS = [
  "greeting",
  "language",
  "voice",
  "voice_source",
  "espeak_voice",
  "espeak_pitch",
  "espeak_rate",
];
const FOLLOW_EVERY_MS = 3000;

function previewUrl(button) {
  const url = new URL(button.dataset.url, window.location.href);
  const form = button.closest("form");
  for (const name of PREVIEWED_FIELDS) {
    const field = form?.elements.namedItem(name);
    if (field && "value" in field) url.searchParams.set(name, field.value);
  }
  return url;
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.voice-preview");
  if (!button) return;
  const box = button.parentElement;
  const status = box.querySelector(".voice-preview-status");
  const audio = box.querySelector("audio.voice-preview-audio");
  button.disabled = true;
  status.textContent = "Speaking…";
  try {
    const response = await fetch(previewUrl(button), { credentials: "same-origin" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `the server answered ${response.status}`);
    }
    const note = decodeURIComponent(response.headers.get("X-Voice-Note") ?? "");
    const blob = await response.blob();
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(blob);
    audio.hidden = false;
    await audio.play();
    status.textContent = note ? `Playing (${note}).` : "Playing.";
  } catch (error) {
    status.textContent = `Preview failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
});

async function follow(badge) {
  while (badge.dataset.state === "enrolling" && badge.isConnected) {
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_EVERY_MS));
    try {
      const response = await fetch(badge.dataset.url, { credentials: "same-origin" });
      if (!response.ok) continue;
      const { state, label, details } = await response.json();
      badge.dataset.state = state;
      badge.querySelector("strong").textContent = label;
      badge.querySelector(".voice-state-details").textContent = details;
    } catch {
      // the server restarted or the network blinked: ask again
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const badge of document.querySelectorAll(".voice-state[data-url]")) follow(badge);
});
