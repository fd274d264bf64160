"""The paper-reproduction layer: gather the runs of the Supp. S4 experiments into
``results/``, build the paper's figures and Table 1 from them, and compare our numbers with
the quantitative claims of Sec. 3 in ``figures/REPORT.md``.

    python -m paper.collect [DIR ...]   # outputs/ multirun/ -> results/   (make collect)
    python -m paper.figures             # results/ -> figures/              (make figures)
    python -m paper.report              # results/ -> figures/REPORT.md     (make figures)
"""
