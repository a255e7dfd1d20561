"""Data files of the generators (``wyckoff_priors.json``); a package so that it is installed."""
