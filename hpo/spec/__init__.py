"""The sweep file: load (safe YAML), validate (W&B's schema + semantics), one canonical form per parameter.

    from hpo import spec
    s = spec.load("sweep.yaml")          # -> spec.Spec, or SpecError listing every problem
"""

from hpo.spec.model import DISCRETE, Hyperband, Param, Spec, changes, q_range, unflatten
from hpo.spec.validate import MAX_GRID_POINTS, fill_defaults, from_dict, load

__all__ = ["DISCRETE", "MAX_GRID_POINTS", "Hyperband", "Param", "Spec", "changes", "fill_defaults", "from_dict", "load",
           "q_range", "unflatten"]
