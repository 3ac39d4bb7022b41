"""embassy: infrastructure-as-code for data embassies."""

__version__ = "0.1.0"
