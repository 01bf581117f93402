"""docgen-monitor: watches Box Doc Gen jobs and tells people when they fail, stall or finish."""

__version__ = "0.1.0"
