"""dewy: a pull-based deployment agent for plain Linux hosts."""

__version__ = "0.1.0"
