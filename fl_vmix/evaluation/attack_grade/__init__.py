"""Attack-graded privacy: every image-level setting of an experiment graded by the strongest attacks.

``python -m fl_vmix.evaluation.attack_grade --experiment NAME`` (see :mod:`.__main__`) reads the
experiment's ``results.csv``, grades each distinct setting (:mod:`.settings`) on victims of the test
split with the attacker's public data from the training split (:mod:`.data`) by the attacks of
:mod:`.stages`, caches each grade as ``attacks/<setting>.json`` (:mod:`.grade`), and writes the attack
columns, the privacy-axis section and the Pareto plot into the report (:mod:`.update`).

This package imports nothing heavy at import time: the report reads grades without it.
"""
