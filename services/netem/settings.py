"""Settings of the link emulator: one immutable object, read from ``SIMULTRAIN_NETEM_*``.

| variable | default | meaning |
|---|---|---|
| ``SIMULTRAIN_NETEM_LISTEN_HOST`` | ``127.0.0.1`` | address the edge connects to |
| ``SIMULTRAIN_NETEM_LISTEN_PORT`` | ``0`` | port (0: any free port, printed on start) |
| ``SIMULTRAIN_NETEM_UPSTREAM_HOST`` | ``127.0.0.1`` | the cloud service's address |
| ``SIMULTRAIN_NETEM_UPSTREAM_PORT`` | required | the cloud service's port |
| ``SIMULTRAIN_NETEM_PROFILE`` | ``4g`` | a named profile or a custom spec (``docs/NETEM.md``) |
| ``SIMULTRAIN_NETEM_SEED`` | ``0`` | seed of the jitter and loss samples |
| ``SIMULTRAIN_NETEM_DISCONNECT_EVERY_S`` | none | cut the link every this many seconds |
| ``SIMULTRAIN_NETEM_DISCONNECT_FOR_S`` | none | … for this long each time |
| ``SIMULTRAIN_NETEM_SEGMENT_BYTES`` | ``16384`` | segment size of the shaper |
| ``SIMULTRAIN_NETEM_MAX_INFLIGHT_BYTES`` | ``4194304`` | per connection and direction |
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from simultrain.netem.profiles import LinkProfile, parse_profile
from simultrain.netem.proxy import DEFAULT_MAX_INFLIGHT_BYTES
from simultrain.netem.shaper import DEFAULT_SEGMENT_BYTES

__all__ = ["NetemSettings"]


class NetemSettings(BaseSettings):
    """Everything the link emulator is started with."""

    model_config = SettingsConfigDict(env_prefix="SIMULTRAIN_NETEM_", frozen=True, extra="forbid")

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=0, ge=0, le=65535)
    upstream_host: str = "127.0.0.1"
    upstream_port: int = Field(ge=1, le=65535)
    profile: str = "4g"
    """A named profile (4g, 5g, lan, none) or a custom spec such as ``rate=20mbit,rtt=40ms``."""
    seed: int = 0
    disconnect_every_s: float | None = Field(default=None, gt=0)
    """Overrides the profile's outage schedule; both or neither of the two are given."""
    disconnect_for_s: float | None = Field(default=None, gt=0)
    segment_bytes: int = Field(default=DEFAULT_SEGMENT_BYTES, ge=512, le=1024 * 1024)
    max_inflight_bytes: int = Field(default=DEFAULT_MAX_INFLIGHT_BYTES, ge=64 * 1024)
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("profile")
    @classmethod
    def _profile_parses(cls, value: str) -> str:
        parse_profile(value)  # InvalidProfile is a ValueError: reported as a validation error
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.disconnect_every_s is None) != (self.disconnect_for_s is None):
            raise ValueError("give both disconnect_every_s and disconnect_for_s, or neither")
        if self.max_inflight_bytes < self.segment_bytes:
            raise ValueError("max_inflight_bytes must hold at least one segment")
        self.link_profile()  # a schedule with for ≥ every fails here, at start-up
        return self

    def link_profile(self) -> LinkProfile:
        """The profile to emulate, with the schedule of these settings if they give one."""
        profile = parse_profile(self.profile)
        if self.disconnect_every_s is not None:
            profile = profile.with_disconnects(self.disconnect_every_s, self.disconnect_for_s)
        return profile
