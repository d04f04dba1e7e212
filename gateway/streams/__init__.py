"""Live event streams: ``GET /v1/streams`` (SSE) and ``GET /v1/ws`` (WebSocket).

One `hub.StreamHub` per gateway process reads every topic once and fans events
out to the subscribers of their tenant; a `session.StreamSession` first catches
a subscriber up from the event store when it resumes, then switches to live.
"""
