"""spatialssl: self-supervised learning with Spatial Prediction (SP).

SP [0] is a plug-in pretext task that regresses the relative position and scale of two
disjoint local views of one image, added beside any SSL framework's own loss.

[0]: Shen et al., "Learning to Perceive 'Where': Spatial Pretext Tasks for Robust
     Self-Supervised Learning", 2026, arXiv:2605.09963.
"""

__version__ = "0.1.0"
