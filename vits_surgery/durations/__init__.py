"""Donor durations: where a cadence transplant's duration targets come from, and their cache."""
