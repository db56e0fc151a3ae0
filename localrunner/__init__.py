"""localrunner: run an Azure Functions Python v2 app without Core Tools.

Public API: :class:`Runner` (see runner.py) and the ``python -m localrunner`` CLI.
"""
from .app_loader import FunctionLoadError
from .config import ConfigError
from .runner import Runner

__all__ = ["Runner", "ConfigError", "FunctionLoadError"]
