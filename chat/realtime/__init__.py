"""The realtime voice path inside the web process: WebRTC signalling and media (aiortc), voice
activity detection, streaming recognition, and the server's outgoing speech track.

`RealtimeHandler` is the one entry point the WebSocket consumer uses; the other modules are its
parts and are importable on their own for tests.
"""
