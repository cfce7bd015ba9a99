"""RecursiveMAS link trainer (issue: RecursiveLink trainer)."""
