"""Evaluation: metrics (metrics.py), bootstrap intervals (bootstrap.py), figures (plots.py) and
the HTML/Markdown report (report.py). Import the submodules directly; plots pulls in matplotlib."""
