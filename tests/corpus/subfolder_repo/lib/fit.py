"""The repository's own helpers, imported by the top-level script."""

import math


def rmse(points, slope, intercept):
    """Root-mean-square error of the line `slope * x + intercept` on (x, y) points."""
    return math.sqrt(sum((slope * x + intercept - y) ** 2 for x, y in points) / len(points))
