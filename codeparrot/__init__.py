"""CodeParrot Flows: the pure logic of every stage. Never imports Prefect."""

from codeparrot.env import apply_defaults

apply_defaults()

__version__ = "0.1.0"
