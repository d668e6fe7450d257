"""Compare: a sweep's runs turned into a verdict, a regression check and the reports.

Owns the comparison that ``ampflow compare`` and ``ampflow bench`` share:

- ``records``: one record per finished run, read from its run directory or normalised from MLflow;
- ``verdict``: configurations grouped, measured against the baseline, judged, one recommended (pure);
- ``regression``: figures against earlier sweeps of the same recipe on the same hardware (pure);
- ``summary``: ``compare_runs`` (records -> summary, schema ``ampflow.compare/1``) and ``write_reports``;
- ``markdown``, ``html``: the summary as ``report.md`` and a self-contained ``report.html``;
- ``gate``: the champion gate on a summary (the Airflow retrain DAG's).

MLflow reads (and the one write back onto the sweep's parent run) live in
:mod:`ampflow.tracking.queries`; the CLI is :mod:`ampflow.steps.compare`.

Import-light on purpose: nothing in this package imports mlflow, matplotlib or torch at module
level, because the Airflow scheduler's venv imports parts of it and has no mlflow.
"""
