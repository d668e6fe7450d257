"""KFP component: ``ampflow prep`` into a Dataset artifact.

from components.prep import prep
prep_task = prep(recipe="tweets-bow", limit=300)
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def prep(
    recipe: str,
    data: Output[Dataset],
    source: str = "",
    seed: int = 0,
    limit: int = 0,
    cache_dir: str = "",
    pipeline_run_id: str = "",
) -> None:
    """Prepare the recipe's dataset (dedupe, stratified split, featurize) into the `data` directory.

    source: a CSV/JSONL/Parquet path or fsspec URI ("" = the recipe's built-in data);
    limit: keep a stratified subset of N rows (0 = all).
    """
    import json
    import os

    from ampflow.cli import main
    from ampflow.commands import step_argv

    if pipeline_run_id:
        os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({"ampflow.pipeline_run_id": pipeline_run_id})
    if cache_dir and os.path.isdir(cache_dir):
        os.environ.setdefault("HF_HOME", os.path.join(cache_dir, "huggingface"))
        os.environ.setdefault("XDG_CACHE_HOME", cache_dir)

    argv = step_argv(
        "prep", recipe=recipe, out=data.path, source=source or None, seed=seed, limit=limit or None
    )
    print("running:", " ".join(argv), flush=True)
    rc = main(argv[1:])
    if rc != 0:
        raise RuntimeError(f"ampflow prep exited {rc}")

    with open(os.path.join(data.path, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    # lineage the KFP UI shows beside the artifact
    for key in ("recipe", "schema", "content_hash", "rows", "label_names", "source", "seed"):
        if key in manifest:
            data.metadata[key] = manifest[key]
