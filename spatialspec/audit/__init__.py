"""Audits of trained models: ROI masking, saliency trustworthiness, shortcut-slice discovery."""
