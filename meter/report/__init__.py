"""Cards and reports, built from the run log on disk (never from live state)."""
