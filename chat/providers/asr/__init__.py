"""Speech recognition backends: `pocketsphinx` (offline) and `dashscope` (Paraformer, Qwen ASR)."""
