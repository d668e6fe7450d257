"""The training engine: precision policy, loop, checkpoints, metrics, batch-size search, parallel set-up.

Everything here imports torch; the steps (``ampflow.steps.train`` / ``evaluate``) import it lazily.
"""
