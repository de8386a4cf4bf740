"""Capability of trained policies: ``python evaluate.py`` (see conf/evaluate.yaml).

    main(cfg)      the entry of evaluate.py: bad input -> one line on stderr, exit code 2
    evaluate(cfg)  the same, raising EvalError; returns the Evaluation (rows, episodes, comparisons)

Modules: ``sources`` (what to evaluate), ``policies`` (rebuilding models and loading weights),
``episodes`` (suites, input checks, batched episodes), ``stats`` (pure metric functions),
``outputs`` (metrics.json/csv, plot, comparison.txt, trajectories.jsonl), ``html`` (report.html).
"""

from agentrl.evaluation.cli import evaluate, main
from agentrl.evaluation.sources import EvalError

__all__ = ["EvalError", "evaluate", "main"]
