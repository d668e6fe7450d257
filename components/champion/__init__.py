from components.champion.component import champion

__all__ = ["champion"]
