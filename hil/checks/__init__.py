"""The checks both runners run: flower round trips, packets, discovery, and the tier's self-test."""
