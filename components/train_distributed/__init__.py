from components.train_distributed.component import train_distributed

__all__ = ["train_distributed"]
