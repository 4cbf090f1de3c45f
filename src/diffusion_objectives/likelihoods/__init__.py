"""Likelihoods of a trained model: the ELBO (``vlb``, KG23 Eq. (21)-(23)) and the exact log-likelihood of
the probability-flow ODE (``ode``, Song et al. 2021 Eq. (39)). The functions themselves are exported as
``diffusion_objectives.elbo`` and ``diffusion_objectives.likelihood``."""
