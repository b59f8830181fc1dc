"""Audits of trained models: ROI masking, saliency trustworthiness, shortcut-slice discovery.

Every audit is one module registering an :class:`spatialspec.audit.base.Audit` named as the
module; :data:`AUDIT_MODULES` lists them (this package imports nothing else, so the CLI can name
the audits without importing the model stack).
"""

#: The audit modules, each registering one audit named as the module (the registration list).
AUDIT_MODULES = (
    "spatialspec.audit.masking",
    "spatialspec.audit.saliency",
    "spatialspec.audit.slices",
)


def audit_names() -> list[str]:
    """Names of the listed audits, without importing them (the module names)."""
    return [module.rpartition(".")[2] for module in AUDIT_MODULES]
