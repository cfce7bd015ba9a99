"""Real HTTP servers standing in for the Hugging Face Hub and GitHub, and hand-built artifacts."""
