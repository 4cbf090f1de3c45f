"""KG23's study: a grid of objectives × seeds trained under equal compute (``runner``), launched locally or on
a cluster (``launchers``), and its report with tables and plots (``report``)."""

from .._deprecation import forward

__getattr__ = forward(__name__, "runner")  # ``diffusion_objectives.study.X`` before it became a package
