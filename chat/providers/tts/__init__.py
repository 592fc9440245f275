"""Speech synthesis backends: `espeak` (offline, espeak-ng) and `dashscope` (CosyVoice)."""
