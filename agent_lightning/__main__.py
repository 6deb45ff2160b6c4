"""``python -m agent_lightning``: the same command line as ``agent-lightning`` and ``train.py``."""

from agent_lightning.cli import main

if __name__ == "__main__":
    main()
