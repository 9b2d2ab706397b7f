"""zpatch's command line: base.py holds the frame; one module per family of commands."""
from . import ci_cmds, models_cmds, overlay_cmds, rebase_cmds, workspace_cmds  # noqa: F401  (registers the commands)
from .base import main

__all__ = ["main"]
