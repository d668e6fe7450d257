"""Prepared datasets: manifest reading (:mod:`.manifest`), splits as arrays or tensors (:mod:`.splits`),
the seeded batch order and bucket padding (:mod:`.batching`), and the train split in memory or streamed
from disk (:mod:`.loading`, with :mod:`.rows` for the row reads).

No torch at module level (it loads inside the functions that hand out tensors), so that tooling,
Airflow parsing and KFP compiles can read a dataset without the training stack.
"""
