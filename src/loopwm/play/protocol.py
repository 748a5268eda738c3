"""The messages a play page may send, as schemas, and the limits the server holds every client to.

Every message is one JSON text of at most `MAX_MESSAGE_BYTES`, with a `type` and no field the schema
does not name. Anything else (binary frames, bad JSON, unknown types or fields, values out of range)
is refused with one `{"type": "error", "error": ...}` reply to that client; the connection and every
other session carry on. No message can name a file, a module or code: the only strings a client
sends are chosen from lists the server published in its `hello`.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_MESSAGE_BYTES = 2048
"""Longest message accepted (an action of 64 floats fits many times over)."""
MAX_RATE = 60.0
"""Highest step rate (steps per second) a client can ask for."""
MAX_MESSAGES_PER_SECOND = 120
"""Messages taken from one client per second; past that they are dropped with one error a second."""
MAX_DEPTH = 64
"""Largest loop count a client can ask for."""
POLICIES = ("keyboard", "random", "still", "sweep")
"""Who chooses the actions: the page's keys, or a scripted policy."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ActionMessage(_Message):
    """The action the page's keys hold now (used while the policy is "keyboard")."""

    type: Literal["action"]
    action: Union[int, Annotated[list[float], Field(min_length=1, max_length=64)]]


class SettingsMessage(_Message):
    """Change any of the session's settings; fields left out stay as they are."""

    type: Literal["settings"]
    exit: str | None = Field(default=None, max_length=32)
    threshold: float | None = Field(default=None, ge=0.0, le=1e6)
    depth: int | None = Field(default=None, ge=1, le=MAX_DEPTH)
    policy: Literal[POLICIES] | None = None  # type: ignore[valid-type]
    rate: float | None = Field(default=None, gt=0.0, le=MAX_RATE)
    running: bool | None = None
    sync_every: int | None = Field(default=None, ge=0, le=10_000)


class ResetMessage(_Message):
    """Start a new episode in both worlds (the same seed gives the same start)."""

    type: Literal["reset"]
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class ResyncMessage(_Message):
    """Let the model read the real world's current observation (its imagination restarts from it)."""

    type: Literal["resync"]


class StepMessage(_Message):
    """Advance both worlds by one step (while paused; counted against the rate cap)."""

    type: Literal["step"]


Message = Annotated[Union[ActionMessage, SettingsMessage, ResetMessage, ResyncMessage, StepMessage],
                    Field(discriminator="type")]
_ADAPTER = TypeAdapter(Message)
TYPES = ("action", "settings", "reset", "resync", "step")


class ProtocolError(ValueError):
    """A message the server refuses; the text is what the client is told."""


def parse_message(text: str | bytes | None) -> BaseModel:
    """One client message, validated, or a ProtocolError saying what is wrong with it."""
    if not isinstance(text, str):
        raise ProtocolError("send messages as JSON text, not binary frames")
    size = len(text.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes is too large (at most {MAX_MESSAGE_BYTES})")
    try:
        raw = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ProtocolError) as err:
        raise ProtocolError(f"message is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("a message must be a JSON object with a 'type' field")
    if raw.get("type") not in TYPES:
        raise ProtocolError(f"unknown message type {str(raw.get('type'))[:32]!r}: known types are {', '.join(TYPES)}")
    try:  # strict: no strings for numbers, no booleans for numbers (ints pass as floats)
        message = _ADAPTER.validate_python(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "message"
        raise ProtocolError(f"bad {raw['type']} message: {where}: {first['msg']}") from None
    if isinstance(message, ActionMessage) and isinstance(message.action, list):
        if not all(math.isfinite(v) for v in message.action):
            raise ProtocolError("bad action message: action values must be finite numbers")
    return message


def _refuse_constant(name: str):
    raise ProtocolError(f"{name} is not allowed")
