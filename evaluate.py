"""Evaluate a run's checkpoints: `python evaluate.py run_dir=outputs/... [key=value ...]`
(see conf/evaluate.yaml and README.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from agentrl.evaluation import main as evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
