"""The paper's objects as pure functions on tensors (Sec. 2, 3, Supp. S1, S2): the target
sampler, the objective and its parametrizations, FV, the Jacobian's Gram matrices, the
solution of Opt. (3), Algorithm 1, the robust solver, the tangent condition at kinks, the
metrics and the matching of network comparison. Nothing here knows a network by name, a
file or Hydra."""
