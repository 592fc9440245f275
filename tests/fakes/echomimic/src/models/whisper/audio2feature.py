"""Stand-in for upstream's Audio2Feature: Whisper encoder embeddings at 50 per second, sliced
into one (50, 384) window per video frame (two frames before, two after)."""

import numpy as np

from .whisper import load_model


class Audio2Feature:
    def __init__(
        self, whisper_model_type="tiny", model_path="./models/whisper/tiny.pt", device="cuda"
    ):
        self.whisper_model_type = whisper_model_type
        self.model = load_model(model_path, device=device)

    def get_sliced_feature(self, feature_array, vid_idx, audio_feat_length=None, fps=25):
        if audio_feat_length is None:
            audio_feat_length = [2, 2]
        centre = int(vid_idx * 50 / fps)
        span = range(centre - audio_feat_length[0] * 2, centre + (audio_feat_length[1] + 1) * 2)
        picked = [min(max(i, 0), len(feature_array) - 1) for i in span]
        return np.concatenate([feature_array[i] for i in picked]).reshape(-1, 384), picked

    def feature2chunks(self, feature_array, fps, audio_feat_length=None):
        if audio_feat_length is None:
            audio_feat_length = [2, 2]
        chunks, i = [], 0
        while True:
            chunks.append(self.get_sliced_feature(feature_array, i, audio_feat_length, fps)[0])
            if int(i * 50.0 / fps) > len(feature_array):
                break
            i += 1
        return np.array(chunks)

    def audio2feat(self, audio_path):
        result = self.model.transcribe(audio_path)
        kept = []
        for segment in result["segments"]:
            embeddings = segment["encoder_embeddings"].transpose(0, 2, 1, 3).squeeze(0)
            kept.append(embeddings[: int((segment["end"] - segment["start"]) / 2)])
        return np.concatenate(kept, axis=0)


def load_audio_model(model_path, device):
    return Audio2Feature(model_path=model_path, device=device)
