"""The asset a new champion updates, so that a deployment DAG can be scheduled on it.

``ampflow register`` moves the ``champion`` alias of a registered model only when the candidate earns
it; the register task (:class:`~airflow_ampflow.operator.AmpflowStepOperator` with ``step="register"``)
then emits an event for :func:`champion_asset` of that model, through the alias :data:`CHAMPION`
(declared as the task's outlet). A refusal emits nothing: a task outlet's event would be emitted on
every success, so the asset is added to the alias only when ``register.json`` says ``promoted``.

A deployment DAG schedules on one model's asset, or on the alias for every model::

    from airflow_ampflow.assets import CHAMPION, champion_asset
    with DAG("deploy_tweets", schedule=[champion_asset("ampflow-tweets-bow")]): ...
    with DAG("deploy_any", schedule=[CHAMPION]): ...

The event's ``extra`` holds the model name, version, run id and accuracy (``register.json``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetAlias

CHAMPION = AssetAlias("ampflow_champion")
# register.json fields copied into the event's extra (what a deployment needs to find the model)
_EXTRA = ("model_name", "version", "config_id", "run_id", "model_uri", "accuracy")


def champion_asset(model_name: str) -> Asset:
    """The asset of one registered model's ``champion`` alias (URI ``models:/NAME@champion``, as MLflow
    spells a model by alias)."""
    return Asset(name=f"ampflow_champion_{model_name}", uri=f"models:/{model_name}@champion")


def announce_champion(context: Any, result: Any) -> bool:
    """Emit the champion event when ``result`` (register.json) says ``promoted``; return whether it did."""
    if not isinstance(result, dict) or result.get("promoted") is not True or not result.get("model_name"):
        return False
    extra = {k: result[k] for k in _EXTRA if result.get(k) is not None}
    context["outlet_events"][CHAMPION].add(champion_asset(str(result["model_name"])), extra=extra)
    return True
