"""The ``fxvene`` command line: components, trace, diff, cache and trace-facts.

May import: any fxvene subpackage, inside the function of the verb that needs it (--help stays instant).
"""
