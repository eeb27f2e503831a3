"""Prefect flows (thin: they sequence tasks and take one typed config) and the command line."""
