"""Prepared datasets: manifest reading (:mod:`.manifest`), splits as arrays or tensors (:mod:`.splits`)
and the seeded batch order (:mod:`.batching`).

No torch at module level (it loads inside the functions that hand out tensors), so that tooling,
Airflow parsing and KFP compiles can read a dataset without the training stack.
"""
