"""Serving: the transports (websockets, Starlette for Truss), the stream driver (one loop per connection),
the runtime (limits, admission, drain), the audio front end, the scheduler, health, metrics and the page."""
