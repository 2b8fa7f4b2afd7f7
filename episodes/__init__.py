"""episodes: a standalone, seeded, random-access episodic sampler (numpy core)."""
