"""ampflow: mixed-precision PyTorch training as production pipeline steps.

Importing the package is cheap and torch-free; the engine loads torch only inside steps.
"""

__version__ = "0.1.0"
