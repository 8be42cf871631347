"""Synthetic people with exact labels for both parsing tasks, built on the anny body model."""

from .generator import GENERATOR_VERSION, SyntheticPeople

__all__ = ["GENERATOR_VERSION", "SyntheticPeople"]
