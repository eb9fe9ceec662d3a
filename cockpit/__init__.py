"""Deal Cockpit: review the quarter's deals and commit the forecast."""

__version__ = "0.1.0"
