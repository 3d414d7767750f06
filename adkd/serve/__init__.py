"""``python -m adkd.serve <run>``: a local web app and HTTP endpoint for one trained run (see ``__main__``)."""
