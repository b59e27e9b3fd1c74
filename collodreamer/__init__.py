"""ColloDreamer: Dreamer, LatCo and ColloDreamer on one world model for the DeepMind Control Suite."""

__version__ = "0.1.0"
