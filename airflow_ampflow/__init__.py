"""The Airflow skin of ampflow: the operator that runs one ``ampflow <step>`` per task.

- :mod:`~airflow_ampflow.params`: the DAGs' shared Params and default_args (parse-time settings);
- :mod:`~airflow_ampflow.runtime`: what a task resolves when it runs (execution mode, ``ampflow``
  executable, run directory, the MLflow tags its steps carry);
- :mod:`~airflow_ampflow.operator`: :class:`~airflow_ampflow.operator.AmpflowStepOperator`, which asks
  :func:`ampflow.commands.plan_step` what to run and runs it locally or in a pod;
- :mod:`~airflow_ampflow.process`: the local process runner (a step that outlives its worker);
- :mod:`~airflow_ampflow.pods`: cluster settings and the KubernetesPodOperator a task runs in.

What a step does (train, resume, launch, evaluate's overrides, the MLflow clean-up) is ampflow's, not
this package's. Importing the package imports nothing: ``python -m airflow_ampflow.process`` starts
without Airflow, and the DAG files import the modules they use.
"""
