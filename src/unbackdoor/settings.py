"""The base of every settings model: the stage configs and each plug-in's own `Settings`.

Kept apart from config.py, which composes the stage configs out of the plug-ins' settings, so
that a plug-in can import it without importing the configs being built from it.
"""

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    # extra="forbid": a misspelt key is an error that names it, never a setting silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
