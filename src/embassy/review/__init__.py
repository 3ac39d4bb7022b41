"""The stack-diff review: read two sides (or one change set), compare them control by control, render."""

from embassy.review.compare import Review, review
from embassy.review.inputs import read
from embassy.review.render import render
from embassy.review.sources import Source

__all__ = ["Review", "Source", "read", "render", "review"]
