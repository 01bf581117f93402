"""Notifiers: the interface and registry (`base`), routing, delivery, and the built-ins."""
