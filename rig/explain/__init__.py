"""Per-request explanations: TreeSHAP, anchor rules, counterfactuals, and the service that caches them."""
