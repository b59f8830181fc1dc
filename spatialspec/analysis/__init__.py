"""``spatialspec analyze``: measures of a dataset itself, before any training.

``analyze specificity`` (:mod:`spatialspec.analysis.specificity`): per spatial specificity level,
the variance of the pixels the annotation labels positive and the mutual information between
spurious and pathology pixels among them (Saab et al.'s two measures).
"""
