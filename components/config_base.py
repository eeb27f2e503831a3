"""The one base of every settings model: frozen (hashable, never edited in place) and strict about
field names (a misspelt setting is refused, not ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """A pydantic model that is frozen and forbids unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
