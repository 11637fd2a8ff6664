"""What can be wrong with a request's body as a whole, raised by the code that reads it
(payload.py, inflate.py, sdk.py); app.py maps each to its status. A module of its own
so that the readers can share them without importing each other."""

from __future__ import annotations


class PayloadTooLarge(Exception):
    """The body, before or after decompression, is over the configured limit."""


class UnsupportedMediaType(Exception):
    """The Content-Type or Content-Encoding is not one we read."""


class MalformedPayload(Exception):
    """The body is not JSON, or not an event, a list of events or {"events": [...]}."""


class TooManyEvents(Exception):
    """The request holds more events than one request may."""


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""
