"""The base of every config section: a pydantic model that rejects unknown keys.

``extra="forbid"`` turns a misspelt key into an error (which :mod:`medi2i.config.errors` reports
with the closest valid key), and ``validate_assignment`` checks a value set after construction as
strictly as one read from a file.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
