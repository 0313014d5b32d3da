"""A history of runs: finished run folders filed by machine and sweep, their trends, and the steps in them.

``bench history add`` files run folders into a history folder (``archive``, after ``intake`` has
read and checked each one), ``series`` turns the filed records into one chain of points per
series, cell and metric, ``detect`` finds the steps in those chains, and ``page``, ``figures`` and
``export`` show them (docs/architecture.md, "History"). Like the rest of ``reports/`` it reads
files only: no framework, no measuring code.
"""
