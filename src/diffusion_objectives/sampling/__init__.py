"""Samplers over a guided denoiser (ancestral, DDIM, Heun, DPM-Solver++(2M), EDM's stochastic sampler) and
their step grids."""
