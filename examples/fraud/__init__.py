"""The card-fraud example: a seeded synthetic generator, weeks of simulated production, custom features."""
