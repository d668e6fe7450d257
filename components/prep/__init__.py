from components.prep.component import prep

__all__ = ["prep"]
