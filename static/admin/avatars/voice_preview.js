// The admin's "Preview voice" button: fetch the greeting spoken in the avatar's voice and play it.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.voice-preview");
  if (!button) return;
  const box = button.parentElement;
  const status = box.querySelector(".voice-preview-status");
  const audio = box.querySelector("audio.voice-preview-audio");
  button.disabled = true;
  status.textContent = "Speaking…";
  try {
    const response = await fetch(button.dataset.url, { credentials: "same-origin" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `the server answered ${response.status}`);
    }
    const blob = await response.blob();
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(blob);
    audio.hidden = false;
    await audio.play();
    status.textContent = "Playing.";
  } catch (error) {
    status.textContent = `Preview failed: ${error.message}`;
  } finally {
    button.disabled = false;
  }
});
