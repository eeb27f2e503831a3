"""Prefect tasks: thin wrappers over components/ entry points, cached on content digests."""
