"""ifv: Inverse Feature Visualization (Reinbold & Westermann), Grad-IFV.

``visualize`` runs FV (activation maximization, Opt. (1)) for target objectives and returns
the realizations as images; ``invert`` recovers the objectives from images (realizations of
any FV tool) by the closed-form solution of Opt. (3). Both take a zoo model's name (or any
``nn.Module``), a layer and a feature selection, validated by ``Setting`` (``ifv.faces.api``).
``compare`` compares two networks by FV on one and Grad-IFV on the other (Sec. 4).
The low-level forms, on a response N~ = Agg o N o P and parameters v, are
``ifv.math.fv.realize``, ``ifv.math.jacobian.response_and_gram`` and ``ifv.math.inverse.solve``.
"""

from ifv.faces.api import Inversion, invert, visualize
from ifv.faces.compare import Comparison, compare
from ifv.math.fv import FVSettings
from ifv.run.setting import Setting

__all__ = ["Comparison", "FVSettings", "Inversion", "Setting", "compare", "invert", "visualize"]
