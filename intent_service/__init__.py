"""Intent service: a CPU-only NLU service that speaks the Azure CLU
``analyze-conversations`` protocol (scikit-learn classifier + list/regex entities)."""

__version__ = "1.0.0"
