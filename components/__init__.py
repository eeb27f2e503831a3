"""gliosynth domain logic. Nothing here imports Prefect; flows/ and tasks/ wrap these functions."""
