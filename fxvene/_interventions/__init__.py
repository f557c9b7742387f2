"""Implementation of ``fxvene.interventions`` (import the classes from there)."""
