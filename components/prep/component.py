"""KFP component: ``ampflow prep`` into a Dataset artifact.

from components.prep import prep
prep_task = prep(recipe="tweets-bow", limit=300)
raw = dsl.importer(artifact_uri="s3://bucket/tweets.csv", artifact_class=Dataset, reimport=True)
prep_task = prep(recipe="tweets-bow", raw=raw.output)      # lineage: the imported Dataset feeds prep
"""

# No `from __future__ import annotations` here: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def prep(
    recipe: str,
    data: Output[Dataset],
    raw: Input[Dataset] = None,
    source: str = "",
    seed: int = 0,
    limit: int = 0,
    cache_dir: str = "",
    pipeline_run_id: str = "",
) -> None:
    """Prepare the recipe's dataset (dedupe, stratified split, featurize) into the `data` directory.

    raw: the source as an imported Dataset (``dsl.importer``); read at its local path (the KFP launcher
    downloads an s3://, gs:// or minio:// artifact there; under kfp.local it is the file itself); it
    wins over ``source``;
    source: a CSV/JSONL/Parquet path or fsspec URI ("" = the recipe's built-in data);
    limit: keep a stratified subset of N rows (0 = all).
    """
    import os

    from ampflow.integrations.kfp import run_step

    manifest = run_step(
        "prep",
        recipe=recipe,
        out=data.path,
        source=raw.path if raw is not None else source,
        seed=seed,
        limit=limit or None,
        cache_dir=cache_dir,
        pipeline_run_id=pipeline_run_id,
        result_file=os.path.join(data.path, "manifest.json"),
    )
    # lineage the KFP UI shows beside the artifact
    for key in ("recipe", "schema", "content_hash", "rows", "label_names", "source", "seed"):
        if key in manifest:
            data.metadata[key] = manifest[key]
