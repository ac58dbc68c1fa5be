"""`effscale SUBCOMMAND ...`: one module per subcommand (cli/<name>.py), dispatched by main."""

from .main import main

__all__ = ["main"]
