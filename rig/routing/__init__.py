"""Who answers: the routing table (golden, experiments) folded from the compacted control topic."""
