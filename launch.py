"""Train an agent: `python launch.py [group=option ...] [key=value ...]` (see README.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from agentrl.train import main as train

    metrics = train(cfg)
    # a sweeper optimises the returned value
    return metrics.get("val/success_rate")


if __name__ == "__main__":
    main()
