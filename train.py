"""Train an agent: ``python train.py fit -c configs/default.yaml`` (see ``python train.py --help``)."""

from agent_lightning.cli import main

if __name__ == "__main__":
    main()
