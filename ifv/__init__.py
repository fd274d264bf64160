"""ifv: Inverse Feature Visualization (Reinbold & Westermann), Grad-IFV.

``visualize`` runs FV (activation maximization) for target objectives; ``invert`` recovers
the objectives from realizations by the closed-form solution of Opt. (3).
"""

from ifv.fv import FVSettings, visualize
from ifv.inverse import invert, solve
from ifv.objective import Response

__all__ = ["FVSettings", "Response", "invert", "solve", "visualize"]
