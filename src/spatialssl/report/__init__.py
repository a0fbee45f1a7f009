"""Side-by-side reports of evaluated runs: ``report.md``, ``report.html`` and PNG plots.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (the
training curve: ``step``, ``loss_fw``, ``loss_sp``, ``sp_r2_dx/dy/ds``, ...) and, written
by ``evals.evaluate``, ``metrics/<task>.json`` (``values`` with the random-init floors
``random_<key>`` and supervised references ``supervised_<key>``, ``std`` over evaluation
seeds, ``eval_config``, ``step``, ``complete``) and ``metrics/<task>_outcomes.npz`` (per
test item outcomes of each metric, per evaluation seed, see ``metric_from_counts``), plus
optional ``metrics/<task>_examples.npz`` (example arrays for the figures).

Runs are paired by framework: a run without SP and one with SP of the same framework
become "baseline | + SP | difference" columns; other runs get a column each. A pair must
differ by SP alone: ``pair_differences`` lists any config key it differs in outside ``sp.*``
and the keys that change no number (``config.NUMBER_FREE``, the list the resume check and
the feature cache read too), and any difference in the eval settings and data of a task;
``write_report`` refuses such a pair unless ``allow_mismatch`` allows its differences (True:
any; or a list of keys such as ``["views.local_flip"]``); an allowed pair is marked NOT
COMPARABLE and its Δ left untested (CLI: ``spatialssl report --allow-mismatch``).

Significance (``paired_bootstrap``): Δ = SP − baseline gets ✓ (SP better) or ✗ (worse)
only when the 95% paired-bootstrap interval over the independent test units excludes 0
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13; paired resampling as
in Koehn, "Statistical Significance Tests for Machine Translation Evaluation", EMNLP 2004),
≈ when it does not; without per-item outcomes of both runs there is no test and no mark.
The units are the test images: items of one image (patch-pair's pairs, ``group`` in the
outcomes) are drawn together. A metric both runs score at or below their random-init floor
gets "≤ floor" instead of a mark. Which way a metric is better comes from the protocols'
declaration, ``evals.METRICS``.

>>> write_report(["runs/demo/byol", "runs/demo/byol_sp"], "runs/demo")
PosixPath('runs/demo/report.md')

The package, by concern (each module imports only those above it):

- ``runs``: reading run directories (``Run``, ``read_run(s)``) and pairing them (``columns``,
  ``pair_differences``, ``check_pairs``);
- ``stats``: the paired bootstrap, the marking rule and the random-init floor;
- ``tables``: the key metric rows and the table cells, in Markdown and HTML;
- ``figures``: the PNG plots;
- ``writer``: ``report.md`` / ``report.html`` (``write_report``) and ``summary_table``.
"""

from .figures import plot_dense, plot_jigsaw, plot_losses, plot_metrics, plot_robustness
from .runs import EVAL_KEYS_IGNORED, Run, check_pairs, columns, pair_differences, read_run, read_runs
from .stats import (BOOT_REPLICATES, BOOT_SEED, FLOOR_NOTE, KINDS, LEVEL, Test, _outcome, at_floor, mark,
                    metric_from_counts, paired_bootstrap)
from .tables import (ARROWS, FLOORS, KEY_METRICS, MISMATCH, NO_TEST, _diff, _fmt, detail_tables, direction,
                     html_table, markdown_table, table_rows)
from .writer import NOTE, _pairs_section, _runs_section, summary_table, write_report

__all__ = [
    "ARROWS", "BOOT_REPLICATES", "BOOT_SEED", "EVAL_KEYS_IGNORED", "FLOORS", "FLOOR_NOTE", "KEY_METRICS", "KINDS",
    "LEVEL", "MISMATCH", "NOTE", "NO_TEST", "Run", "Test", "at_floor", "check_pairs", "columns", "detail_tables",
    "direction", "html_table", "mark", "markdown_table", "metric_from_counts", "pair_differences",
    "paired_bootstrap", "plot_dense", "plot_jigsaw", "plot_losses", "plot_metrics", "plot_robustness", "read_run",
    "read_runs", "summary_table", "table_rows", "write_report",
]
