"""The objective itself, in torch and numpy only: the forward process, noise schedules p(λ), weightings w(λ),
parameterizations, the weighted loss, KG23's adaptive schedule, objectives (the published ones as
(weighting, schedule, parameterization) triples), the theorem's augmentation density, and the analytic
Gaussian-mixture oracles. See docs/theory.md."""
