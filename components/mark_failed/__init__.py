from components.mark_failed.component import mark_failed

__all__ = ["mark_failed"]
