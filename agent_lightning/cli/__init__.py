"""The command line: ``train.py``, ``python -m agent_lightning`` and ``agent-lightning``.

- :mod:`~agent_lightning.cli.commands`: the table of subcommands and :func:`main`.
- :mod:`~agent_lightning.cli.lightning_cli`: :class:`AgentLightningCLI` (``fit``, ``validate``, ``test``,
  ``predict``).
- :mod:`~agent_lightning.cli.short_flags`: ``--prune``, ``--qat``, ``--distill``, ``--embeddings``,
  ``--student-layers``.
- :mod:`~agent_lightning.cli.recipes`: ``compress``, the two-stage recipe; :mod:`~agent_lightning.cli.export`:
  ``export``.

Nothing in the library imports this package.
"""

from agent_lightning.cli.commands import COMMANDS, main
from agent_lightning.cli.lightning_cli import AgentLightningCLI

__all__ = ["COMMANDS", "AgentLightningCLI", "main"]
