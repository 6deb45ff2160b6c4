"""Train an agent: ``python train.py fit -c configs/default.yaml`` (``python train.py --help`` lists the commands)."""

from agent_lightning.cli import main

if __name__ == "__main__":
    main()
