"""``make bench``: the benchmarks, one module per stage that has targets.

Benchmarks are product code a user runs, but not a stage of the data's
journey: they string the stages together (compose an image, boot it beside a
conventional host, roll it across simulated nodes) and measure each figure
against a baseline measured in the same run. :mod:`atoll.bench.page` runs them
and writes ``docs/benchmarks.md``; :mod:`atoll.bench.plots` draws its figures.
"""
